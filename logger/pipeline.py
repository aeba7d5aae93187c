"""The call log's way off the request path: a bounded queue and one writer task that batches.

`submit` never awaits: it puts the record on the queue and returns. The writer takes up to
`batch_size` records, or what arrived within `flush_interval_s`, and writes them in one transaction
from a worker thread. Shutdown drains the queue before the store closes.
"""

from __future__ import annotations

import asyncio
import logging

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge

from minigate.logger.records import CallRecord, usage_of
from minigate.logger.settings import LoggingSection
from minigate.logger.store import CallStore, open_store

__all__ = ["CallLog"]

log = logging.getLogger("minigate.logger")

_RETRY_DELAYS_S = (0.1, 0.5, 2.0)


class CallLog:
    """Bounded, batched, asynchronous writing of call records.

    >>> calls = CallLog(LoggingSection(), registry)  # doctest: +SKIP
    >>> await calls.start(); calls.submit(record); await calls.stop()  # doctest: +SKIP
    """

    def __init__(self, settings: LoggingSection, registry: CollectorRegistry) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[CallRecord] = asyncio.Queue(settings.queue_size)
        self._store: CallStore | None = None
        self._writer: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._pending: list[CallRecord] = []
        Gauge("minigate_log_queue_depth", "Call records waiting for the writer.", registry=registry).set_function(
            self._queue.qsize
        )
        self.written = Counter("minigate_log_records_written", "Call records stored.", registry=registry)
        self.dropped = Counter(
            "minigate_log_records_dropped", "Call records lost (queue full or store failing); should stay 0.",
            registry=registry,
        )

    async def start(self) -> None:
        self._store = await open_store(self.settings.store)
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    def submit(self, record: CallRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped.inc()
            log.error("call log queue full (%d): record %s dropped", self.settings.queue_size, record.request_id)

    async def stop(self) -> None:
        """Write everything taken or queued, then close the store."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)
        remaining, self._pending = self._pending, []
        while not self._queue.empty():
            remaining.append(self._queue.get_nowait())
        for start in range(0, len(remaining), self.settings.batch_size):
            await self._write(remaining[start : start + self.settings.batch_size])
        if self._store is not None:
            await self._store.close()

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Records taken from the queue sit in self._pending, so a cancel at shutdown can't lose them.
            self._pending.append(await self._queue.get())
            deadline = loop.time() + self.settings.flush_interval_s
            try:
                async with asyncio.timeout_at(deadline):
                    while len(self._pending) < self.settings.batch_size:
                        self._pending.append(await self._queue.get())
            except TimeoutError:
                pass
            batch, self._pending = self._pending, []
            self._inflight = loop.create_task(self._write(batch))
            await asyncio.shield(self._inflight)

    async def _write(self, batch: list[CallRecord]) -> None:
        assert self._store is not None
        for delay in (*_RETRY_DELAYS_S, None):
            try:
                await anyio.to_thread.run_sync(_read_usage, batch)
                await self._store.write(batch)
                self.written.inc(len(batch))
                return
            except Exception:
                if delay is None:
                    break
                log.warning("call log write failed; retrying in %.1f s", delay, exc_info=True)
                await asyncio.sleep(delay)
        self.dropped.inc(len(batch))
        log.error("call log store failed: %d records dropped", len(batch))


def _read_usage(batch: list[CallRecord]) -> None:
    """Runs in a worker thread: parsing usage out of replies costs the event loop nothing."""
    for record in batch:
        if record.reply is not None:
            record.input_tokens, record.output_tokens = usage_of(record.reply)
            record.reply = None
