"""Sealing in worker processes: the same records as sealing in a thread, and none lost to a dying worker."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
import uuid

import orjson

from minigate.logger.crypto import generate_key
from minigate.logger.records import CallRecord
from minigate.logger.seal import Sealer, SealerPool
from minigate.logger.settings import LoggingSection

_REQUEST = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "mail jane@example.com now"}]})
_REPLY = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 1}})


def _records(count: int) -> list[CallRecord]:
    return [CallRecord(request_id=uuid.uuid4().hex, started_at=time.time(), key_name="agents", route="r", model="m",
                       tier="frontier", task="unknown", rule="default", upstream="up", status=200, latency_s=0.01,
                       stream=False, request_body=_REQUEST, user="u-1", reply=_REPLY) for _ in range(count)]


def _opened(sealer: Sealer, record: CallRecord) -> dict[str, object]:
    assert sealer.cipher is not None and record.request_payload is not None
    return dict(orjson.loads(sealer.cipher.decrypt(record.request_payload, record.request_id.encode())))


def test_a_worker_process_seals_as_a_thread_would() -> None:
    sealer = Sealer.from_settings(LoggingSection(encryption_key=generate_key()))  # type: ignore[arg-type]

    async def seal_both() -> tuple[list[CallRecord], list[CallRecord], int]:
        in_process, in_thread = SealerPool(sealer, 1), SealerPool(sealer, 0)
        try:
            by_worker = await in_process.seal(_records(3))
            workers = len(multiprocessing.active_children())
            return by_worker, await in_thread.seal(_records(3)), workers
        finally:
            await asyncio.to_thread(in_process.close)

    by_worker, by_thread, workers = asyncio.run(seal_both())
    assert workers >= 1
    for worker_record, thread_record in zip(by_worker, by_thread, strict=True):
        assert worker_record.request_body is None and worker_record.reply is None  # raw material is gone
        assert (worker_record.input_tokens, worker_record.output_tokens) == (7, 1)
        assert worker_record.client_id == thread_record.client_id  # same pepper in both places
        assert _opened(sealer, worker_record) == _opened(sealer, thread_record)
        assert "<EMAIL_1>" in orjson.dumps(_opened(sealer, worker_record)).decode()


def test_a_killed_worker_costs_no_record() -> None:
    sealer = Sealer.from_settings(LoggingSection(encryption_key=generate_key()))  # type: ignore[arg-type]

    async def seal_around_a_kill() -> tuple[list[CallRecord], list[CallRecord]]:
        pool = SealerPool(sealer, 1)
        try:
            await pool.seal(_records(1))  # the worker is up
            workers = [child.pid for child in multiprocessing.active_children() if child.pid is not None]
            assert workers
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
            after_kill = await pool.seal(_records(5))  # sealed in a thread, the pool rebuilt
            return after_kill, await pool.seal(_records(5))  # by the new worker
        finally:
            await asyncio.to_thread(pool.close)

    after_kill, next_batch = asyncio.run(seal_around_a_kill())
    for record in after_kill + next_batch:
        assert record.request_payload is not None and record.input_tokens == 7
        assert "<EMAIL_1>" in orjson.dumps(_opened(sealer, record)).decode()
