"""A process killed outright (SIGKILL) loses no call record it accepted: the journal (logger/journal.py).

Real processes and real stores: a child holds records in memory (a 60 s flush interval) and is killed;
the next CallLog, or gateway, on the same spool folder stores every record exactly once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from minigate.logger.crypto import PayloadCipher, generate_key
from minigate.logger.journal import Journal
from minigate.logger.pipeline import CallLog
from minigate.logger.records import AttemptRecord, CallRecord, unsealed_record_from_bytes, unsealed_record_to_bytes
from minigate.logger.seal import Sealer
from minigate.logger.settings import LoggingSection
from minigate.pricing import Rate
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.faults import fill, tmpfs
from tests.support.servers import start_gateway_process, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually, eventually_async

EMAIL = "jane.journal@example.com"
REPLY = orjson.dumps({"id": "c1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "noted"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3}})


def record(request_id: str, size: int = 0) -> CallRecord:
    body = orjson.dumps({"model": "cheap", "messages": [{"role": "user", "content": f"mail {EMAIL} " + "x" * size}]})
    return CallRecord(request_id=request_id, started_at=time.time(), key_name="agents", route="cheap", model="mini",
                      tier="miniature", task="unknown", rule="default", upstream="scripted", status=200,
                      latency_s=0.01, stream=False, request_body=body, reply=REPLY, user="u-1",
                      rate=Rate(input_per_mtok=1.0, output_per_mtok=2.0),
                      attempts=[AttemptRecord(upstream="scripted", model="mini-lora", status=200, latency_s=0.01,
                                              error=None)])


def settings(tmp_path: Path, **overrides: Any) -> LoggingSection:
    values: dict[str, Any] = {"store": f"sqlite:///{tmp_path / 'calls.db'}", "spool": tmp_path / "spool",
                              "flush_interval_s": 0.05, "replay_interval_s": 0.2, **overrides}
    return LoggingSection(**values)


def journal_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("journal-*")) if spool.exists() else []


def stored(section: LoggingSection) -> list[str]:
    return [row[0] for row in fetch(section.store, "SELECT request_id FROM calls ORDER BY request_id")]


# -- a child that accepts records and is killed -------------------------------------------------------


def child_settings(tmp_path: Path, key: str | None) -> LoggingSection:
    return settings(tmp_path, flush_interval_s=60, batch_size=20, seal_processes=0, encryption_key=key)


def hold_records(folder: str, key: str, stored_first: int, held: int) -> None:
    """The child: store `stored_first` records, then accept `held` more, which wait out a 60 s flush
    interval in memory; say "ready" and wait to be killed."""
    section = child_settings(Path(folder), key or None)

    async def run() -> None:
        registry = CollectorRegistry()
        calls = CallLog(section, registry, Sealer.from_settings(section))
        await calls.start()
        for i in range(stored_first):  # one whole batch: written at once, flush interval or not
            calls.submit(record(f"stored-{i:03d}"))
        await eventually_async(lambda: registry.get_sample_value("minigate_log_records_written_total") == stored_first)
        for i in range(held):
            calls.submit(record(f"held-{i:03d}"))
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(run())


@pytest.fixture
def killed_child(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LoggingSection]:
    """A child CallLog that stored 20 records, holds 15 more in memory, and was SIGKILLed."""
    key: str | None = getattr(request, "param", None)
    section = child_settings(tmp_path, key)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_journal import hold_records; "
         "hold_records(sys.argv[1], sys.argv[2], 20, 15)", str(tmp_path), key or ""],
        cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    yield section


async def restart(section: LoggingSection, observed: list[str] | None = None,
                  registry: CollectorRegistry | None = None) -> CallLog:
    """A new CallLog on the killed one's spool folder and store: it stores what the journal holds at start."""
    calls = CallLog(section, registry or CollectorRegistry(), Sealer.from_settings(section),
                    None if observed is None else (lambda record: observed.append(record.request_id)))
    await calls.start()
    return calls


