"""The served schema's bodies for the ingresses beyond chat: text completions, embeddings, Responses and
Anthropic Messages (their handlers read bytes, so FastAPI can't describe them; see gateway.openapi).

The request schemas say what minigate itself reads and checks; every other member is the upstream's
(or the translator's) to accept or refuse, so they stay open (`additionalProperties`).
"""

from __future__ import annotations

from typing import Any

from minigate.gateway.openapi import error_responses

__all__ = [
    "COMPLETIONS_REQUEST_BODY",
    "EMBEDDINGS_REQUEST_BODY",
    "MESSAGES_REQUEST_BODY",
    "MESSAGES_RESPONSES",
    "RELAYED_RESPONSES",
    "RESPONSES_REQUEST_BODY",
]

JSONSchema = dict[str, Any]

_MODEL: JSONSchema = {"type": "string", "minLength": 1, "description": "a route name (GET /v1/models lists them)",
                      "examples": ["gpt-4.1"]}
_TEXTS: JSONSchema = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}


def _body(title: str, description: str, required: list[str], properties: JSONSchema) -> JSONSchema:
    schema = {"title": title, "description": description, "type": "object", "required": required,
              "additionalProperties": True, "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


COMPLETIONS_REQUEST_BODY = _body(
    "CompletionRequest", "OpenAI's legacy text completions; relayed to the route's default model.",
    ["model", "prompt"], {"model": _MODEL, "prompt": _TEXTS, "stream": {"type": "boolean"}})

EMBEDDINGS_REQUEST_BODY = _body(
    "EmbeddingRequest", "OpenAI's embeddings; relayed to the route's default model, logged without the vectors.",
    ["model", "input"], {"model": _MODEL, "input": _TEXTS,
                         "encoding_format": {"enum": ["float", "base64"]}, "dimensions": {"type": "integer"}})

RESPONSES_REQUEST_BODY = _body(
    "ResponseRequest",
    ("OpenAI's Responses API, served through chat completions: `input` (a string or message, function_call "
     "and function_call_output items), `instructions`, function `tools`, `tool_choice`, `text.format`, "
     "`max_output_tokens`, `temperature`, `metadata`, `store`, `previous_response_id`. Built-in tools "
     "(web search, file search, computer use) are refused with a 400."),
    ["model", "input"],
    {"model": _MODEL,
     "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
     "instructions": {"type": "string"}, "stream": {"type": "boolean"}, "store": {"type": "boolean"},
     "previous_response_id": {"type": "string"}, "max_output_tokens": {"type": "integer", "minimum": 1},
     "tools": {"type": "array", "items": {"type": "object"}}, "metadata": {"type": "object"}})

MESSAGES_REQUEST_BODY = _body(
    "MessageRequest",
    ("Anthropic's Messages API, served through chat completions: `system`, `messages` of content blocks "
     "(text, images, tool_use, tool_result), `tools`, `tool_choice`, `stop_sequences`, `stream`. The key "
     "may be sent as `x-api-key`."),
    ["model", "messages", "max_tokens"],
    {"model": _MODEL, "max_tokens": {"type": "integer", "minimum": 1},
     "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"]}},
     "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
     "stream": {"type": "boolean"}})

_STATUSES = (400, 401, 403, 404, 408, 413, 429, "4XX", 500, 502, 503, 504)
_EVENTS: JSONSchema = {"itemSchema": {"type": "object", "required": ["data"],
                                      "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}

RELAYED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": ("The answer in the endpoint's protocol (JSON), or with `stream: true` its server-sent "
                          "events; a failure after the first event arrives as an error event."),
          "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": _EVENTS}},
    **error_responses(*_STATUSES),
}

_ANTHROPIC_ERROR: JSONSchema = {
    "title": "AnthropicError",
    "type": "object",
    "required": ["type", "error"],
    "properties": {"type": {"const": "error"},
                   "error": {"type": "object", "required": ["type", "message"],
                             "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}},
}

def _anthropic(status: int | str, description: str) -> dict[str, Any]:
    """What `/v1/messages` answers: Anthropic's error shape, except where the request never reached it: a
    fault in minigate (500) is OpenAI-shaped, and a 503 may come from the connection cap before it."""
    schema: JSONSchema = _ANTHROPIC_ERROR
    if status == 503:
        schema = {"anyOf": [_ANTHROPIC_ERROR, {"$ref": "#/components/schemas/ErrorResponse"}]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


MESSAGES_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: RELAYED_RESPONSES[200],
    **{status: _anthropic(status, why["description"])
       for status, why in error_responses(*_STATUSES).items() if status != 500},
}
