"""Real stores for tests: a SQLite file, and a fresh database on the PostgreSQL server when there is one."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("MINIGATE_TEST_POSTGRES_URL")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test server (dropped afterwards); skips when none is configured."""
    if not POSTGRES_URL:
        pytest.skip("MINIGATE_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against")
    name = f"minigate_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def allow_connections(url: str, allowed: bool) -> None:
    """Open or shut a test database to clients (shutting also ends the sessions it has): a store outage."""
    name = url.rsplit("/", 1)[1]
    asyncio.run(_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
    if not allowed:
        asyncio.run(_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))


async def _admin(statement: str) -> None:
    import asyncpg  # lazily: only the PostgreSQL tests need the driver

    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'calls.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


def fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    """Read a store directly with its own driver, independent of minigate's code."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return db.execute(query).fetchall()

    import asyncpg  # lazily, like sqlite3 above: only a PostgreSQL URL needs the driver

    async def run() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await connection.fetch(query)]
        finally:
            await connection.close()

    return asyncio.run(run())
