"""The one interface every call-log store implements, and the choice of store by URL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from minigate.logger.records import CallRecord, Feedback
from minigate.logger.stores.query import CallQuery

__all__ = [
    "API_KEYS_SELECT",
    "FEEDBACK_INSERT",
    "FEEDBACK_SELECT",
    "KEY_USAGE",
    "CallStore",
    "SealedPayloads",
    "StoredKey",
    "StoredResponse",
    "api_key_insert_sql",
    "api_key_revoke_sql",
    "get_response_sql",
    "open_store",
    "put_response_sql",
    "reseal_sql",
    "sealed_responses_sql",
    "sealed_sql",
    "spend_sql",
]


@dataclass(frozen=True, slots=True)
class SealedPayloads:
    """A record's encrypted payloads, as key rotation reads and rewrites them."""

    request_id: str
    request_payload: bytes | None
    response_payload: bytes | None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A stored response (the Responses API's `store`) as its row holds it: sealed by the log key whose id is
    `key_id`, readable back only by the key named `key_name`.

    >>> StoredResponse("resp_1", "agents", 1700000000.0, "a1b2c3d4", b"...").key_name
    'agents'
    """

    id: str
    key_name: str
    created_at: float  # unix seconds
    key_id: str
    sealed: bytes


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An API key made by `minigate keys create`: its SHA-256 (hex), never the key.

    >>> StoredKey("ci", "9f86d0...", "agent", '{"rpm": 60}', 1700000000.0, None, None).active(1800000000.0)
    True
    """

    name: str
    digest: str
    role: str
    limits: str  # JSON of the key's limits (`auth.keys[].limits` shape)
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class CallStore(Protocol):
    """Writes are batches in one transaction, idempotent on request_id (a replayed record is not stored twice)."""

    async def write(self, records: Sequence[CallRecord]) -> None: ...

    async def read(self, query: CallQuery, *, payloads: bool) -> list[dict[str, Any]]:
        """Rows ordered by (started_at, request_id); payload columns only when asked for."""
        ...

    async def add_feedback(self, feedback: Feedback) -> None: ...

    async def read_feedback(self, since: float | None = None) -> list[Feedback]:
        """Feedback given since `since` (unix seconds), oldest first."""
        ...

    async def audit(self, actor: str, action: str, detail: str) -> None:
        """Record who read what: every read of payloads leaves a row in `audit`."""
        ...

    async def purge(self, before: float) -> int:
        """Delete calls that started before `before` (unix seconds), and the feedback given and responses
        stored before then; returns how many calls."""
        ...

    async def put_response(self, row: StoredResponse) -> None:
        """Store a response, replacing one with the same id."""
        ...

    async def get_response(self, response_id: str) -> StoredResponse | None: ...

    async def sealed_responses(self, *, not_key_id: str, after: str, limit: int) -> list[StoredResponse]:
        """Stored responses under another key than `not_key_id`, by id after `after`; rotation re-wraps them."""
        ...

    async def key_usage(self) -> dict[str, int]:
        """Records with payloads and stored responses, per log-key id."""
        ...

    async def sealed(self, *, not_key_id: str, after: str, limit: int) -> list[SealedPayloads]:
        """Records whose payloads are under another key than `not_key_id`, by request id after `after`."""
        ...

    async def reseal(self, rows: Sequence[SealedPayloads], key_id: str) -> None:
        """Replace these records' payloads (now under `key_id`) in one transaction."""
        ...

    async def spend(self, since: float) -> dict[tuple[str, str], float]:
        """What each key spent on each route (USD, the calls' cost) in calls started since `since`; shadow
        calls are the operator's, not the key's, and are left out."""
        ...

    async def add_api_key(self, key: StoredKey) -> bool:
        """Store a new key; False (and nothing changed) when an unrevoked key has that name. A revoked one's
        row is replaced."""
        ...

    async def api_keys(self) -> list[StoredKey]:
        """Every stored key, revoked and expired ones included, by name."""
        ...

    async def revoke_api_key(self, name: str, at: float) -> bool:
        """Revoke the named key; False when no unrevoked key has that name."""
        ...

    async def close(self) -> None: ...


# Key rotation's statements, shared by both dialects; `placeholder(n)` spells the n-th parameter.
KEY_USAGE = ("SELECT key_id, count(*) FROM (SELECT key_id FROM calls WHERE key_id IS NOT NULL"
             " UNION ALL SELECT key_id FROM responses) AS sealed GROUP BY key_id")
RESPONSE_COLUMNS = "id, key_name, created_at, key_id, sealed"


API_KEYS_SELECT = "SELECT name, digest, role, limits, created_at, expires_at, revoked_at FROM api_keys ORDER BY name"


def spend_sql(placeholder: Callable[[int], str]) -> str:
    return ("SELECT key_name, route, sum(cost_usd) FROM calls WHERE started_at >= " + placeholder(1)
            + " AND cost_usd IS NOT NULL AND shadow_of IS NULL GROUP BY key_name, route")


def api_key_insert_sql(placeholder: Callable[[int], str]) -> str:
    """Insert, or replace a revoked key of that name; an unrevoked one is left alone (no row changes)."""
    values = ", ".join(placeholder(n) for n in range(1, 8))
    return ("INSERT INTO api_keys (name, digest, role, limits, created_at, expires_at, revoked_at)"
            f" VALUES ({values}) ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, role = excluded.role,"
            " limits = excluded.limits, created_at = excluded.created_at, expires_at = excluded.expires_at,"
            " revoked_at = excluded.revoked_at WHERE api_keys.revoked_at IS NOT NULL")


def api_key_revoke_sql(placeholder: Callable[[int], str]) -> str:
    return f"UPDATE api_keys SET revoked_at = {placeholder(1)} WHERE name = {placeholder(2)} AND revoked_at IS NULL"


FEEDBACK_SELECT = "SELECT request_id, at, actor, score, label, comment FROM feedback WHERE at >= {} ORDER BY at, id"
FEEDBACK_INSERT = "INSERT INTO feedback (request_id, at, actor, score, label, comment) VALUES ({}, {}, {}, {}, {}, {})"


def sealed_sql(placeholder: Callable[[int], str]) -> str:
    return ("SELECT request_id, request_payload, response_payload FROM calls WHERE key_id IS NOT NULL"
            f" AND key_id <> {placeholder(1)} AND request_id > {placeholder(2)} ORDER BY request_id LIMIT {placeholder(3)}")


def reseal_sql(placeholder: Callable[[int], str]) -> str:
    return (f"UPDATE calls SET request_payload = {placeholder(1)}, response_payload = {placeholder(2)},"
            f" key_id = {placeholder(3)} WHERE request_id = {placeholder(4)}")


def put_response_sql(placeholder: Callable[[int], str]) -> str:
    values = ", ".join(placeholder(n) for n in range(1, 6))
    return (f"INSERT INTO responses ({RESPONSE_COLUMNS}) VALUES ({values}) ON CONFLICT (id) DO UPDATE SET"
            " key_name = excluded.key_name, created_at = excluded.created_at, key_id = excluded.key_id,"
            " sealed = excluded.sealed")


def get_response_sql(placeholder: Callable[[int], str]) -> str:
    return f"SELECT {RESPONSE_COLUMNS} FROM responses WHERE id = {placeholder(1)}"


def sealed_responses_sql(placeholder: Callable[[int], str]) -> str:
    return (f"SELECT {RESPONSE_COLUMNS} FROM responses WHERE key_id <> {placeholder(1)} AND id > {placeholder(2)}"
            f" ORDER BY id LIMIT {placeholder(3)}")


async def open_store(url: str, *, timeout_s: float = 5.0) -> CallStore:
    """Open (and migrate) the store a `logging.store` URL names; `timeout_s` bounds connecting and lock waits."""
    if url.startswith("sqlite:///"):
        from minigate.logger.stores.sqlite import SQLiteStore

        return await SQLiteStore.open(url, timeout_s=timeout_s)
    # Imported only when configured, so a SQLite deployment never loads the PostgreSQL driver.
    from minigate.logger.stores.postgres import PostgresStore

    return await PostgresStore.open(url, timeout_s=timeout_s)
