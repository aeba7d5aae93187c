"""The call log's way off the request path: a journal, a bounded queue, one writer that batches, and a spool.

`submit` never awaits and never blocks: it puts the record on the queue, or, when the queue is full,
on an overflow list the writer takes with its next batch. The writer takes up to `batch_size`
records, or what arrived within `flush_interval_s`, seals them (`seal/guard.py`: tokens, client id,
redaction, encryption; a record that can't be sealed keeps its metadata only) and writes them in one
transaction, given `store_timeout_s`. A batch the store refuses, or does not take in time, goes to the
spool, and so do later batches until a replayed one is stored again; a replayer offers spooled records to the store every `replay_interval_s` and at start-up,
committing each batch only after the store holds it. Stores are idempotent on request id, so a replay
after a crash, or a timed-out write that lands late, may repeat a batch but never stores a record twice.

When the store and the spool both fail (a full disk), the writer holds the sealed batch and retries it,
waiting 0.1 s, then twice as long each time up to 5 s, and takes nothing new meanwhile. Memory stays
bounded: beyond a full queue, at most `queue_size` records are held; what arrives beyond that is dropped,
counted in `minigate_log_records_dropped_total` and logged at ERROR. `problem` says so, for `/readyz`.
Once either works again, everything held is written. Shutdown drains everything to the store, or to the
spool, retrying for up to `shutdown_timeout_s`; what is still held then is counted as dropped.

The writer and the replayer are supervised: one that fails is logged with its traceback and started
again, and the records it had taken stay in `_pending` or `_held`, so it picks them up again.

The journal (`minigate.logger.journal`, `logging.journal`, on by default) makes the memory safe against a
killed process (SIGKILL, the OOM killer): `submit` first appends the record, unsealed, to a file in the spool
folder with one write system call (about 10 microseconds, encrypted with the payload cipher when there is one). When
the writer has taken a batch it rotates the journal (later records go to a new file); once every record
appended before the rotation is stored or spooled (none pending or held, and the queue, first in first out,
has passed them), the older files are deleted, and all of them whenever nothing is in memory. So a record
is never in memory alone. At start-up, what a killed process left in the journal is sealed and stored (or
spooled) before `start` returns; a record that was also stored before the kill is not stored twice, but
is observed again (its tokens and cost count once more in the metrics of the new process). A journal
write that fails (a full disk) never fails the request: the record goes on in memory, and the failure is
counted in `minigate_log_journal_failures_total` and logged when it starts and when it ends. After a
clean `stop` no journal is left; one that still holds records (some were dropped) is stored at the next start.

Each record, once sealed, goes to `observe` (the gateway's token and cost metrics), once per process: a
spooled record is replayed sealed and never observed again (a journaled one: see above). With `enabled:
false` the writer still runs, but only measures (tokens, cost) and observes; nothing is stored, redacted,
encrypted or journaled.

Stored responses (the Responses API's `store`) are kept beside the records, sealed with the same cipher,
by `keep_response` and read back by `recall_response`: see `minigate.logger.responses`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge

from minigate.logger.journal import Journal
from minigate.logger.reader import CallReader
from minigate.logger.records import CallRecord, record_from_bytes, record_to_bytes
from minigate.logger.responses import ResponseKeeper
from minigate.logger.seal import SealGuard, Sealer, SealerPool
from minigate.logger.settings import LoggingSection
from minigate.logger.spool import Spool, SpoolBatch
from minigate.logger.stores import CallStore, open_store

__all__ = ["CallLog"]

log = logging.getLogger("minigate.logger")

_PURGE_EVERY_S = 3600.0
_COLLECT_POLL_S = 0.05  # how often the writer looks for queued records while a batch fills
_RETRY_FIRST_S = 0.1  # the first wait before retrying held records; it doubles up to _RETRY_MAX_S
_RETRY_MAX_S = 5.0
_RESTART_DELAY_S = 0.1  # before a failed background loop runs again, so a persistent bug can't spin


class CallLog:
    """Bounded, batched, asynchronous writing of call records that loses none it can keep.

    >>> calls = CallLog(LoggingSection(), registry, sealer)  # doctest: +SKIP
    >>> await calls.start(); calls.submit(record); await calls.stop()  # doctest: +SKIP
    """

    def __init__(self, settings: LoggingSection, registry: CollectorRegistry, sealer: Sealer,
                 observe: Callable[[CallRecord], None] | None = None) -> None:
        self.settings = settings
        self.sealer = sealer
        self._observe = observe  # called on the event loop with each sealed record
        self._sealing = SealGuard(SealerPool(sealer, settings.seal_processes if settings.enabled else 0), registry)
        self._queue: asyncio.Queue[CallRecord] = asyncio.Queue(settings.queue_size)
        self._overflow: list[CallRecord] = []
        self._pending: list[CallRecord] = []  # taken from the queue, not sealed yet
        self._held: list[CallRecord] = []  # sealed, neither stored nor spooled yet
        self._failure: str | None = None  # why the held records could be neither stored nor spooled
        self._store_error: str | None = None  # the last store failure; cleared by a successful write
        self._drops_unreported = 0
        self._drops = 0
        self._store: CallStore | None = None
        self._spool: Spool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._journal: Journal | None = None
        self._submitted = 0  # records ever put on the queue: with its size, how many have left it
        self._rotated_at: int | None = None  # `_submitted` at the journal's last rotation; None: released since
        self._inflight: asyncio.Task[None] | None = None
        self._replaying = asyncio.Lock()
        self._responses = ResponseKeeper(sealer.cipher if settings.enabled else None, lambda: self._store, registry,
                                         timeout_s=settings.store_timeout_s)
        # Read at each scrape; also set at each writer step, for prometheus_client's multiprocess mode (several
        # gateway workers), where only a set value reaches the scrape and the workers' depths are added up.
        self._depth = Gauge("minigate_log_queue_depth", "Call records in memory, not yet stored or spooled.",
                            registry=registry, multiprocess_mode="livesum")
        self._depth.set_function(self._in_memory)
        self.written = Counter("minigate_log_records_written", "Call records stored.", registry=registry)
        self.spooled = Counter(
            "minigate_log_records_spooled", "Call records put in the spool (store down or slow, or queue full).",
            registry=registry,
        )
        self.dropped = Counter(
            "minigate_log_records_dropped",
            "Call records lost: neither stored nor spooled while memory held all it may (or at shutdown).",
            registry=registry,
        )
        self.journal_failures = Counter(
            "minigate_log_journal_failures",
            "Call records not written to the journal (a full disk): a SIGKILL would lose them if still in memory.",
            registry=registry,
        )

    @property
    def problem(self) -> str | None:
        """None while records persist (to the store, or at least to the spool); else what fails, for operators."""
        if self._failure is None:
            return None
        return f"call log cannot persist: {self._failure}; {self._in_memory()} records held in memory"

    async def start(self) -> None:
        if not self.settings.enabled:
            self._tasks = [self._supervise("writer", self._write_forever)]
            return
        self._spool = await anyio.to_thread.run_sync(Spool, self.settings.spool_path(), self.settings.spool_fsync)
        await self._connect()
        await self._replay()
        if self.settings.journal:
            await self._recover()
        self._tasks = [self._supervise("writer", self._write_forever),
                       self._supervise("replayer", self._replay_forever),
                       self._supervise("response writer", self._responses.write_forever)]
        if self.settings.retention_days is not None:
            self._tasks.append(self._supervise("purger", self._purge_forever))

    def reader(self) -> CallReader | None:
        """A reader over the store, or None while the store is unavailable."""
        return None if self._store is None else CallReader(self._store, self.sealer.cipher)

    def submit(self, record: CallRecord) -> None:
        if self._journal is not None:
            self._journal.append(record)
        try:
            self._queue.put_nowait(record)
            self._submitted += 1
        except asyncio.QueueFull:
            if self._failure is None:
                self._overflow.append(record)
            else:  # nothing persists and memory holds all it may
                self._drop(1)

    def keep_response(self, response_id: str, key_name: str, document: bytes) -> None:
        """Keep a stored response (the Responses API's `store`) for the key named `key_name`. Never waits and
        never fails the request: the document is sealed (the payload cipher, bound to the response id and key
        name) and written in the background, and kept meanwhile in a bounded memory (1,024 responses or
        64 MiB), where `recall_response` finds it before the write lands. While the store is down the write is
        retried, the response staying in memory (see `minigate.logger.responses`); with logging disabled or
        no log key, responses are kept in memory only.
        """
        self._responses.keep(response_id, key_name, document)

    async def recall_response(self, response_id: str, key_name: str) -> bytes | None:
        """The stored response's document, decrypted, if it exists and `key_name` made it; None otherwise: one
        made by another key is answered exactly like a missing one. Memory first, then the store; raises
        ServiceUnavailable when the store is needed and can't answer."""
        return await self._responses.recall(response_id, key_name)

    async def stop(self) -> None:
        """Store (or spool) everything taken or queued, retrying until `shutdown_timeout_s`; then close."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)
        self._pending += self._overflow
        self._overflow = []
        while not self._queue.empty():
            self._pending.append(self._queue.get_nowait())
        await self._flush_pending()
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout_s
        await self._retry_until(deadline)
        if not self.settings.enabled:
            return
        if self._journal is not None:
            self._journal.close()
            # Kept when some were dropped, or submitted after the drain: the next start stores what it holds.
            if self._failure is None and self._in_memory() == 0:
                await anyio.to_thread.run_sync(self._journal.discard)
        await self._responses.flush(deadline)
        await self._replay()
        if self._store is not None:
            await self._store.close()
        if self._spool is not None:
            await anyio.to_thread.run_sync(self._spool.close)
        await anyio.to_thread.run_sync(self._sealing.close)

    # -- the writer -----------------------------------------------------------------------------------

    def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def supervised() -> None:
            while True:
                try:
                    await run()
                except Exception:
                    log.exception("call log %s failed; restarting it (the records it held are kept)", name)
                    await asyncio.sleep(_RESTART_DELAY_S)

        return asyncio.get_running_loop().create_task(supervised())

    async def _write_forever(self) -> None:
        retry_in = _RETRY_FIRST_S
        while True:
            if self._failure is None:
                retry_in = _RETRY_FIRST_S
                await self._collect()
                await self._to_the_end(self._flush_pending())
            else:
                await asyncio.sleep(retry_in)
                retry_in = min(retry_in * 2, _RETRY_MAX_S)
                await self._to_the_end(self._persist())
            self._shed()
            self._depth.set(self._in_memory())

    async def _to_the_end(self, step: Awaitable[None]) -> None:
        """Run a step that a cancel must not cut short (stop() awaits it): it holds records mid-way."""
        self._inflight = asyncio.ensure_future(step)
        await asyncio.shield(self._inflight)

    async def _collect(self) -> None:
        """Take a batch into `_pending`: where a cancel or a crash of the writer can't lose it."""
        loop = asyncio.get_running_loop()
        if not self._pending:
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
        self._pending += self._overflow
        self._overflow = []
        self._rotate_journal()

    async def _flush_pending(self) -> None:
        """Seal what was taken, a batch at a time, then store (or spool) it with anything held."""
        while self._pending:
            batch = self._pending[: self.settings.batch_size]
            sealed = await self._sealing.seal(batch, measure_only=not self.settings.enabled)
            self._observe_all(sealed)
            self._held += sealed
            del self._pending[: len(batch)]
        await self._persist()

    def _observe_all(self, batch: list[CallRecord]) -> None:
        if self._observe is None:
            return
        for record in batch:
            try:
                self._observe(record)
            except Exception:  # a metrics bug must not stop the writer: records would pile up unwritten
                log.exception("call log observer failed on record %s", record.request_id)

    async def _persist(self) -> None:
        """Store the held records, or else spool them; while neither works they stay held (see `problem`)."""
        if not self._held or not self.settings.enabled:
            self._held, self._failure = [], None
            await self._release_journal()
            return
        batch = list(self._held)  # a store write that timed out may still read its list in a thread
        # A store that failed or stalled gets no new batch while the spool takes them: the replayer probes
        # it, and each batch would cost another store_timeout_s while the records behind it pile up.
        skip = self._store_error is not None and self._failure is None
        store_error = self._store_error if skip else await self._write(batch)
        spool_error = None if store_error is None else await self._append_to_spool(batch)
        if spool_error is None:
            if self._failure is not None:
                log.warning("call log persists again: %d held records %s", len(self._held),
                            "stored" if store_error is None else "spooled")
            self._held, self._failure = [], None
            await self._release_journal()
            return
        if self._failure is None:
            log.error("call log can neither store nor spool records (store: %s; spool: %s); holding %d in memory"
                      " and retrying", store_error, spool_error, len(self._held))
        self._failure = f"store: {store_error}; spool: {spool_error}"

    async def _retry_until(self, deadline: float) -> None:
        """At shutdown: retry the held records until `deadline`, then count what is left as dropped."""
        loop = asyncio.get_running_loop()
        retry_in = _RETRY_FIRST_S
        while self._failure is not None and (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(retry_in, left))
            retry_in = min(retry_in * 2, _RETRY_MAX_S)
            await self._persist()
        if self._held:
            self._drop(len(self._held))
            self._held = []
        self._report_drops()

    def _shed(self) -> None:
        """While nothing persists, keep at most `queue_size` records besides the queue: drop the newest."""
        if self._failure is not None:
            excess = len(self._held) + len(self._overflow) - self.settings.queue_size
            if excess > 0:
                from_overflow = min(excess, len(self._overflow))
                del self._overflow[len(self._overflow) - from_overflow :]
                del self._held[len(self._held) - (excess - from_overflow) :]
                self._drop(excess)
        self._report_drops()

    def _drop(self, count: int) -> None:
        self.dropped.inc(count)
        self._drops += count
        self._drops_unreported += count

    def _report_drops(self) -> None:
        """Log drops once per writer step, with counts, rather than once per record."""
        if self._drops_unreported:
            log.error("call log DROPPED %d records: they could be neither stored nor spooled (%d since start; %s)",
                      self._drops_unreported, self._drops, self._failure)
            self._drops_unreported = 0

    def _in_memory(self) -> int:
        return self._queue.qsize() + len(self._overflow) + len(self._pending) + len(self._held)

    # -- the journal ----------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Open the journal; store (or spool) what a killed process left in it before serving."""
        assert self._spool is not None  # the journal lives in the folder the spool holds locked
        journal = await anyio.to_thread.run_sync(Journal, self._spool.path, self.sealer.cipher, self.journal_failures)
        self._pending += await anyio.to_thread.run_sync(journal.recover)
        self._journal, self._rotated_at = journal, 0  # its old files go once these are persisted
        await self._flush_pending()

    def _rotate_journal(self) -> None:
        """Called once the writer has taken a batch: later records go to a new file. Everything appended
        before is in that batch, or still queued (first in line) when the batch was full."""
        if self._journal is not None and self._rotated_at is None:
            self._journal.rotate()
            self._rotated_at = self._submitted

    async def _release_journal(self) -> None:
        """Once every record appended before the last rotation is stored or spooled (none is pending,
        held, or queued: the queue is first in, first out), delete the files that hold them; all files,
        when no record at all is in memory."""
        if self._journal is None or self._pending or self._held:
            return
        if self._in_memory() == 0:
            self._journal.rotate()
        elif self._rotated_at is None or self._submitted - self._queue.qsize() < self._rotated_at:
            return
        self._rotated_at = None
        await anyio.to_thread.run_sync(self._journal.release)

    # -- the store and the spool ----------------------------------------------------------------------

    async def _write(self, batch: list[CallRecord]) -> str | None:
        """Store a batch in time; None when stored, else what went wrong."""
        if self._store is None and (error := await self._connect()) is not None:
            return self._store_failed(error, len(batch))
        assert self._store is not None
        try:
            await asyncio.wait_for(self._store.write(batch), self.settings.store_timeout_s)
        except Exception as exc:  # any store failure or stall: the caller spools or holds the records
            return self._store_failed(_describe(exc, self.settings.store_timeout_s), len(batch))
        self._store_error = None
        self.written.inc(len(batch))
        return None

    def _store_failed(self, error: str, records: int) -> str:
        log.warning("call log store write failed (%s); spooling %d records", error, records)
        self._store_error = error
        return error

    async def _append_to_spool(self, batch: list[CallRecord]) -> str | None:
        assert self._spool is not None
        try:
            await anyio.to_thread.run_sync(self._spool.append, [record_to_bytes(r) for r in batch])
        except Exception as exc:
            return _describe(exc, None)
        self.spooled.inc(len(batch))
        return None

    async def _connect(self) -> str | None:
        timeout_s = self.settings.store_timeout_s
        try:
            self._store = await asyncio.wait_for(open_store(self.settings.store, timeout_s=timeout_s), timeout_s)
        except Exception as exc:
            error = _describe(exc, timeout_s)
            log.error("call log store %s unavailable (%s); records spool until it is back",
                      _redacted_url(self.settings.store), error)
            return error
        return None

    async def _purge_forever(self) -> None:
        assert self.settings.retention_days is not None
        days = self.settings.retention_days
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
                if await self._write([record_from_bytes(data) for data in batch.records]) is not None:
                    return
                await anyio.to_thread.run_sync(spool.commit, batch)
            log.info("call log: spooled records replayed into the store")


def _describe(exc: Exception, timeout_s: float | None) -> str:
    """An error as one short phrase for logs and `problem`."""
    if isinstance(exc, TimeoutError) and timeout_s is not None:
        return f"no answer within {timeout_s:g} s"
    return str(exc) or type(exc).__name__


def _redacted_url(url: str) -> str:
    """The store URL without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':')[0]}{at}{host}" if at else url
