"""Stored responses (the Responses API's `store`): kept for the key that made them, sealed in the call-log store.

`keep` never awaits and never raises for the document: it puts it in a bounded LRU in memory (1,024
responses or 64 MiB, whichever comes first) and wakes one writer task, which seals it with the log key's
cipher (`crypto.PayloadCipher`, the one call payloads use, in a worker thread) and stores it
(`CallStore.put_response`). The associated data is the response id and the key name, so a sealed document
moved to another row, or a row given another key name, fails to open. `recall` looks in memory first, so a
`previous_response_id` sent before the write lands is found, then in the store.

When the store is down or slow (the call log spools its records meanwhile), a failed write is counted in
`minigate_log_response_write_failures_total`, logged (a WARNING when writes start failing, INFO when they
work again) and retried by the writer, waiting 0.1 s, then twice as long each time up to 5 s; the response
stays in memory all the while, where `recall` finds it. The spool is not used: it holds call records.
Memory evicts stored responses first, least recently used first; one not yet stored is evicted only when
memory is full of those, and is then lost, like any still unstored when shutdown's retries run out:
counted in `minigate_log_responses_lost_total` and logged at ERROR.

Without a store to write to (logging disabled, or no log key: the log keeps no conversation text in the
clear), responses are kept in memory only, while the LRU holds them; a WARNING says so once.

A response made by another key is answered exactly like a missing one: None. One that memory lacks and the
store cannot be asked for (down, or no answer in time) raises ServiceUnavailable (503), not None, so that
a client is never told that a response it may retry for does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from prometheus_client import CollectorRegistry, Counter

from minigate.errors import ServiceUnavailable
from minigate.logger.crypto import PayloadCipher, PayloadError, blob_key_id
from minigate.logger.stores import CallStore, StoredResponse

__all__ = ["ResponseKeeper"]

log = logging.getLogger("minigate.logger")

_MAX_ENTRIES = 1024
_MAX_BYTES = 64 << 20
_RETRY_FIRST_S = 0.1  # the first wait before retrying a failed write; it doubles up to _RETRY_MAX_S
_RETRY_MAX_S = 5.0


@dataclass(slots=True)
class _Kept:
    key_name: str
    document: bytes
    created_at: float
    is_pending: bool  # waiting for the writer; False once stored, or always when nothing is stored


class ResponseKeeper:
    """Stored responses in memory and in the store, for the key that made them. Use it on the event loop.

    >>> keeper = ResponseKeeper(cipher, lambda: store, registry, timeout_s=5.0)  # doctest: +SKIP
    >>> keeper.keep("resp_1", "agents", b'{"input": [], "response": {}}')  # doctest: +SKIP
    >>> await keeper.recall("resp_1", "agents")  # doctest: +SKIP
    b'{"input": [], "response": {}}'
    """

    def __init__(self, cipher: PayloadCipher | None, store: Callable[[], CallStore | None],
                 registry: CollectorRegistry, *, timeout_s: float, max_entries: int = _MAX_ENTRIES,
                 max_bytes: int = _MAX_BYTES) -> None:
        self._cipher = cipher  # None: memory only
        self._store = store  # the call log's store now, None while it is unavailable
        self._timeout_s = timeout_s
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._recent: OrderedDict[str, _Kept] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._pending: dict[str, None] = {}  # ids of `_recent` waiting for the writer, oldest first
        self._wanted = asyncio.Event()  # set when something is pending
        self._failing: str | None = None  # why the last write failed; None once one succeeds
        self._lost_unreported = 0
        self._lost_why = ""
        self._warned_memory_only = False
        self.write_failures = Counter("minigate_log_response_write_failures",
                                      "Stored-response writes the store refused or did not take in time (retried).",
                                      registry=registry)
        self.lost = Counter("minigate_log_responses_lost",
                            "Stored responses lost before the store took them: memory was full, or shutdown came.",
                            registry=registry)

    def keep(self, response_id: str, key_name: str, document: bytes) -> None:
        """Keep a response for `key_name`; it is written to the store in the background."""
        if len(document) > self._max_bytes:
            self._lose(1, f"response {response_id} ({len(document)} bytes) is larger than the memory it may use")
            self._report_losses()  # rare enough to say at once
            return
        self._forget(response_id)
        kept = _Kept(key_name, document, time.time(), is_pending=self._cipher is not None)
        self._recent[response_id] = kept
        self._bytes += len(document)
        if kept.is_pending:
            self._pending[response_id] = None
            self._wanted.set()
        elif not self._warned_memory_only:
            self._warned_memory_only = True
            log.warning("stored responses are kept in memory only (the latest %d, up to %d MiB): the call log has "
                        "no store or no log key, and stores no conversation text in the clear",
                        self._max_entries, self._max_bytes >> 20)
        self._evict()

    async def recall(self, response_id: str, key_name: str) -> bytes | None:
        """The document, if it exists and `key_name` made it; else None."""
        kept = self._recent.get(response_id)
        if kept is not None:
            self._recent.move_to_end(response_id)
            return kept.document if kept.key_name == key_name else None
        if self._cipher is None:
            return None
        row = await self._fetch(response_id)
        if row is None or row.key_name != key_name:
            return None
        try:
            return await anyio.to_thread.run_sync(self._cipher.decrypt, row.sealed, _aad(response_id, key_name))
        except PayloadError as exc:
            log.warning("stored response %s cannot be opened (%s); answering as if it did not exist", response_id, exc)
            return None

    async def write_forever(self) -> None:
        """The writer: store what is pending, oldest first, retrying while the store fails."""
        retry_in = _RETRY_FIRST_S
        while True:
            self._report_losses()
            if not self._pending:
                self._wanted.clear()
                await self._wanted.wait()
            elif await self._write_oldest():
                retry_in = _RETRY_FIRST_S
            else:
                await asyncio.sleep(retry_in)
                retry_in = min(retry_in * 2, _RETRY_MAX_S)

    async def flush(self, deadline: float) -> None:
        """At shutdown, with the writer stopped: store what is pending, retrying until `deadline` (event-loop
        time); what is left then is lost."""
        loop = asyncio.get_running_loop()
        retry_in = _RETRY_FIRST_S
        while self._pending:
            if await self._write_oldest():
                continue
            if (left := deadline - loop.time()) <= 0:
                self._lose(len(self._pending), "the store did not take them before shutdown")
                self._pending.clear()
                break
            await asyncio.sleep(min(retry_in, left))
            retry_in = min(retry_in * 2, _RETRY_MAX_S)
        self._report_losses()

    # -- memory ---------------------------------------------------------------------------------------

    def _forget(self, response_id: str) -> None:
        kept = self._recent.pop(response_id, None)
        if kept is not None:
            self._bytes -= len(kept.document)
            self._pending.pop(response_id, None)

    def _evict(self) -> None:
        """Within both bounds again: stored responses go first, least recently used first."""
        while len(self._recent) > self._max_entries or self._bytes > self._max_bytes:
            victim = next((rid for rid, kept in self._recent.items() if not kept.is_pending), None)
            if victim is None:
                victim = next(iter(self._recent))
                self._lose(1, "memory is full of responses the store has not taken")
            self._forget(victim)

    def _lose(self, count: int, why: str) -> None:
        self.lost.inc(count)
        self._lost_unreported += count
        self._lost_why = why

    def _report_losses(self) -> None:
        """Log losses once per writer step, with a count, rather than once per response."""
        if self._lost_unreported:
            log.error("LOST %d stored responses: %s (store: %s)", self._lost_unreported, self._lost_why,
                      self._failing or "writes work")
            self._lost_unreported = 0

    # -- the store ------------------------------------------------------------------------------------

    async def _write_oldest(self) -> bool:
        """Store the oldest pending response; False when the store refused it or did not answer in time."""
        response_id = next(iter(self._pending))
        kept = self._recent[response_id]
        error = await self._put(response_id, kept)
        if error is not None:
            self.write_failures.inc()
            if self._failing is None:
                log.warning("stored response %s could not be written (%s); keeping it and later ones in memory "
                            "and retrying", response_id, error)
            self._failing = error
            return False
        if self._recent.get(response_id) is kept:  # neither evicted nor kept anew meanwhile
            kept.is_pending = False
            del self._pending[response_id]
        if self._failing is not None:
            log.info("stored responses are written again (after: %s)", self._failing)
            self._failing = None
        return True

    async def _put(self, response_id: str, kept: _Kept) -> str | None:
        store = self._store()
        if store is None:
            return "the call-log store is unavailable"
        assert self._cipher is not None
        try:
            sealed = await anyio.to_thread.run_sync(self._cipher.encrypt, kept.document,
                                                    _aad(response_id, kept.key_name))
            row = StoredResponse(response_id, kept.key_name, kept.created_at, blob_key_id(sealed), sealed)
            await asyncio.wait_for(store.put_response(row), self._timeout_s)
        except Exception as exc:  # any store failure or stall: the writer retries
            return _why(exc, self._timeout_s)
        return None

    async def _fetch(self, response_id: str) -> StoredResponse | None:
        store = self._store()
        error = "it is unavailable"
        if store is not None:
            try:
                return await asyncio.wait_for(store.get_response(response_id), self._timeout_s)
            except Exception as exc:  # any store failure or stall: the client may retry
                error = _why(exc, self._timeout_s)
        log.warning("stored response %s could not be read from the call-log store: %s", response_id, error)
        raise ServiceUnavailable("The call-log store, which keeps stored responses, is unavailable; retry shortly.")


def _aad(response_id: str, key_name: str) -> bytes:
    """What a sealed document is bound to: its id, and the key it belongs to."""
    return response_id.encode() + b"\x00" + key_name.encode()


def _why(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return str(exc) or type(exc).__name__
