"""Reading the call log back: one query shape, rendered for each store's SQL dialect.

Pages are keyed by `(started_at, request_id)` rather than offsets, so a page stays correct while new
calls are being written and deep pages cost no more than the first.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = ["METADATA_COLUMNS", "PAYLOAD_COLUMNS", "CallQuery", "Kind", "decode_cursor", "encode_cursor", "parse_time"]

METADATA_COLUMNS = (
    "request_id", "started_at", "key_name", "client_id", "route", "model", "tier", "task", "rule", "upstream",
    "status", "latency_s", "ttft_s", "stream", "input_tokens", "output_tokens", "attempts", "escalated",
    "cost_usd", "counterfactual_cost_usd", "shadow_of", "verdict", "candidate",
    "wasted_input_tokens", "wasted_output_tokens", "wasted_cost_usd",
)
PAYLOAD_COLUMNS = ("request_payload", "response_payload")

# Clients' calls, the shadow calls minigate made to compare models (S6), or both. Reports, datasets and
# discovery read clients' calls: a shadow is minigate's own traffic.
Kind = Literal["calls", "shadows", "all"]
_KIND_CONDITIONS = {"calls": "shadow_of IS NULL", "shadows": "shadow_of IS NOT NULL"}


@dataclass(frozen=True)
class CallQuery:
    """Filters over the indexed metadata columns; all optional."""

    since: float | None = None
    until: float | None = None
    route: str | None = None
    task: str | None = None
    model: str | None = None
    tier: str | None = None
    status: int | None = None
    request_id: str | None = None
    kind: Kind = "calls"
    after: tuple[float, str] | None = None
    limit: int = 100

    def sql(self, placeholder: Callable[[int], str], *, payloads: bool) -> tuple[str, list[Any]]:
        """`placeholder(n)` renders the n-th parameter (1-based): `?` for SQLite, `$n` for PostgreSQL."""
        conditions: list[str] = []
        params: list[Any] = []

        def add(condition: str, *values: Any) -> None:
            marks = [placeholder(len(params) + i + 1) for i in range(len(values))]
            conditions.append(condition.format(*marks))
            params.extend(values)

        if self.since is not None:
            add("started_at >= {}", self.since)
        if self.until is not None:
            add("started_at < {}", self.until)
        for column in ("route", "task", "model", "tier", "status", "request_id"):
            if getattr(self, column) is not None:
                add(f"{column} = {{}}", getattr(self, column))
        if self.kind in _KIND_CONDITIONS:
            conditions.append(_KIND_CONDITIONS[self.kind])
        if self.after is not None:
            add("(started_at > {} OR (started_at = {} AND request_id > {}))", self.after[0], self.after[0], self.after[1])
        columns = METADATA_COLUMNS + (PAYLOAD_COLUMNS if payloads else ())
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        limit = placeholder(len(params) + 1)
        params.append(self.limit)
        return f"SELECT {', '.join(columns)} FROM calls{where} ORDER BY started_at, request_id LIMIT {limit}", params


def encode_cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['started_at']!r}|{row['request_id']}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Raises ValueError on a cursor this module did not make."""
    started_at, _, request_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    if not request_id:
        raise ValueError("not a minigate cursor")
    return float(started_at), request_id


def parse_time(value: str) -> float:
    """Unix seconds or ISO 8601, as people and scripts write times; ValueError says which forms work."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise ValueError(f"{value!r}: give unix seconds or an ISO 8601 time (2026-11-23T10:00:00+00:00)") from exc