@pytest.mark.parametrize("killed_child", [None, generate_key()], indirect=True, ids=["plain", "encrypted"])
def test_records_in_memory_at_sigkill_are_stored_at_the_next_start(killed_child: LoggingSection) -> None:
    section = killed_child
    spool = section.spool_path()
    assert stored(section) == [f"stored-{i:03d}" for i in range(20)], "the 15 held ones were in memory only"
    [journal] = journal_files(spool)  # the stored batch's file was released; this one holds the other 15
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    text = journal.read_bytes()
    if section.encryption_key is None:
        assert b"held-000" in text and EMAIL.encode() not in text, "no key: no request body (nothing would use it)"
    else:
        assert b"held-000" not in text and b"noted" not in text, "encrypted with the log key"

    async def scenario() -> None:
        calls = await restart(section)
        await calls.stop()

    asyncio.run(scenario())
    ids = stored(section)
    assert ids == sorted([f"stored-{i:03d}" for i in range(20)] + [f"held-{i:03d}" for i in range(15)])
    assert journal_files(spool) == [], "all stored: no journal is left"
    [(tokens, cost, key_id)] = fetch(section.store, "SELECT input_tokens, cost_usd, key_id FROM calls"
                                                    " WHERE request_id = 'held-003'")
    assert tokens == 7 and cost == pytest.approx((7 * 1.0 + 3 * 2.0) / 1e6), "sealed like any: usage, price"
    assert (key_id is None) == (section.encryption_key is None)
    if section.encryption_key is not None:
        [(blob,)] = fetch(section.store, "SELECT request_payload FROM calls WHERE request_id = 'held-003'")
        cipher = PayloadCipher(section.encryption_key.get_secret_value())
        payload = cipher.decrypt(blob, b"held-003").decode()
        assert "<EMAIL_1>" in payload and EMAIL not in payload, "redacted, then encrypted"


def test_a_record_both_stored_and_journaled_is_stored_once(killed_child: LoggingSection, tmp_path: Path) -> None:
    """A kill between the store's commit and the journal's release leaves records in both: the next start
    offers them again, and the store ignores them. They are observed (metrics) once more, by that process."""
    section = killed_child
    [journal] = journal_files(section.spool_path())
    shutil.copy(journal, tmp_path / "copy")

    async def start_and_stop(observed: list[str]) -> None:
        await (await restart(section, observed)).stop()

    first: list[str] = []
    asyncio.run(start_and_stop(first))
    shutil.copy(tmp_path / "copy", journal)  # as if killed before the release
    again: list[str] = []
    asyncio.run(start_and_stop(again))
    assert len(stored(section)) == 35 and len(set(stored(section))) == 35
    assert first == again == [f"held-{i:03d}" for i in range(15)]


