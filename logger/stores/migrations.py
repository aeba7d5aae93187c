"""Versioned schema of the call log, one list of steps per SQL dialect.

A store applies, in order and each in its own transaction, the steps whose version (position + 1)
is not yet in `schema_migrations`. Steps are never edited once released: a change is a new step.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["MIGRATIONS", "Dialect"]

Dialect = Literal["sqlite", "postgresql"]

_CALLS_INDEXES = """
CREATE INDEX IF NOT EXISTS calls_started_at ON calls (started_at);
CREATE INDEX IF NOT EXISTS calls_route ON calls (route, started_at);
CREATE INDEX IF NOT EXISTS calls_model ON calls (model, tier);
CREATE INDEX IF NOT EXISTS calls_task ON calls (task);
CREATE INDEX IF NOT EXISTS calls_status ON calls (status);
"""

# Which log key wraps a record's payloads (`minigate keys rotate` finds what is left to re-wrap), and what
# the call cost against what it would have cost at the route's frontier price.
_KEY_ID_AND_COST = """
ALTER TABLE calls ADD COLUMN key_id TEXT;
CREATE INDEX IF NOT EXISTS calls_key_id ON calls (key_id);
ALTER TABLE calls ADD COLUMN cost_usd DOUBLE PRECISION;
ALTER TABLE calls ADD COLUMN counterfactual_cost_usd DOUBLE PRECISION;
"""

# Shadow calls (S6): a shadow is a call record of its own, linked to the call it shadowed, with the verdict of
# comparing the two replies and the miniature that verdict judges. Feedback is people's (or agents') own verdict
# on a call.
_SHADOWS = """
ALTER TABLE calls ADD COLUMN shadow_of TEXT;
ALTER TABLE calls ADD COLUMN verdict TEXT;
ALTER TABLE calls ADD COLUMN candidate TEXT;
CREATE INDEX IF NOT EXISTS calls_shadow_of ON calls (shadow_of);
CREATE INDEX IF NOT EXISTS calls_verdicts ON calls (task, candidate, started_at);
"""

# An escalated call's cost includes the miniature's reply it discarded: its tokens and what they cost
# (part of cost_usd), so savings are not flattered by the escalations a miniature causes.
_WASTE = """
ALTER TABLE calls ADD COLUMN wasted_input_tokens INTEGER;
ALTER TABLE calls ADD COLUMN wasted_output_tokens INTEGER;
ALTER TABLE calls ADD COLUMN wasted_cost_usd DOUBLE PRECISION;
"""


def _feedback(serial: str, real: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS feedback (
    id         {serial} PRIMARY KEY,
    request_id TEXT NOT NULL,
    at         {real} NOT NULL,
    actor      TEXT NOT NULL,
    score      {real} NOT NULL,
    label      TEXT,
    comment    TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
"""


# Stored responses (the Responses API's `store`): a conversation's state, kept for the key that made it and
# sealed under the log key like call payloads (`key_id` says which, for rotation); purged with the calls.
def _responses(real: str, blob: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS responses (
    id         TEXT PRIMARY KEY,
    key_name   TEXT NOT NULL,
    created_at {real} NOT NULL,
    key_id     TEXT NOT NULL,
    sealed     {blob} NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
CREATE INDEX IF NOT EXISTS responses_key_id ON responses (key_id);
"""


# API keys made by `minigate keys create` (the config's keys are not stored): the key's SHA-256 only, its role,
# limits (JSON) and expiry; a revoked key keeps its row, so a revocation is told apart from a typo.
def _api_keys(real: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS api_keys (
    name       TEXT PRIMARY KEY,
    digest     TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    limits     TEXT NOT NULL,
    created_at {real} NOT NULL,
    expires_at {real},
    revoked_at {real}
);
CREATE INDEX IF NOT EXISTS calls_key_spend ON calls (key_name, started_at);
"""


MIGRATIONS: dict[Dialect, list[str]] = {
    "sqlite": [
        """
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
        """
        + _CALLS_INDEXES,
        """
        ALTER TABLE calls ADD COLUMN client_id TEXT;
        ALTER TABLE calls ADD COLUMN request_payload BLOB;
        ALTER TABLE calls ADD COLUMN response_payload BLOB;
        """,
        """
        CREATE TABLE IF NOT EXISTS audit (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            at       REAL NOT NULL,
            actor    TEXT NOT NULL,
            action   TEXT NOT NULL,
            detail   TEXT NOT NULL
        );
        """,
        """
        ALTER TABLE calls ADD COLUMN ttft_s REAL;
        ALTER TABLE calls ADD COLUMN attempts TEXT;
        ALTER TABLE calls ADD COLUMN escalated TEXT;
        """,
        _KEY_ID_AND_COST,
        _SHADOWS + _feedback("INTEGER", "REAL"),
        _WASTE,
        _responses("REAL", "BLOB"),
        _api_keys("REAL"),
    ],
    "postgresql": [
        """
        CREATE TABLE IF NOT EXISTS calls (
            request_id    TEXT PRIMARY KEY,
            started_at    DOUBLE PRECISION NOT NULL,
            key_name      TEXT NOT NULL,
            route         TEXT NOT NULL,
            model         TEXT NOT NULL,
            tier          TEXT NOT NULL,
            task          TEXT NOT NULL,
            rule          TEXT NOT NULL,
            upstream      TEXT NOT NULL,
            status        INTEGER NOT NULL,
            latency_s     DOUBLE PRECISION NOT NULL,
            stream        BOOLEAN NOT NULL,
            input_tokens  INTEGER,
            output_tokens INTEGER
        );
        """
        + _CALLS_INDEXES,
        """
        ALTER TABLE calls ADD COLUMN client_id TEXT;
        ALTER TABLE calls ADD COLUMN request_payload BYTEA;
        ALTER TABLE calls ADD COLUMN response_payload BYTEA;
        """,
        """
        CREATE TABLE IF NOT EXISTS audit (
            id       BIGSERIAL PRIMARY KEY,
            at       DOUBLE PRECISION NOT NULL,
            actor    TEXT NOT NULL,
            action   TEXT NOT NULL,
            detail   TEXT NOT NULL
        );
        """,
        """
        ALTER TABLE calls ADD COLUMN ttft_s DOUBLE PRECISION;
        ALTER TABLE calls ADD COLUMN attempts JSONB;
        ALTER TABLE calls ADD COLUMN escalated TEXT;
        """,
        _KEY_ID_AND_COST,
        _SHADOWS + _feedback("BIGSERIAL", "DOUBLE PRECISION"),
        _WASTE,
        _responses("DOUBLE PRECISION", "BYTEA"),
        _api_keys("DOUBLE PRECISION"),
    ],
}
