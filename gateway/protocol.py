"""The light view of an OpenAI request that the gateway needs, parsed once: chat completions, text
completions and embeddings (and the chat form that Responses and Messages calls are translated into).

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
from minigate.serving.upstream import Operation

__all__ = ["ChatRequest", "parse_json_object", "parse_openai_request", "route_name"]

# A top-level-or-nested `"model": "<string>"` member. `{` or `,` before the key can't occur unescaped
# inside a JSON string, so every match is a real member of some object.
_MODEL_MEMBER = re.compile(rb'([{,]\s*"model"\s*:\s*)("(?:[^"\\]|\\.)*")')


@dataclass(slots=True)
class ChatRequest:
    raw: bytes
    body: dict[str, Any]
    model: str
    stream: bool
    operation: Operation = "chat"

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


def parse_openai_request(raw: bytes, operation: Operation, path_model: str | None = None) -> ChatRequest:
    """A chat completions, text completions or embeddings body, checked as far as the gateway relies on it;
    the upstream validates the rest.

    `path_model`: the model the URL names (an Azure deployment), which takes the place of the body's.
    """
    body = parse_json_object(raw)
    model = path_model if path_model is not None else route_name(body)
    member, what = _REQUIRED[operation]
    value = body.get(member)
    if value is None or (operation == "chat" and (not isinstance(value, list) or not value)):
        raise InvalidRequest(f"Missing required parameter: {member!r} ({what}).", param=member)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if stream and operation == "embeddings":
        raise InvalidRequest("Embeddings are not streamed: leave 'stream' out.", param="stream")
    return ChatRequest(raw, body, model, bool(stream), operation)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, refused (400, saying why) when it is not one or is shaped to hurt."""
    shape = body_shape(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"The request body is not valid JSON: {exc}. Send a JSON object.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(body).__name__}.")
    check_members(shape, len(body))
    return body


def route_name(body: dict[str, Any]) -> str:
    """The body's `model`: the route it asks for, whatever protocol the body speaks."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Missing required parameter: 'model' (a string naming a route).", param="model")
    return model


_REQUIRED: dict[Operation, tuple[str, str]] = {
    "chat": ("messages", "a non-empty array of chat messages"),
    "completions": ("prompt", "the text to complete"),
    "embeddings": ("input", "the text, or array of texts, to embed"),
}
