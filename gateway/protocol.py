"""The light view of an OpenAI chat completions request that the gateway needs, parsed once.

The gateway reads `model` and `stream` and forwards everything else untouched: parameters it has never
heard of reach the upstream exactly as the client wrote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from minigate.errors import InvalidRequest, MalformedJSON
from minigate.gateway.json_shape import body_shape, check_members

__all__ = ["ChatRequest", "parse_chat_request"]

# A top-level-or-nested `"model": "<string>"` member. `{` or `,` before the key can't occur unescaped
# inside a JSON string, so every match is a real member of some object.
_MODEL_MEMBER = re.compile(rb'([{,]\s*"model"\s*:\s*)("(?:[^"\\]|\\.)*")')


@dataclass(slots=True)
class ChatRequest:
    raw: bytes
    body: dict[str, Any]
    model: str
    stream: bool

    @property
    def wants_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def encode(self, upstream_model: str, include_usage: bool) -> bytes:
        """The bytes an upstream gets: `model` replaced, and the usage chunk asked for when `include_usage`."""
        if include_usage and not self.wants_usage:
            return self.with_usage(upstream_model)
        return self.with_model(upstream_model)

    def with_usage(self, upstream_model: str) -> bytes:
        """The body with `model` replaced and `stream_options.include_usage` set (see usage_stream)."""
        options = self.body.get("stream_options")
        options = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
        return orjson.dumps({**self.body, "model": upstream_model, "stream_options": options})

    def with_model(self, upstream_model: str) -> bytes:
        """The body with `model` replaced, every other byte as the client sent it.

        Splicing the one member keeps unknown fields, number formatting and escapes exactly as sent;
        only when the member can't be found unambiguously (a nested object with the same `model`
        value) do we fall back to re-encoding the parsed body.
        """
        if upstream_model == self.model:
            return self.raw
        spans = [m.span(2) for m in _MODEL_MEMBER.finditer(self.raw) if orjson.loads(m.group(2)) == self.model]
        replacement = orjson.dumps(upstream_model)
        if len(spans) == 1:
            start, end = spans[0]
            return self.raw[:start] + replacement + self.raw[end:]
        return orjson.dumps({**self.body, "model": upstream_model})


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check the few fields the gateway relies on; the upstream validates the rest."""
    shape = body_shape(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"The request body is not valid JSON: {exc}. Send a JSON object.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(body).__name__}.")
    check_members(shape, len(body))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Missing required parameter: 'model' (a string naming a route).", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "Missing required parameter: 'messages' (a non-empty array of chat messages).", param="messages"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    return ChatRequest(raw, body, model, bool(stream))
