"""Reading calls back for people: metadata for analysts, decrypted (still redacted) payloads for admins.

Every payload read leaves an audit row naming the reader, so access to conversation text is accountable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson

from minigate.logger.crypto import PayloadCipher, PayloadError
from minigate.logger.stores import PAYLOAD_COLUMNS, CallQuery, CallStore, decode_cursor, encode_cursor

__all__ = ["CallReader"]


class CallReader:
    """Pages of calls from a store.

    >>> rows, cursor = await reader.page(CallQuery(route="gpt-4.1"), payloads=False, actor="dashboards")  # doctest: +SKIP
    """

    def __init__(self, store: CallStore, cipher: PayloadCipher | None) -> None:
        self.store = store
        self.cipher = cipher

    async def page(self, query: CallQuery, *, payloads: bool, actor: str) -> tuple[list[dict[str, Any]], str | None]:
        """One page and the cursor of the next (None on the last page)."""
        rows = await self.store.read(query, payloads=payloads)
        for row in rows:  # stored as JSON text (SQLite) or jsonb (PostgreSQL); both drivers hand back text
            row["attempts"] = orjson.loads(row["attempts"]) if row["attempts"] else None
        if payloads:
            await anyio.to_thread.run_sync(self._open, rows)
            if rows:
                detail = f"{len(rows)} calls, {rows[0]['request_id']} .. {rows[-1]['request_id']}"
                await self.store.audit(actor, "read_payloads", detail)
        cursor = encode_cursor(rows[-1]) if len(rows) == query.limit else None
        return rows, cursor

    async def metadata(self, query: CallQuery) -> AsyncIterator[list[dict[str, Any]]]:
        """Every page of metadata the query matches, oldest first (no payloads: nothing to audit)."""
        while True:
            rows, cursor = await self.page(query, payloads=False, actor="")
            if rows:
                yield rows
            if cursor is None:
                return
            query = dataclasses.replace(query, after=decode_cursor(cursor))

    async def outcomes(self, since: float, until: float | None = None) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
        """What quality is measured from: every call and shadow call's metadata over the window, and the
        feedback scores given in it by request id."""
        query = CallQuery(since=since, until=until, kind="all", limit=5000)
        rows = [row async for page in self.metadata(query) for row in page]
        scores: dict[str, list[float]] = {}
        for feedback in await self.store.read_feedback(since=since):
            scores.setdefault(feedback.request_id, []).append(feedback.score)
        return rows, scores

    def _open(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            aad = row["request_id"].encode()
            for column in PAYLOAD_COLUMNS:
                row[column.removesuffix("_payload")] = self._decrypt(row.pop(column), aad)

    def _decrypt(self, blob: bytes | None, aad: bytes) -> Any:
        if blob is None:
            return None
        if self.cipher is None:
            return {"error": "payload is encrypted and logging.encryption_key is not configured"}
        try:
            return orjson.loads(self.cipher.decrypt(blob, aad))
        except PayloadError as exc:
            return {"error": str(exc)}
