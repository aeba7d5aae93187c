"""The call record: what the log keeps about one chat completion.

The request path fills it from values it already holds; everything that needs parsing, redaction or
encryption is done by the writer (`seal.py`), off the request path.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from minigate.serving.pricing import Rate

__all__ = ["CallRecord", "record_from_bytes", "record_to_bytes"]


@dataclass(slots=True)
class CallRecord:
    request_id: str
    started_at: float  # unix seconds
    key_name: str
    route: str
    model: str
    tier: str
    task: str
    rule: str
    upstream: str
    status: int  # what the client got
    latency_s: float
    stream: bool
    ttft_s: float | None = None  # time to the first byte of the reply relayed to the client
    attempts: list[dict[str, object]] | None = None  # each upstream call: upstream, model, status, latency_s, error
    escalated: str | None = None  # why a miniature's request went to the escalation model
    # Raw material the writer turns into payloads, off the request path (no copies: the bytes the
    # gateway already holds).
    request_body: bytes | None = None
    user: str | None = None  # the request's `user` field, only ever stored as part of client_id
    reply: bytes | None = None  # a non-streamed reply body
    chunks: list[bytes] | None = None  # a streamed reply, as relayed
    rate: Rate | None = None  # the served model's price
    counterfactual_rate: Rate | None = None  # the route's frontier model's price
    # Filled by the writer.
    client_id: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    request_payload: bytes | None = None  # redacted, then encrypted
    response_payload: bytes | None = None
    key_id: str | None = None  # the log key that wraps the payloads' data key; what rotation looks for
    cost_usd: float | None = None  # the tokens at the served model's price; None when unpriced
    counterfactual_cost_usd: float | None = None  # the same tokens at the route's frontier price


_BYTES_FIELDS = ("request_payload", "response_payload")


def record_to_bytes(record: CallRecord) -> bytes:
    """A sealed record as one spool entry (raw material is gone by then; payloads are base64)."""
    values = {name: getattr(record, name) for name in CallRecord.__slots__}  # attempts: plain JSON values
    for name in _BYTES_FIELDS:
        if values[name] is not None:
            values[name] = base64.b64encode(values[name]).decode()
    for name in ("request_body", "reply", "chunks", "user", "rate", "counterfactual_rate"):
        values.pop(name)
    return orjson.dumps(values)


def record_from_bytes(data: bytes) -> CallRecord:
    values = orjson.loads(data)
    for name in _BYTES_FIELDS:
        if values.get(name) is not None:
            values[name] = base64.b64decode(values[name])
    return CallRecord(**values)
