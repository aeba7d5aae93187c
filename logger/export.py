"""`minigate logs export`: every call in a time window, payloads decrypted (still redacted), page by page.

The pages go to a sink: JSONL lines by default, Parquet row groups with `parquet_export.ParquetSink`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from minigate.logger.reader import CallReader
from minigate.logger.seal import Sealer
from minigate.logger.settings import LoggingSection
from minigate.logger.stores import CallQuery, decode_cursor, open_store

__all__ = ["export_calls", "jsonl"]

_PAGE = 500


async def export_calls(
    settings: LoggingSection, *, since: float | None, until: float | None, actor: str,
    write: Callable[[list[dict[str, Any]]], object], progress: Callable[[int], object] = lambda n: None,
) -> int:
    """Hand every call (oldest first) to `write`, a page at a time; returns how many. Each page read is audited.

    A call that was rated (`POST /v1/minigate/feedback`) carries its ratings as `feedback`, oldest first.
    """
    store = await open_store(settings.store)
    try:
        reader = CallReader(store, Sealer.from_settings(settings).cipher)
        ratings: dict[str, list[dict[str, Any]]] = {}
        for rating in await store.read_feedback(since=since):
            ratings.setdefault(rating.request_id, []).append(
                {"score": rating.score, "label": rating.label, "comment": rating.comment, "actor": rating.actor,
                 "at": rating.at})
        count = 0
        async for rows in _pages(reader, CallQuery(since=since, until=until, limit=_PAGE), actor):
            for row in rows:
                if row["request_id"] in ratings:
                    row["feedback"] = ratings[row["request_id"]]
            write(rows)
            count += len(rows)
            progress(len(rows))
        return count
    finally:
        await store.close()


def jsonl(write: Callable[[bytes], object]) -> Callable[[list[dict[str, Any]]], object]:
    """A sink writing one JSON line per call."""
    return lambda rows: write(b"".join(orjson.dumps(row) + b"\n" for row in rows))


async def _pages(reader: CallReader, query: CallQuery, actor: str) -> AsyncIterator[list[dict[str, Any]]]:
    while True:
        rows, cursor = await reader.page(query, payloads=True, actor=actor)
        if rows:
            yield rows
        if cursor is None:
            return
        query = CallQuery(since=query.since, until=query.until, after=decode_cursor(cursor), limit=query.limit)
