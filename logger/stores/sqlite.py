"""The embedded call-log store: one SQLite file in WAL mode.

sqlite3 blocks, so every call runs in a worker thread; one connection, used by one writer at a time.

The file is created private (0600; SQLite gives its -wal and -shm files the same mode). Before each
batch is written, once the write lock is held, the file's identity (device, inode) is compared with
the path's: a file deleted or replaced under a running gateway would otherwise swallow every later
record in an unlinked inode. Then the store says so, re-creates the file (with its migrations) and
writes the batch there, so no batch is written to a deleted file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from minigate.logger.records import CallRecord, Feedback, attempts_to_json
from minigate.logger.stores.base import (
    API_KEYS_SELECT,
    FEEDBACK_INSERT,
    FEEDBACK_SELECT,
    KEY_USAGE,
    SealedPayloads,
    StoredKey,
    StoredResponse,
    api_key_insert_sql,
    api_key_revoke_sql,
    get_response_sql,
    put_response_sql,
    reseal_sql,
    sealed_responses_sql,
    sealed_sql,
    spend_sql,
)
from minigate.logger.stores.migrations import MIGRATIONS
from minigate.logger.stores.query import CallQuery

__all__ = ["SQLiteStore"]

log = logging.getLogger("minigate.logger")

_INSERT = (
    "INSERT OR IGNORE INTO calls (request_id, started_at, key_name, route, model, tier, task, rule, upstream,"
    " status, latency_s, stream, input_tokens, output_tokens, client_id, request_payload, response_payload,"
    " ttft_s, attempts, escalated, key_id, cost_usd, counterfactual_cost_usd, shadow_of, verdict, candidate,"
    " wasted_input_tokens, wasted_output_tokens, wasted_cost_usd)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_FileId = tuple[int, int]  # (st_dev, st_ino): which file a path names


def _qmark(n: int) -> str:
    return "?"


class SQLiteStore:
    """`sqlite:///relative.db` or `sqlite:////absolute/path.db`.

    >>> store = await SQLiteStore.open("sqlite:///minigate.db")  # doctest: +SKIP
    >>> await store.write(records)  # one transaction, idempotent on request_id  # doctest: +SKIP
    """

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s  # waits for SQLite's lock and for our own
        self._lock = threading.Lock()  # the writer and the spool replayer may call from two threads
        self._db: sqlite3.Connection | None = None  # None after a failed re-creation: opened again on next use
        self._file: _FileId | None = None

    @classmethod
    async def open(cls, url: str, *, timeout_s: float = 5.0) -> SQLiteStore:
        store = cls(Path(url.removeprefix("sqlite:///")), timeout_s)
        await anyio.to_thread.run_sync(store._reopen)
        return store

    async def write(self, records: Sequence[CallRecord]) -> None:
        # A caller that stops waiting (the call log's store timeout) leaves the thread to finish or fail alone.
        await anyio.to_thread.run_sync(self._write, records, abandon_on_cancel=True)

    async def read(self, query: CallQuery, *, payloads: bool) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self._read, query, payloads)

    async def audit(self, actor: str, action: str, detail: str) -> None:
        await anyio.to_thread.run_sync(self._audit, actor, action, detail)

    async def add_feedback(self, feedback: Feedback) -> None:
        await anyio.to_thread.run_sync(self._insert, FEEDBACK_INSERT.format(*"??????"),
                                       (feedback.request_id, feedback.at, feedback.actor, feedback.score,
                                        feedback.label, feedback.comment))

    async def read_feedback(self, since: float | None = None) -> list[Feedback]:
        rows = await anyio.to_thread.run_sync(self._fetch, FEEDBACK_SELECT.format("?"), (since or 0.0,))
        return [Feedback(*row) for row in rows]

    async def purge(self, before: float) -> int:
        return await anyio.to_thread.run_sync(self._purge, before)

    async def put_response(self, row: StoredResponse) -> None:
        # Abandoned on cancel like `write`: the call log gives up on a stalled write and tries again later.
        await anyio.to_thread.run_sync(self._insert, put_response_sql(_qmark),
                                       (row.id, row.key_name, row.created_at, row.key_id, row.sealed),
                                       abandon_on_cancel=True)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        rows = await anyio.to_thread.run_sync(self._fetch, get_response_sql(_qmark), (response_id,))
        return StoredResponse(*rows[0]) if rows else None

    async def sealed_responses(self, *, not_key_id: str, after: str, limit: int) -> list[StoredResponse]:
        rows = await anyio.to_thread.run_sync(self._fetch, sealed_responses_sql(_qmark), (not_key_id, after, limit))
        return [StoredResponse(*row) for row in rows]

    async def key_usage(self) -> dict[str, int]:
        return dict(await anyio.to_thread.run_sync(self._fetch, KEY_USAGE, ()))

    async def sealed(self, *, not_key_id: str, after: str, limit: int) -> list[SealedPayloads]:
        rows = await anyio.to_thread.run_sync(self._fetch, sealed_sql(_qmark), (not_key_id, after, limit))
        return [SealedPayloads(*row) for row in rows]

    async def reseal(self, rows: Sequence[SealedPayloads], key_id: str) -> None:
        await anyio.to_thread.run_sync(self._reseal, rows, key_id)

    async def spend(self, since: float) -> dict[tuple[str, str], float]:
        rows = await anyio.to_thread.run_sync(self._fetch, spend_sql(_qmark), (since,))
        return {(key, route): usd for key, route, usd in rows}

    async def add_api_key(self, key: StoredKey) -> bool:
        return await anyio.to_thread.run_sync(self._change, api_key_insert_sql(_qmark), (
            key.name, key.digest, key.role, key.limits, key.created_at, key.expires_at, key.revoked_at))

    async def api_keys(self) -> list[StoredKey]:
        return [StoredKey(*row) for row in await anyio.to_thread.run_sync(self._fetch, API_KEYS_SELECT, ())]

    async def revoke_api_key(self, name: str, at: float) -> bool:
        return await anyio.to_thread.run_sync(self._change, api_key_revoke_sql(_qmark), (at, name))

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one caller at a time; a write stuck in SQLite holds up others for `timeout_s` at most."""
        if not self._lock.acquire(timeout=self.timeout_s):
            raise TimeoutError(f"call log {self.path}: an earlier write has held the database for over {self.timeout_s:g} s")
        try:
            yield self._db if self._db is not None else self._reopen()
        finally:
            self._lock.release()

    def _fetch(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._connection() as db:
            return db.execute(sql, params).fetchall()

    def _reseal(self, rows: Sequence[SealedPayloads], key_id: str) -> None:
        with self._connection() as db, db:
            db.execute("BEGIN")
            db.executemany(reseal_sql(_qmark), [(row.request_payload, row.response_payload, key_id, row.request_id) for row in rows])

    def _purge(self, before: float) -> int:
        with self._connection() as db, db:
            db.execute("BEGIN")
            db.execute("DELETE FROM feedback WHERE at < ?", (before,))
            db.execute("DELETE FROM responses WHERE created_at < ?", (before,))
            return db.execute("DELETE FROM calls WHERE started_at < ?", (before,)).rowcount

    def _read(self, query: CallQuery, payloads: bool) -> list[dict[str, Any]]:
        sql, params = query.sql(_qmark, payloads=payloads)
        with self._connection() as db:
            cursor = db.execute(sql, params)
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            row["stream"] = bool(row["stream"])
        return rows

    def _audit(self, actor: str, action: str, detail: str) -> None:
        self._insert("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                     (time.time(), actor, action, detail))

    def _insert(self, sql: str, params: tuple[object, ...]) -> None:
        self._change(sql, params)

    def _change(self, sql: str, params: tuple[object, ...]) -> bool:
        """Run one statement in its own transaction; whether it changed a row."""
        with self._connection() as db, db:
            db.execute("BEGIN")
            return db.execute(sql, params).rowcount > 0

    def _write(self, records: Sequence[CallRecord]) -> None:
        rows = [
            (r.request_id, r.started_at, r.key_name, r.route, r.model, r.tier, r.task, r.rule, r.upstream,
             r.status, r.latency_s, int(r.stream), r.input_tokens, r.output_tokens, r.client_id,
             r.request_payload, r.response_payload, r.ttft_s, attempts_to_json(r.attempts), r.escalated, r.key_id,
             r.cost_usd, r.counterfactual_cost_usd, r.shadow_of, r.verdict, r.candidate,
             r.wasted_input_tokens, r.wasted_output_tokens, r.wasted_cost_usd)
            for r in records
        ]
        with self._connection() as db:
            db = self._begin_on_the_file(db)
            with db:  # commits, or rolls back on error
                db.executemany(_INSERT, rows)

    def _begin_on_the_file(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """Begin a write transaction on the file the path names now, re-creating it if it was deleted.

        Checked with the write lock held, so no other connection can swap the file between check and write.
        """
        db.execute("BEGIN IMMEDIATE")
        if _file_id(self.path) == self._file:
            return db
        db.execute("ROLLBACK")
        log.warning("call log %s was deleted or replaced while in use; re-creating it (with its migrations)"
                    " and writing there", self.path)
        db = self._reopen()
        db.execute("BEGIN IMMEDIATE")
        return db

    def _reopen(self) -> sqlite3.Connection:
        # The old connection closes first: closing the last connection to a WAL database removes the
        # `-wal` file by name, which must not be the new database's.
        self._close()
        self._db = _connect(self.path, self.timeout_s)
        self._file = _file_id(self.path)
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()


def _file_id(path: Path) -> _FileId | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _connect(path: Path, timeout_s: float) -> sqlite3.Connection:
    _create_private(path)
    db = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
    try:
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    for version, step in enumerate(MIGRATIONS["sqlite"], start=1):
        if version not in applied:
            _apply(db, version, step)


def _apply(db: sqlite3.Connection, version: int, step: str) -> None:
    """One step in one write transaction, unless another process applied it first.

    Gateway workers (`server.workers`) open a new file at the same moment: the version row goes in
    first, under the write lock (`BEGIN IMMEDIATE` waits for it up to the busy timeout), so the
    second to come finds it taken and leaves the step, which it would fail to apply twice.
    """
    try:
        db.executescript(f"BEGIN IMMEDIATE; INSERT INTO schema_migrations VALUES ({version}, strftime('%s', 'now'));"
                         f" {step}; COMMIT;")
    except sqlite3.IntegrityError:
        db.execute("ROLLBACK")
        if db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone() is None:
            raise  # the step's own failure, not a version applied meanwhile


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only; SQLite gives -wal and -shm the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
