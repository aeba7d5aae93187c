"""The call record: what the log keeps about one chat completion.

The request path fills it from values it already holds; anything that needs parsing (token usage in
the upstream's reply) is derived by the writer, off the request path.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

__all__ = ["CallRecord", "usage_of"]


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
    status: int
    latency_s: float
    stream: bool
    reply: bytes | None = None  # the upstream's non-streamed body, read for usage by the writer
    input_tokens: int | None = None
    output_tokens: int | None = None


def usage_of(reply: bytes | None) -> tuple[int | None, int | None]:
    """Prompt and completion tokens from a chat.completion body, (None, None) when it has none."""
    if not reply:
        return None, None
    try:
        usage = orjson.loads(reply).get("usage") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")
