"""Stored responses (the Responses API's `store`) in the call-log store: sealed, for the key that made them."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from prometheus_client import CollectorRegistry

from minigate.errors import ServiceUnavailable
from minigate.logger.crypto import PayloadCipher, generate_key, key_id
from minigate.logger.pipeline import CallLog
from minigate.logger.responses import ResponseKeeper
from minigate.logger.seal import Sealer
from minigate.logger.settings import LoggingSection
from minigate.logger.stores import CallStore, StoredResponse, open_store
from minigate.logger.stores.migrations import MIGRATIONS
from tests.stores import allow_connections, fetch
from tests.support.waiting import eventually_async

T = TypeVar("T")

DOCUMENT = orjson.dumps({"input": [{"role": "user", "content": "my card is 4111 1111 1111 1111"}],
                         "response": {"id": "resp_1", "output": [{"type": "message", "content": "noted"}]}})


class Log:
    """A real CallLog over a real store, started and stopped like the gateway's."""

    def __init__(self, store_url: str, tmp_path: Path, key: str, **settings: Any) -> None:
        self.section = LoggingSection(store=store_url, encryption_key=key, spool=tmp_path / "spool", seal_processes=0,
                                      flush_interval_s=0.05, replay_interval_s=0.2, **settings)
        self.registry = CollectorRegistry()
        self.calls = CallLog(self.section, self.registry, Sealer.from_settings(self.section))

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0

    async def __aenter__(self) -> CallLog:
        await self.calls.start()
        return self.calls

    async def __aexit__(self, *exc: object) -> None:
        await self.calls.stop()


def in_thread(call: Callable[..., T], *args: Any) -> Awaitable[T]:
    """The tests' store helpers run their own event loop: call them beside this one."""
    return asyncio.to_thread(call, *args)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


def test_a_kept_response_is_recalled_at_once_and_after_a_restart(store_url: str, tmp_path: Path) -> None:
    key = generate_key()

    async def first_run() -> None:
        async with Log(store_url, tmp_path, key) as calls:
            calls.keep_response("resp_1", "agents", DOCUMENT)
            assert await calls.recall_response("resp_1", "agents") == DOCUMENT  # before the write lands
            assert await calls.recall_response("resp_1", "platform") is None
            assert await calls.recall_response("resp_2", "agents") is None

    async def second_run() -> None:
        async with Log(store_url, tmp_path, key) as calls:  # memory is empty: the store answers
            assert await calls.recall_response("resp_1", "agents") == DOCUMENT
            assert await calls.recall_response("resp_1", "platform") is None
            assert await calls.recall_response("resp_2", "agents") is None

    asyncio.run(first_run())
    asyncio.run(second_run())


def test_the_stored_row_is_sealed_with_the_log_key(store_url: str, tmp_path: Path) -> None:
    key = generate_key()

    async def run() -> None:
        async with Log(store_url, tmp_path, key) as calls:
            calls.keep_response("resp_1", "agents", DOCUMENT)

    asyncio.run(run())
    [(rid, key_name, created_at, kid, sealed)] = fetch(store_url, "SELECT id, key_name, created_at, key_id, sealed"
                                                                  " FROM responses")
    sealed = bytes(sealed)
    assert (rid, key_name, kid) == ("resp_1", "agents", key_id(key))
    assert abs(created_at - time.time()) < 60
    assert b"4111" not in sealed and b"noted" not in sealed and len(sealed) > len(DOCUMENT)
    # The call payloads' cipher, bound to the response id and the key name.
    assert PayloadCipher(key).decrypt(sealed, aad=b"resp_1\x00agents") == DOCUMENT


def test_a_row_moved_to_another_key_name_does_not_open(store_url: str, tmp_path: Path) -> None:
    """Someone who can write the database but lacks the log key can't hand a response to another key."""
    key = generate_key()

    async def keep() -> None:
        async with Log(store_url, tmp_path, key) as calls:
            calls.keep_response("resp_1", "agents", DOCUMENT)

    async def recall() -> tuple[bytes | None, bytes | None]:
        async with Log(store_url, tmp_path, key) as calls:
            return await calls.recall_response("resp_1", "intruder"), await calls.recall_response("resp_1", "agents")

    asyncio.run(keep())
    execute(store_url, "UPDATE responses SET key_name = 'intruder'")
    assert asyncio.run(recall()) == (None, None)


