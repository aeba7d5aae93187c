"""The call log's way off the request path: a bounded queue, one writer that batches, and a spool.

`submit` never awaits and never blocks: it puts the record on the queue, or, when the queue is full,
on an overflow list the writer spools to disk. The writer takes up to `batch_size` records, or what
arrived within `flush_interval_s`, seals them in a worker process (tokens, client id, redaction,
encryption) and writes them in one transaction. A batch the store refuses goes to the spool; a
replayer offers spooled records to the store every `replay_interval_s` and at start-up, committing
each batch only after the store holds it. Stores are idempotent on request id, so a replay after a
crash may repeat a batch but never stores a record twice. Shutdown drains everything to the store,
or to the spool when the store is down.

Each record, once sealed, goes to `observe` (the gateway's token and cost metrics), exactly once: a
spooled record is replayed sealed and never observed again. With `enabled: false` the writer still
runs, but only measures (tokens, cost) and observes; nothing is stored, redacted or encrypted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge

from minigate.logger.reader import CallReader
from minigate.logger.records import CallRecord, record_from_bytes, record_to_bytes
from minigate.logger.seal import Sealer
from minigate.logger.seal_pool import SealerPool
from minigate.logger.settings import LoggingSection
from minigate.logger.spool import Spool, SpoolBatch
from minigate.logger.store import CallStore, open_store

__all__ = ["CallLog"]

log = logging.getLogger("minigate.logger")

_PURGE_EVERY_S = 3600.0
_COLLECT_POLL_S = 0.05  # how often the writer looks for queued records while a batch fills


class CallLog:
    """Bounded, batched, asynchronous writing of call records that loses none.

    >>> calls = CallLog(LoggingSection(), registry, sealer)  # doctest: +SKIP
    >>> await calls.start(); calls.submit(record); await calls.stop()  # doctest: +SKIP
    """

    def __init__(self, settings: LoggingSection, registry: CollectorRegistry, sealer: Sealer,
                 observe: Callable[[CallRecord], None] | None = None) -> None:
        self.settings = settings
        self.sealer = sealer
        self._observe = observe  # called on the event loop with each sealed record
        self._sealing = SealerPool(sealer, settings.seal_processes if settings.enabled else 0)
        self._queue: asyncio.Queue[CallRecord] = asyncio.Queue(settings.queue_size)
        self._overflow: list[CallRecord] = []
        self._pending: list[CallRecord] = []
        self._store: CallStore | None = None
        self._spool: Spool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: asyncio.Task[None] | None = None
        self._replaying = asyncio.Lock()
        Gauge("minigate_log_queue_depth", "Call records waiting for the writer.", registry=registry).set_function(
            lambda: self._queue.qsize() + len(self._overflow)
        )
        self.written = Counter("minigate_log_records_written", "Call records stored.", registry=registry)
        self.spooled = Counter(
            "minigate_log_records_spooled", "Call records put in the spool (store down or queue full).",
            registry=registry,
        )
        self.dropped = Counter(
            "minigate_log_records_dropped", "Call records lost; stays 0 (there is no drop policy).",
            registry=registry,
        )

    async def start(self) -> None:
        if not self.settings.enabled:
            self._tasks = [asyncio.get_running_loop().create_task(self._write_forever())]
            return
        self._spool = await anyio.to_thread.run_sync(Spool, self.settings.spool_path(), self.settings.spool_fsync)
        await self._connect()
        await self._replay()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_forever()), loop.create_task(self._replay_forever())]
        if self.settings.retention_days is not None:
            self._tasks.append(loop.create_task(self._purge_forever(self.settings.retention_days)))

    def reader(self) -> CallReader | None:
        """A reader over the store, or None while the store is unavailable."""
        return None if self._store is None else CallReader(self._store, self.sealer.cipher)

    def submit(self, record: CallRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._overflow.append(record)

    async def stop(self) -> None:
        """Store (or spool) everything taken or queued, then close the store and the spool."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)
        remaining, self._pending = self._pending + self._overflow, []
        self._overflow = []
        while not self._queue.empty():
            remaining.append(self._queue.get_nowait())
        for start in range(0, len(remaining), self.settings.batch_size):
            await self._flush(remaining[start : start + self.settings.batch_size])
        if not self.settings.enabled:
            return
        await self._replay()
        if self._store is not None:
            await self._store.close()
        if self._spool is not None:
            await anyio.to_thread.run_sync(self._spool.close)
        await anyio.to_thread.run_sync(self._sealing.close)

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Records taken from the queue sit in self._pending, so a cancel at shutdown can't lose them.
            self._pending.append(await self._queue.get())
            deadline = loop.time() + self.settings.flush_interval_s
            # Collect by polling, not by awaiting each record: a `get()` per record would wake this task
            # once per request, a loop iteration that every request would pay for on the gateway's core.
            while True:
                while len(self._pending) < self.settings.batch_size and not self._queue.empty():
                    self._pending.append(self._queue.get_nowait())
                remaining = deadline - loop.time()
                if len(self._pending) >= self.settings.batch_size or remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, _COLLECT_POLL_S))
            batch, self._pending = self._pending, []
            if self._overflow:
                batch, self._overflow = batch + self._overflow, []
            self._inflight = loop.create_task(self._flush(batch))
            await asyncio.shield(self._inflight)

    async def _flush(self, batch: list[CallRecord]) -> None:
        batch = await self._sealing.seal(batch, measure_only=not self.settings.enabled)
        self._observe_all(batch)
        if not self.settings.enabled or await self._write(batch):
            return
        assert self._spool is not None
        await anyio.to_thread.run_sync(self._spool.append, [record_to_bytes(r) for r in batch])
        self.spooled.inc(len(batch))

    def _observe_all(self, batch: list[CallRecord]) -> None:
        if self._observe is None:
            return
        for record in batch:
            try:
                self._observe(record)
            except Exception:  # a metrics bug must not stop the writer: records would pile up unwritten
                log.exception("call log observer failed on record %s", record.request_id)

    async def _write(self, batch: list[CallRecord]) -> bool:
        if self._store is None and not await self._connect():
            return False
        assert self._store is not None
        try:
            await self._store.write(batch)
        except Exception as exc:  # any store failure: the records go to the spool instead
            log.warning("call log store write failed (%s: %s); spooling %d records", type(exc).__name__, exc, len(batch))
            return False
        self.written.inc(len(batch))
        return True

    async def _connect(self) -> bool:
        try:
            self._store = await open_store(self.settings.store)
        except Exception as exc:
            log.error("call log store %s unavailable (%s: %s); records spool until it is back",
                      _redacted_url(self.settings.store), type(exc).__name__, exc)
            return False
        return True

    async def _purge_forever(self, days: float) -> None:
        while True:
            if self._store is not None:
                try:
                    purged = await self._store.purge(time.time() - days * 86400)
                    if purged:
                        log.info("call log: purged %d records older than %g days", purged, days)
                except Exception as exc:
                    log.warning("call log purge failed (%s: %s); next try in an hour", type(exc).__name__, exc)
            await asyncio.sleep(_PURGE_EVERY_S)

    async def _replay_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.replay_interval_s)
            await self._replay()

    async def _replay(self) -> None:
        """Offer spooled records to the store, oldest first; stop at the first refusal."""
        assert self._spool is not None
        spool = self._spool
        async with self._replaying:
            if not await anyio.to_thread.run_sync(spool.pending):
                return
            batches: Iterator[SpoolBatch] = await anyio.to_thread.run_sync(spool.replay)
            while (batch := await anyio.to_thread.run_sync(next, batches, None)) is not None:
                if not await self._write([record_from_bytes(data) for data in batch.records]):
                    return
                await anyio.to_thread.run_sync(spool.commit, batch)
            log.info("call log: spooled records replayed into the store")


def _redacted_url(url: str) -> str:
    """The store URL without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':')[0]}{at}{host}" if at else url
