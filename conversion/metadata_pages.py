"""Every call's metadata in a time window, page by page: what aggregate reports read.

Payload columns are never selected, so no log key is needed and no payload read is audited: a report
over the whole log sees counts, tokens, costs and latencies, never conversation text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from minigate.logger.reader import CallReader
from minigate.logger.stores import CallQuery, Kind, decode_cursor, open_store

__all__ = ["read_metadata"]

_PAGE = 1000


async def read_metadata(
    store_url: str, *, since: float | None, until: float | None, write: Callable[[list[dict[str, Any]]], object],
    progress: Callable[[int], object] = lambda n: None, kind: Kind = "calls",
) -> int:
    """Hand every call's metadata row (oldest first) to `write`, a page at a time; returns how many.

    `kind` picks clients' calls (the default), the shadow calls minigate made, or both.

    A SQLite file that does not exist reads as empty rather than being created by a read.
    """
    if store_url.startswith("sqlite:///") and not Path(store_url.removeprefix("sqlite:///")).exists():
        return 0
    store = await open_store(store_url)
    try:
        reader, query = CallReader(store, None), CallQuery(since=since, until=until, kind=kind, limit=_PAGE)
        count = 0
        while True:
            rows, cursor = await reader.page(query, payloads=False, actor="report")
            if rows:
                write(rows)
                count += len(rows)
                progress(len(rows))
            if cursor is None:
                return count
            query = CallQuery(since=since, until=until, kind=kind, after=decode_cursor(cursor), limit=_PAGE)
    finally:
        await store.close()
