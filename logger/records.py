"""The call record: what the log keeps about one chat completion.

The request path fills it from values it already holds; everything that needs parsing, redaction or
encryption is done by the writer (`seal.py`), off the request path.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from minigate.pricing import Rate

__all__ = [
    "AttemptRecord",
    "CallRecord",
    "Feedback",
    "attempts_to_json",
    "record_from_bytes",
    "record_to_bytes",
    "unsealed_record_from_bytes",
    "unsealed_record_to_bytes",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One upstream call behind a request: a retry, an escalation and a fallback are each their own.

    >>> AttemptRecord(upstream="openai", model="gpt-4.1", status=200, latency_s=0.42, error=None).to_json()
    {'upstream': 'openai', 'model': 'gpt-4.1', 'status': 200, 'latency_s': 0.42, 'error': None}
    """

    upstream: str
    model: str  # the upstream's model id
    status: int | None  # None when no reply came (`error` says why)
    latency_s: float  # to the reply's headers
    error: str | None
    base_url: str | None = None  # which replica, when the upstream retried across several

    def to_json(self) -> dict[str, object]:
        """The stored shape: the keys the call log has always had, `base_url` only when known."""
        value: dict[str, object] = {"upstream": self.upstream, "model": self.model}
        if self.base_url is not None:
            value["base_url"] = self.base_url
        value.update(status=self.status, latency_s=self.latency_s, error=self.error)
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> AttemptRecord:
        return cls(upstream=value["upstream"], model=value["model"], status=value.get("status"),
                   latency_s=value["latency_s"], error=value.get("error"), base_url=value.get("base_url"))


@dataclass(slots=True, kw_only=True)
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
    attempts: list[AttemptRecord] | None = None  # each upstream call, in order
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
    # A shadow call (S6) is a record of its own: the call it shadowed, and how its reply compared.
    shadow_of: str | None = None
    verdict: str | None = None  # router.agreement's Verdict
    candidate: str | None = None  # the miniature the verdict judges: the shadow's model, or the shadowed call's
    # Savings you can trust. Raw material, as above: a miniature-served call's counterfactual is priced on
    # the output the frontier would have written (its task's median frontier output; None: the call's own).
    counterfactual_output_tokens: int | None = None
    # An escalated call also paid for the miniature's reply it threw away: its tokens (from its usage, or
    # estimated from what was held; input None: the same prompt as the served call's) at `wasted_rate`.
    wasted_rate: Rate | None = None
    wasted_input_tokens: int | None = None
    wasted_output_tokens: int | None = None
    wasted_cost_usd: float | None = None  # filled by the writer; included in cost_usd


@dataclass(frozen=True, slots=True)
class Feedback:
    """Someone's verdict on one call: a score in [0, 1], and optionally the right label and a comment.

    >>> Feedback("9f2c", at=1.7e9, actor="agents", score=0.0, label="card_arrived").score
    0.0
    """

    request_id: str
    at: float  # unix seconds
    actor: str  # the key name that gave it
    score: float
    label: str | None = None
    comment: str | None = None


def attempts_to_json(attempts: Sequence[AttemptRecord] | None) -> str | None:
    """The attempts as the stores keep them: a JSON array of objects, or NULL."""
    return None if attempts is None else orjson.dumps([attempt.to_json() for attempt in attempts]).decode()


_BYTES_FIELDS = ("request_payload", "response_payload")
# What the writer turns into stored fields and drops: never in a spool entry.
_RAW_FIELDS = ("request_body", "reply", "chunks", "user", "rate", "counterfactual_rate",
               "counterfactual_output_tokens", "wasted_rate")


def record_to_bytes(record: CallRecord) -> bytes:
    """A sealed record as one spool entry (raw material is gone by then; payloads are base64)."""
    values = {name: getattr(record, name) for name in CallRecord.__slots__}
    for name in _BYTES_FIELDS:
        if values[name] is not None:
            values[name] = base64.b64encode(values[name]).decode()
    if record.attempts is not None:  # as the stores keep them, so an old gateway's spool still replays
        values["attempts"] = [attempt.to_json() for attempt in record.attempts]
    for name in _RAW_FIELDS:
        values.pop(name)
    return orjson.dumps(values)


def record_from_bytes(data: bytes) -> CallRecord:
    values = orjson.loads(data)
    for name in _BYTES_FIELDS:
        if values.get(name) is not None:
            values[name] = base64.b64decode(values[name])
    if values.get("attempts") is not None:
        values["attempts"] = [AttemptRecord.from_json(value) for value in values["attempts"]]
    return CallRecord(**values)


# An unsealed record (the journal's): [4-byte big-endian head length][orjson head][the bytes it names].
# Raw bytes follow the head as they are, not base64'd into it: a request's body and reply are most of a
# record, and this encoding runs on the request path.
_HEAD = struct.Struct(">I")
_BLOB, _CHUNKS, _RATE, _ATTEMPTS = range(4)
_SPECIAL = {"request_body": _BLOB, "reply": _BLOB, "request_payload": _BLOB, "response_payload": _BLOB,
            "chunks": _CHUNKS, "rate": _RATE, "counterfactual_rate": _RATE, "wasted_rate": _RATE,
            "attempts": _ATTEMPTS}


def unsealed_record_to_bytes(record: CallRecord, *, omit: Sequence[str] = ()) -> bytes:
    """Any record, raw material included, as one journal entry; fields in `omit`, and None ones, are left out.

    >>> data = unsealed_record_to_bytes(CallRecord(request_id="r1", started_at=0.0, key_name="k", route="r",
    ...     model="m", tier="frontier", task="t", rule="default", upstream="u", status=200, latency_s=0.1,
    ...     stream=True, chunks=[b"data: {}\\n\\n"]))
    >>> unsealed_record_from_bytes(data).chunks
    [b'data: {}\\n\\n']
    """
    head: dict[str, object] = {}
    blobs: list[bytes] = []
    for name in CallRecord.__slots__:
        value = getattr(record, name)
        if value is None or name in omit:
            continue
        kind = _SPECIAL.get(name)
        if kind is None:
            head[name] = value
        elif kind == _BLOB:
            head[name] = len(value)
            blobs.append(value)
        elif kind == _CHUNKS:
            head[name] = [len(chunk) for chunk in value]
            blobs += value
        elif kind == _RATE:
            head[name] = [value.input_per_mtok, value.output_per_mtok]
        else:
            head[name] = [attempt.to_json() for attempt in value]
    encoded = orjson.dumps(head)
    return b"".join([_HEAD.pack(len(encoded)), encoded, *blobs])


def unsealed_record_from_bytes(data: bytes) -> CallRecord:
    """The record `unsealed_record_to_bytes` encoded; raises ValueError (or orjson's) when `data` is not one."""
    (size,) = _HEAD.unpack_from(data)
    values: dict[str, Any] = orjson.loads(data[_HEAD.size : _HEAD.size + size])
    offset = _HEAD.size + size
    for name, value in values.items():
        kind = _SPECIAL.get(name)
        if kind == _BLOB:
            values[name], offset = data[offset : offset + value], offset + value
        elif kind == _CHUNKS:
            chunks = []
            for length in value:
                chunks.append(data[offset : offset + length])
                offset += length
            values[name] = chunks
        elif kind == _RATE:
            values[name] = Rate(input_per_mtok=value[0], output_per_mtok=value[1])
        elif kind == _ATTEMPTS:
            values[name] = [AttemptRecord.from_json(attempt) for attempt in value]
    if offset != len(data):
        raise ValueError(f"journal entry is {len(data)} bytes; its head describes {offset}")
    return CallRecord(**values)
