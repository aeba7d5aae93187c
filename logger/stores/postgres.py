"""The call log in PostgreSQL: an asyncpg pool, versioned migrations at start-up, batches written by COPY.

A batch is COPYed (binary) into a per-connection temporary table and moved into `calls` by one
`INSERT ... SELECT ... ON CONFLICT DO NOTHING`: idempotent on request id like a plain INSERT, at a
fraction of the server and client CPU of one INSERT per row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg

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

__all__ = ["PostgresStore"]

_COLUMNS = (
    "request_id", "started_at", "key_name", "route", "model", "tier", "task", "rule", "upstream", "status",
    "latency_s", "stream", "input_tokens", "output_tokens", "client_id", "request_payload", "response_payload",
    "ttft_s", "attempts", "escalated", "key_id", "cost_usd", "counterfactual_cost_usd", "shadow_of", "verdict",
    "candidate", "wasted_input_tokens", "wasted_output_tokens", "wasted_cost_usd",
)
_STAGE = "calls_incoming"
_CREATE_STAGE = f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (LIKE calls) ON COMMIT DELETE ROWS"
_MOVE = (f"INSERT INTO calls ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM {_STAGE}"
         " ON CONFLICT (request_id) DO NOTHING")
# Serialises concurrent migrators (several gateway replicas starting at once).
_MIGRATION_LOCK = 0x6D696E6967617465



def _dollar(n: int) -> str:
    return f"${n}"


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return bytes(value) if isinstance(value, memoryview) else value


def _stored_response(row: asyncpg.Record) -> StoredResponse:
    return StoredResponse(row[0], row[1], row[2], row[3], bytes(row[4]))


class PostgresStore:
    """`postgresql://user@host:5432/db`.

    >>> store = await PostgresStore.open("postgresql://postgres@127.0.0.1/test")  # doctest: +SKIP
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, max_connections: int = 4, timeout_s: float = 60.0) -> PostgresStore:
        """Connect (each connection given `timeout_s`), migrate, and open the pool."""
        connection = await asyncpg.connect(url, timeout=timeout_s)
        try:
            await migrate(connection)
        finally:
            await connection.close()
        # Migrated first: each pooled connection's staging table is made `LIKE calls` as it opens.
        return cls(await asyncpg.create_pool(url, min_size=1, max_size=max_connections, init=_create_stage,
                                             timeout=timeout_s))

    async def write(self, records: Sequence[CallRecord]) -> None:
        rows = [
            (r.request_id, r.started_at, r.key_name, r.route, r.model, r.tier, r.task, r.rule, r.upstream,
             r.status, r.latency_s, r.stream, r.input_tokens, r.output_tokens, r.client_id,
             r.request_payload, r.response_payload, r.ttft_s,
             attempts_to_json(r.attempts), r.escalated, r.key_id,
             r.cost_usd, r.counterfactual_cost_usd, r.shadow_of, r.verdict, r.candidate,
             r.wasted_input_tokens, r.wasted_output_tokens, r.wasted_cost_usd)
            for r in records
        ]
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.copy_records_to_table(_STAGE, records=rows, columns=_COLUMNS)
            await connection.execute(_MOVE)

    async def read(self, query: CallQuery, *, payloads: bool) -> list[dict[str, Any]]:
        sql, params = query.sql(_dollar, payloads=payloads)
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(sql, *params)
        return [{key: bytes(value) if isinstance(value, memoryview) else value for key, value in row.items()}
                for row in rows]

    async def audit(self, actor: str, action: str, detail: str) -> None:
        async with self._pool.acquire() as connection:
            await connection.execute("INSERT INTO audit (at, actor, action, detail) VALUES ($1, $2, $3, $4)",
                                     time.time(), actor, action, detail)

    async def add_feedback(self, feedback: Feedback) -> None:
        async with self._pool.acquire() as connection:
            await connection.execute(FEEDBACK_INSERT.format(*(f"${n}" for n in range(1, 7))), feedback.request_id,
                                     feedback.at, feedback.actor, feedback.score, feedback.label, feedback.comment)

    async def read_feedback(self, since: float | None = None) -> list[Feedback]:
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(FEEDBACK_SELECT.format("$1"), since or 0.0)
        return [Feedback(*row) for row in rows]

    async def purge(self, before: float) -> int:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("DELETE FROM feedback WHERE at < $1", before)
            await connection.execute("DELETE FROM responses WHERE created_at < $1", before)
            status = await connection.execute("DELETE FROM calls WHERE started_at < $1", before)
        return int(status.split()[-1])

    async def put_response(self, row: StoredResponse) -> None:
        async with self._pool.acquire() as connection:
            await connection.execute(put_response_sql(_dollar), row.id, row.key_name, row.created_at, row.key_id,
                                     row.sealed)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow(get_response_sql(_dollar), response_id)
        return None if row is None else _stored_response(row)

    async def sealed_responses(self, *, not_key_id: str, after: str, limit: int) -> list[StoredResponse]:
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(sealed_responses_sql(_dollar), not_key_id, after, limit)
        return [_stored_response(row) for row in rows]

    async def key_usage(self) -> dict[str, int]:
        async with self._pool.acquire() as connection:
            return {row[0]: row[1] for row in await connection.fetch(KEY_USAGE)}

    async def sealed(self, *, not_key_id: str, after: str, limit: int) -> list[SealedPayloads]:
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(sealed_sql(_dollar), not_key_id, after, limit)
        return [SealedPayloads(row[0], _bytes(row[1]), _bytes(row[2])) for row in rows]

    async def reseal(self, rows: Sequence[SealedPayloads], key_id: str) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.executemany(reseal_sql(_dollar), [
                (row.request_payload, row.response_payload, key_id, row.request_id) for row in rows])

    async def spend(self, since: float) -> dict[tuple[str, str], float]:
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(spend_sql(_dollar), since)
        return {(row[0], row[1]): row[2] for row in rows}

    async def add_api_key(self, key: StoredKey) -> bool:
        async with self._pool.acquire() as connection:
            status: str = await connection.execute(api_key_insert_sql(_dollar), key.name, key.digest, key.role,
                                                   key.limits, key.created_at, key.expires_at, key.revoked_at)
        return status.split()[-1] != "0"

    async def api_keys(self) -> list[StoredKey]:
        async with self._pool.acquire() as connection:
            return [StoredKey(*row) for row in await connection.fetch(API_KEYS_SELECT)]

    async def revoke_api_key(self, name: str, at: float) -> bool:
        async with self._pool.acquire() as connection:
            status: str = await connection.execute(api_key_revoke_sql(_dollar), at, name)
        return status.split()[-1] != "0"

    async def close(self) -> None:
        await self._pool.close()


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply the steps not yet applied; returns their versions."""
    done: list[int] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        applied = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for version, step in enumerate(MIGRATIONS["postgresql"], start=1):
            if version not in applied:
                await connection.execute(step)
                await connection.execute("INSERT INTO schema_migrations VALUES ($1, now())", version)
                done.append(version)
    return done


async def _create_stage(connection: asyncpg.Connection) -> None:
    await connection.execute(_CREATE_STAGE)