def test_put_replaces_and_purge_removes_responses_stored_before_then(store_url: str) -> None:
    now = time.time()

    async def run() -> tuple[StoredResponse | None, StoredResponse | None]:
        store = await open_store(store_url)
        try:
            await store.put_response(StoredResponse("resp_old", "agents", now - 10 * 86400, "k1", b"old"))
            await store.put_response(StoredResponse("resp_new", "platform", now - 7200, "k0", b"first"))
            await store.put_response(StoredResponse("resp_new", "agents", now - 3600, "k1", b"new"))
            await store.purge(now - 86400)
            return await store.get_response("resp_old"), await store.get_response("resp_new")
        finally:
            await store.close()

    assert asyncio.run(run()) == (None, StoredResponse("resp_new", "agents", now - 3600, "k1", b"new"))


def test_rotation_rewraps_stored_responses(store_url: str, tmp_path: Path) -> None:
    from minigate.logger.rotation import rotate_store

    old, new = generate_key(), generate_key()

    async def keep() -> None:
        async with Log(store_url, tmp_path, old) as calls:
            calls.keep_response("resp_1", "agents", DOCUMENT)

    async def recall() -> bytes | None:
        async with Log(store_url, tmp_path, new) as calls:  # the old key is gone from the config
            return await calls.recall_response("resp_1", "agents")

    asyncio.run(keep())
    rotation = asyncio.run(rotate_store(store_url, PayloadCipher(new, [old])))
    assert rotation.rewrapped == 1 and rotation.usage == {key_id(new): 1}
    assert fetch(store_url, "SELECT count(*) FROM responses") == [(1,)]
    assert asyncio.run(recall()) == DOCUMENT


def test_the_migration_upgrades_an_older_database(store_url: str) -> None:
    dialect = "sqlite" if store_url.startswith("sqlite") else "postgresql"
    steps = MIGRATIONS[dialect]
    migrate_to(store_url, len(steps) - 1)  # the schema before stored responses, with a call in it
    execute(store_url, "INSERT INTO calls (request_id, started_at, key_name, route, model, tier, task, rule,"
                       " upstream, status, latency_s, stream) VALUES ('req-1', 1.0, 'agents', 'r', 'm', 'frontier',"
                       " 'unknown', 'default', 'u', 200, 0.1, false)")

    async def run() -> StoredResponse | None:
        store = await open_store(store_url)
        try:
            await store.put_response(StoredResponse("resp_1", "agents", 2.0, "k1", b"sealed"))
            return await store.get_response("resp_1")
        finally:
            await store.close()

    assert asyncio.run(run()) == StoredResponse("resp_1", "agents", 2.0, "k1", b"sealed")
    assert fetch(store_url, "SELECT version FROM schema_migrations ORDER BY version") == [
        (version,) for version in range(1, len(steps) + 1)]
    assert fetch(store_url, "SELECT request_id FROM calls") == [("req-1",)]


def test_a_store_outage_keeps_responses_in_memory_until_it_ends(store_url: str, tmp_path: Path) -> None:
    key = generate_key()
    log = Log(store_url, tmp_path, key, store_timeout_s=0.5)

    async def run() -> None:
        async with log as calls:
            async with outage(store_url):
                calls.keep_response("resp_1", "agents", DOCUMENT)
                await eventually_async(lambda: log.metric("minigate_log_response_write_failures_total") > 0,
                                       what="a write failed")
                assert await calls.recall_response("resp_1", "agents") == DOCUMENT  # from memory
                assert await calls.recall_response("resp_1", "platform") is None
            await until(lambda: in_thread(stored, store_url), "the write landed once the store was back")

    asyncio.run(run())
    assert log.metric("minigate_log_responses_lost_total") == 0


