"""One store interface, two implementations, one suite: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from minigate.logger.records import CallRecord
from minigate.logger.stores import open_store
from minigate.logger.stores.migrations import MIGRATIONS
from tests.stores import fetch


def record(i: int, **fields: object) -> CallRecord:
    values: dict[str, object] = dict(
        request_id=f"req-{i}", started_at=time.time(), key_name="agents", route="gpt-4.1", model="gpt-4.1",
        tier="frontier", task="unknown", rule="default", upstream="openai", status=200, latency_s=0.25,
        stream=bool(i % 2), input_tokens=10 + i, output_tokens=5,
    )
    values.update(fields)
    return CallRecord(**values)  # type: ignore[arg-type]


def write(url: str, batches: list[list[CallRecord]]) -> None:
    async def run() -> None:
        store = await open_store(url)
        try:
            for batch in batches:
                await store.write(batch)
        finally:
            await store.close()

    asyncio.run(run())


def test_batches_are_stored(store_url: str) -> None:
    write(store_url, [[record(i) for i in range(100)], [record(i) for i in range(100, 150)]])
    assert fetch(store_url, "SELECT count(*), sum(input_tokens) FROM calls") == [(150, sum(10 + i for i in range(150)))]


def test_writes_are_idempotent_on_request_id(store_url: str) -> None:
    write(store_url, [[record(1), record(2)]])
    write(store_url, [[record(2, status=500), record(3)]])  # a replay of req-2 after a crash
    assert fetch(store_url, "SELECT request_id, status FROM calls ORDER BY request_id") == [
        ("req-1", 200), ("req-2", 200), ("req-3", 200)]


def test_migrations_apply_once(store_url: str) -> None:
    write(store_url, [[record(1)]])
    write(store_url, [[record(2)]])
    dialect = "sqlite" if store_url.startswith("sqlite") else "postgresql"
    expected = [(version,) for version in range(1, len(MIGRATIONS[dialect]) + 1)]
    assert fetch(store_url, "SELECT version FROM schema_migrations ORDER BY version") == expected


def test_metadata_columns_are_indexed(store_url: str) -> None:
    write(store_url, [[record(1)]])
    if store_url.startswith("sqlite"):
        names = {row[0] for row in fetch(store_url, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    else:
        names = {row[0] for row in fetch(store_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'calls'")}
    assert {"calls_started_at", "calls_route", "calls_model", "calls_task", "calls_status"} <= names


def test_purge_deletes_only_older_calls(store_url: str) -> None:
    now = time.time()
    write(store_url, [[record(1, started_at=now - 10 * 86400), record(2, started_at=now - 3600), record(3)]])

    async def purge() -> int:
        store = await open_store(store_url)
        try:
            return await store.purge(now - 86400)
        finally:
            await store.close()

    assert asyncio.run(purge()) == 1
    assert fetch(store_url, "SELECT request_id FROM calls ORDER BY request_id") == [("req-2",), ("req-3",)]


def test_shadows_and_feedback_are_kept_and_read_back_apart(store_url: str) -> None:
    from minigate.logger.records import Feedback
    from minigate.logger.stores import CallQuery

    shadow = record(2, model="mini", tier="miniature", rule="shadow", shadow_of="req-1", verdict="agree",
                    candidate="mini")

    async def run() -> tuple[list[str], list[tuple[str | None, str | None]], list[Feedback]]:
        store = await open_store(store_url)
        try:
            await store.write([record(1), shadow])
            await store.add_feedback(Feedback("req-1", 100.0, "agents", 0.0, "billing", "wrong"))
            await store.add_feedback(Feedback("req-1", 200.0, "platform", 1.0))
            calls = await store.read(CallQuery(), payloads=False)
            shadows = await store.read(CallQuery(kind="shadows"), payloads=False)
            return ([row["request_id"] for row in calls], [(row["shadow_of"], row["verdict"]) for row in shadows],
                    await store.read_feedback(since=150.0))
        finally:
            await store.close()

    calls, shadows, feedback = asyncio.run(run())
    assert calls == ["req-1"] and shadows == [("req-1", "agree")]
    assert feedback == [Feedback("req-1", 200.0, "platform", 1.0)]


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    write(f"sqlite:///{tmp_path / 'calls.db'}", [[record(1)]])
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.glob("calls.db*")}
    assert modes and set(modes.values()) == {0o600}, modes


def test_a_deleted_sqlite_file_is_recreated_before_the_next_batch(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Deleted under a running gateway, the file would take every later batch into an unlinked inode."""
    path = tmp_path / "calls.db"

    async def run() -> None:
        store = await open_store(f"sqlite:///{path}")
        try:
            await store.write([record(1)])
            for name in ("calls.db", "calls.db-wal", "calls.db-shm"):
                (tmp_path / name).unlink(missing_ok=True)
            await store.write([record(2)])
            await store.write([record(3)])
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="minigate.logger"):
        asyncio.run(run())
    assert fetch(f"sqlite:///{path}", "SELECT request_id FROM calls ORDER BY request_id") == [("req-2",), ("req-3",)]
    assert [r for r in caplog.records if "deleted or replaced" in r.getMessage()]
    dialect_versions = fetch(f"sqlite:///{path}", "SELECT count(*) FROM schema_migrations")
    assert dialect_versions == [(len(MIGRATIONS["sqlite"]),)]
