"""The embedded call-log store: one SQLite file in WAL mode.

sqlite3 blocks, so every call runs in a worker thread; one connection, used by one writer at a time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson

from minigate.logger.migrations import MIGRATIONS
from minigate.logger.query import CallQuery
from minigate.logger.records import CallRecord
from minigate.logger.store import KEY_USAGE, SealedPayloads, reseal_sql, sealed_sql

__all__ = ["SQLiteStore"]

_INSERT = (
    "INSERT OR IGNORE INTO calls (request_id, started_at, key_name, route, model, tier, task, rule, upstream,"
    " status, latency_s, stream, input_tokens, output_tokens, client_id, request_payload, response_payload,"
    " ttft_s, attempts, escalated, key_id, cost_usd, counterfactual_cost_usd)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)



def _qmark(n: int) -> str:
    return "?"


class SQLiteStore:
    """`sqlite:///relative.db` or `sqlite:////absolute/path.db`.

    >>> store = await SQLiteStore.open("sqlite:///minigate.db")  # doctest: +SKIP
    >>> await store.write(records)  # one transaction, idempotent on request_id  # doctest: +SKIP
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = threading.Lock()  # the writer and the spool replayer may call from two threads

    @classmethod
    async def open(cls, url: str) -> SQLiteStore:
        return cls(await anyio.to_thread.run_sync(_connect, Path(url.removeprefix("sqlite:///"))))

    async def write(self, records: Sequence[CallRecord]) -> None:
        await anyio.to_thread.run_sync(self._write, records)

    async def read(self, query: CallQuery, *, payloads: bool) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self._read, query, payloads)

    async def audit(self, actor: str, action: str, detail: str) -> None:
        await anyio.to_thread.run_sync(self._audit, actor, action, detail)

    async def purge(self, before: float) -> int:
        return await anyio.to_thread.run_sync(self._purge, before)

    async def key_usage(self) -> dict[str, int]:
        return dict(await anyio.to_thread.run_sync(self._fetch, KEY_USAGE, ()))

    async def sealed(self, *, not_key_id: str, after: str, limit: int) -> list[SealedPayloads]:
        rows = await anyio.to_thread.run_sync(self._fetch, sealed_sql(_qmark), (not_key_id, after, limit))
        return [SealedPayloads(*row) for row in rows]

    async def reseal(self, rows: Sequence[SealedPayloads], key_id: str) -> None:
        await anyio.to_thread.run_sync(self._reseal, rows, key_id)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._db.close)

    def _fetch(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _reseal(self, rows: Sequence[SealedPayloads], key_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(reseal_sql(_qmark), [(row.request_payload, row.response_payload, key_id, row.request_id) for row in rows])

    def _purge(self, before: float) -> int:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            return self._db.execute("DELETE FROM calls WHERE started_at < ?", (before,)).rowcount

    def _read(self, query: CallQuery, payloads: bool) -> list[dict[str, Any]]:
        sql, params = query.sql(_qmark, payloads=payloads)
        with self._lock:
            cursor = self._db.execute(sql, params)
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            row["stream"] = bool(row["stream"])
        return rows

    def _audit(self, actor: str, action: str, detail: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                             (time.time(), actor, action, detail))

    def _write(self, records: Sequence[CallRecord]) -> None:
        rows = [
            (r.request_id, r.started_at, r.key_name, r.route, r.model, r.tier, r.task, r.rule, r.upstream,
             r.status, r.latency_s, int(r.stream), r.input_tokens, r.output_tokens, r.client_id,
             r.request_payload, r.response_payload, r.ttft_s, _json(r.attempts), r.escalated, r.key_id,
             r.cost_usd, r.counterfactual_cost_usd)
            for r in records
        ]
        with self._lock, self._db:  # commits, or rolls back on error
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT, rows)


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    for version, step in enumerate(MIGRATIONS["sqlite"], start=1):
        if version not in applied:
            db.executescript(f"BEGIN; {step}; INSERT INTO schema_migrations VALUES ({version}, strftime('%s', 'now')); COMMIT;")
    return db