def test_without_a_store_a_response_is_recalled_from_memory_and_a_missing_one_is_unavailable(
        tmp_path: Path) -> None:
    log = Log(f"sqlite:///{tmp_path / 'no such folder' / 'calls.db'}", tmp_path, generate_key(),
              store_timeout_s=0.5, shutdown_timeout_s=0.2)

    async def run() -> None:
        async with log as calls:
            calls.keep_response("resp_1", "agents", DOCUMENT)
            assert await calls.recall_response("resp_1", "agents") == DOCUMENT
            assert await calls.recall_response("resp_1", "platform") is None
            with pytest.raises(ServiceUnavailable):  # not "no such response": it may exist in the store
                await calls.recall_response("resp_2", "agents")

    asyncio.run(run())
    assert log.metric("minigate_log_responses_lost_total") == 1  # the store never came back before shutdown


def test_with_logging_disabled_responses_live_in_memory_only(tmp_path: Path) -> None:
    log = Log(f"sqlite:///{tmp_path / 'calls.db'}", tmp_path, generate_key(), enabled=False)

    async def run() -> None:
        async with log as calls:
            calls.keep_response("resp_1", "agents", DOCUMENT)
            assert await calls.recall_response("resp_1", "agents") == DOCUMENT
            assert await calls.recall_response("resp_2", "agents") is None

    asyncio.run(run())
    assert not (tmp_path / "calls.db").exists()


def test_memory_evicts_stored_responses_first_and_counts_unstored_ones_lost(tmp_path: Path) -> None:
    cipher = PayloadCipher(generate_key())

    async def run() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'calls.db'}")
        try:
            await evicts_stored_first(cipher, store)
            await loses_unstored_when_full(cipher)
        finally:
            await store.close()

    asyncio.run(run())


async def evicts_stored_first(cipher: PayloadCipher, store: CallStore) -> None:
    registry = CollectorRegistry()
    keeper = ResponseKeeper(cipher, lambda: store, registry, timeout_s=5.0, max_entries=2)
    keeper.keep("resp_a", "agents", b"a")
    keeper.keep("resp_b", "agents", b"b")
    await keeper.flush(asyncio.get_running_loop().time() + 5)
    keeper.keep("resp_c", "agents", b"c")  # resp_a leaves memory, safe in the store
    assert [await keeper.recall(rid, "agents") for rid in ("resp_a", "resp_b", "resp_c")] == [b"a", b"b", b"c"]
    assert registry.get_sample_value("minigate_log_responses_lost_total") == 0


async def loses_unstored_when_full(cipher: PayloadCipher) -> None:
    registry = CollectorRegistry()
    keeper = ResponseKeeper(cipher, lambda: None, registry, timeout_s=5.0, max_entries=2, max_bytes=10)
    for name in "xyz":
        keeper.keep(f"resp_{name}", "agents", name.encode())
    keeper.keep("resp_big", "agents", b"0123456789!")  # over the whole memory budget: never kept
    assert registry.get_sample_value("minigate_log_responses_lost_total") == 2
    assert [await keeper.recall(rid, "agents") for rid in ("resp_y", "resp_z")] == [b"y", b"z"]


# -- helpers --------------------------------------------------------------------------------------------


def stored(url: str) -> bool:
    return fetch(url, "SELECT count(*) FROM responses") == [(1,)]


@asynccontextmanager
async def outage(url: str) -> AsyncIterator[None]:
    """The store refuses writes: another process holds the SQLite file, or PostgreSQL shuts its doors."""
    if url.startswith("sqlite:///"):
        blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    await in_thread(allow_connections, url, False)
    try:
        yield
    finally:
        await in_thread(allow_connections, url, True)


def execute(url: str, *statements: str) -> None:
    """Change a store behind minigate's back, with its own driver."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            for statement in statements:
                db.executescript(statement)
        return

    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def migrate_to(url: str, version: int) -> None:
    """The schema as a release that knew only the first `version` steps left it."""
    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    applied_at = "0" if dialect == "sqlite" else "now()"
    execute(url, f"CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at"
                 f" {'REAL' if dialect == 'sqlite' else 'TIMESTAMPTZ'} NOT NULL)",
            *(step + f"; INSERT INTO schema_migrations VALUES ({n}, {applied_at})"
              for n, step in enumerate(MIGRATIONS[dialect][:version], start=1)))
