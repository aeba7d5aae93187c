"""The embedded call-log store: one SQLite file in WAL mode, written in batches from a worker thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from minigate.logger.records import CallRecord

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    request_id    TEXT PRIMARY KEY,
    started_at    REAL NOT NULL,
    key_name      TEXT NOT NULL,
    route         TEXT NOT NULL,
    model         TEXT NOT NULL,
    tier          TEXT NOT NULL,
    task          TEXT NOT NULL,
    rule          TEXT NOT NULL,
    upstream      TEXT NOT NULL,
    status        INTEGER NOT NULL,
    latency_s     REAL NOT NULL,
    stream        INTEGER NOT NULL,
    input_tokens  INTEGER,
    output_tokens INTEGER
);
CREATE INDEX IF NOT EXISTS calls_started_at ON calls (started_at);
CREATE INDEX IF NOT EXISTS calls_route ON calls (route, started_at);
CREATE INDEX IF NOT EXISTS calls_model ON calls (model, tier);
CREATE INDEX IF NOT EXISTS calls_task ON calls (task);
CREATE INDEX IF NOT EXISTS calls_status ON calls (status);
"""

_INSERT = (
    "INSERT OR IGNORE INTO calls (request_id, started_at, key_name, route, model, tier, task, rule, upstream,"
    " status, latency_s, stream, input_tokens, output_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteStore:
    """Blocking by design: the pipeline calls it from a worker thread, never from the event loop.

    >>> store = SQLiteStore(Path("minigate.db"))  # doctest: +SKIP
    >>> store.write(records)  # one transaction, idempotent on request_id  # doctest: +SKIP
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(Path(url.removeprefix("sqlite:///")))

    def write(self, records: Sequence[CallRecord]) -> None:
        rows = [
            (r.request_id, r.started_at, r.key_name, r.route, r.model, r.tier, r.task, r.rule, r.upstream,
             r.status, r.latency_s, int(r.stream), r.input_tokens, r.output_tokens)
            for r in records
        ]
        with self._db:  # commits, or rolls back on error
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT, rows)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        self._db.close()
