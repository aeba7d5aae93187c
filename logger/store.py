"""The one interface every call-log store implements, and the choice of store by URL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from minigate.logger.query import CallQuery
from minigate.logger.records import CallRecord

__all__ = ["CallStore", "open_store"]


class CallStore(Protocol):
    """Writes are batches in one transaction, idempotent on request_id (a replayed record is not stored twice)."""

    async def write(self, records: Sequence[CallRecord]) -> None: ...

    async def read(self, query: CallQuery, *, payloads: bool) -> list[dict[str, Any]]:
        """Rows ordered by (started_at, request_id); payload columns only when asked for."""
        ...

    async def audit(self, actor: str, action: str, detail: str) -> None:
        """Record who read what: every read of payloads leaves a row in `audit`."""
        ...

    async def purge(self, before: float) -> int:
        """Delete calls that started before `before` (unix seconds); returns how many."""
        ...

    async def close(self) -> None: ...


async def open_store(url: str) -> CallStore:
    """Open (and migrate) the store a `logging.store` URL names."""
    if url.startswith("sqlite:///"):
        from minigate.logger.sqlite_store import SQLiteStore

        return await SQLiteStore.open(url)
    # Imported only when configured, so a SQLite deployment never loads the PostgreSQL driver.
    from minigate.logger.postgres_store import PostgresStore

    return await PostgresStore.open(url)