def test_a_torn_tail_costs_only_the_record_being_written(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    journal = Journal(spool, None, _counter())
    for i in range(3):
        journal.append(record(f"r{i}"))
    journal.close()
    [path] = journal_files(spool)
    whole = path.read_bytes()
    path.write_bytes(whole + whole[: len(whole) // 3 - 5])  # a write cut short by the kill
    assert [r.request_id for r in Journal(spool, None, _counter()).recover()] == ["r0", "r1", "r2"]


def test_entries_it_cannot_decrypt_are_kept_aside(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    journal = Journal(spool, PayloadCipher(generate_key()), _counter())
    journal.append(record("r0"))
    journal.close()
    assert Journal(spool, PayloadCipher(generate_key()), _counter()).recover() == []
    assert [p.name for p in journal_files(spool)] == ["journal-0000000001.unreadable"], "for an operator with the key"


def test_the_journal_is_released_as_records_are_stored(tmp_path: Path) -> None:
    section = settings(tmp_path, batch_size=16)

    registry = CollectorRegistry()

    async def scenario() -> None:
        calls = await restart(section, registry=registry)
        files: set[str] = set()
        for i in range(400):
            calls.submit(record(f"r{i:03d}"))
            if i % 10 == 0:
                await asyncio.sleep(0.005)  # load spread over several batches and rotations
                now = {path.name for path in journal_files(section.spool_path())}
                assert len(now) <= 2, "the one being appended to, and the one whose records are being stored"
                files |= now
        assert len(files) > 3, "rotated while records were still queued"
        await eventually_async(lambda: registry.get_sample_value("minigate_log_records_written_total") == 400)
        await eventually_async(lambda: journal_files(section.spool_path()) == [], what="journal released")
        await calls.stop()

    asyncio.run(scenario())
    assert len(stored(section)) == 400


def test_without_a_journal_nothing_is_written_ahead(tmp_path: Path) -> None:
    for section in (settings(tmp_path, journal=False), settings(tmp_path, enabled=False)):

        async def scenario(section: LoggingSection = section) -> None:
            calls = await restart(section)
            calls.submit(record(f"r-{section.enabled}"))
            assert journal_files(section.spool_path()) == []
            await calls.stop()

        asyncio.run(scenario())


def test_a_full_disk_fails_no_record(tmp_path: Path) -> None:
    """The journal's folder full: records are still stored, the failures counted."""
    with tmpfs(tmp_path / "small") as small:
        section = settings(tmp_path, spool=small / "spool")
        registry = CollectorRegistry()

        async def scenario() -> None:
            calls = CallLog(section, registry, Sealer.from_settings(section))
            await calls.start()
            filler = fill(small)
            for i in range(5):
                calls.submit(record(f"full-{i}", size=8192))
            filler.unlink()
            calls.submit(record("after"))
            await eventually_async(lambda: registry.get_sample_value("minigate_log_records_written_total") == 6)
            await calls.stop()

        asyncio.run(scenario())
    assert registry.get_sample_value("minigate_log_journal_failures_total") == 5
    assert len(stored(section)) == 6


def test_unsealed_records_round_trip() -> None:
    original = record("r1")
    original.chunks, original.reply = [b"data: {}\n\n", b"", b"data: [DONE]\n\n"], None
    original.counterfactual_rate = Rate(input_per_mtok=2.0, output_per_mtok=8.0)
    copy = unsealed_record_from_bytes(unsealed_record_to_bytes(original))
    assert copy == original
    assert unsealed_record_from_bytes(unsealed_record_to_bytes(original, omit=("request_body",))).request_body is None


def test_appending_costs_microseconds(tmp_path: Path) -> None:
    """The one I/O on the request path: measured with a 4 KiB request body, plain and encrypted."""
    for cipher in (None, PayloadCipher(generate_key())):
        folder = tmp_path / ("plain" if cipher is None else "sealed")
        folder.mkdir()
        journal = Journal(folder, cipher, _counter())
        records = [record(f"r{i}", size=4096) for i in range(2000)]
        started = time.perf_counter()
        for each in records:
            journal.append(each)
        per_record_us = (time.perf_counter() - started) / len(records) * 1e6
        journal.close()
        journal.discard()
        print(f"journal append ({'plain' if cipher is None else 'AES-GCM'}): {per_record_us:.1f} us/record")
        assert per_record_us < 500, "far more than a copy into the page cache"


def _counter() -> Counter:
    return Counter("journal_failures", "test", registry=CollectorRegistry())


# -- through a gateway process -------------------------------------------------------------------------


@pytest.mark.integration
def test_a_gateway_killed_under_load_loses_nothing_it_answered(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    logging = {"store": store, "flush_interval_s": 30, "batch_size": 10_000}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    answered: list[str] = []
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:
        with httpx.Client(base_url=gateway.base_url, headers={"authorization": f"Bearer {AGENT_KEY}"}) as client:
            for i in range(60):
                body = {"model": "cheap", "messages": [{"role": "user", "content": f"n {i}"}], "stream": i % 3 == 0}
                response = client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200
                answered.append(response.headers["x-minigate-request-id"])
        gateway.signal(signal.SIGKILL)
        gateway.wait()
    assert not (tmp_path / "calls.db").exists() or fetch(store, "SELECT count(*) FROM calls") == [(0,)]
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:  # stores them before it listens
        ids = [row[0] for row in fetch(store, "SELECT request_id FROM calls")]
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
    assert sorted(ids) == sorted(answered), "every answered call, exactly once"
    assert eventually(lambda: not journal_files(tmp_path / "calls.db.spool"))
