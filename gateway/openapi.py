"""What the served OpenAPI schema says about bodies and errors that FastAPI cannot see for itself.

The chat endpoint reads its body as bytes (it is relayed, not re-encoded), so FastAPI finds no body
model to describe: `CHAT_REQUEST_BODY` describes it for `openapi_extra`. Our handlers answer 400 where
FastAPI would document 422, and every error carries OpenAI's shape: `describe_errors` makes the schema
say so. A schema that tells the truth is what lets clients generate code against it and lets
schemathesis (tests/test_fuzz.py) check every status the gateway answers.

Example:

    app.add_api_route("/v1/chat/completions", endpoint, methods=["POST"],
                      openapi_extra={"requestBody": CHAT_REQUEST_BODY}, responses=CHAT_RESPONSES)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

__all__ = [
    "CHAT_REQUEST_BODY",
    "CHAT_RESPONSES",
    "ErrorDetail",
    "ErrorResponse",
    "describe_errors",
    "error_responses",
]

JSONSchema = dict[str, Any]


class ErrorDetail(BaseModel):
    """What went wrong and what to fix; `param` names the field at fault, `code` is machine-readable."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, the body of every error minigate answers.

    Example: `{"error": {"message": "Missing required parameter: 'model' ...", "type":
    "invalid_request_error", "param": "model", "code": "invalid_request"}}`
    """

    error: ErrorDetail


_WHY: dict[int | str, str] = {
    400: ("Invalid request; the message names the parameter at fault (a body: malformed JSON, a wrong type, "
          "nesting over 64 levels, a repeated top-level key)"),
    401: "Missing or unknown API key",
    403: "The key's role may not do this",
    404: "Unknown route name (the message lists those that exist), unknown id (a request id), or unknown path",
    405: "Method not allowed; the `Allow` header lists those that are",
    408: "The request body did not arrive within server.body_timeout_s",
    413: "The request body exceeds server.max_body_bytes",
    429: ("Over the key's rate limit (type `requests` or `tokens`) or budget (type `insufficient_quota`), with "
          "Retry-After and x-ratelimit-* headers; or the upstream's own 429"),
    "4XX": "The upstream's own client error, relayed in OpenAI's shape",
    500: "A fault in minigate; the message gives the request id to look up in the gateway's log",
    502: "The upstream could not be reached, answered 5xx, or sent a reply over server.max_response_bytes",
    503: ("A part the gateway needs is down (the call-log store; Redis, for a limited key with limits.fail "
          "closed), or server.max_connections is reached"),
    504: "The upstream did not answer in time",
}


def error_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with OpenAI's error body and why it is answered."""
    return {status: {"model": ErrorResponse, "description": _WHY[status]} for status in statuses}


def _nullable(schema: JSONSchema) -> JSONSchema:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

_CONTENT_PART: JSONSchema = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "examples": ["text", "image_url", "input_audio", "file"]},
        "text": {"type": "string"},
        "image_url": {"type": "object", "required": ["url"],
                      "properties": {"url": {"type": "string"}, "detail": {"enum": ["auto", "low", "high"]}}},
    },
}

_CONTENT: JSONSchema = {
    "description": "A string, or an array of content parts (text, images, audio, files).",
    "anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}, {"type": "null"}],
}

_TOOL_CALL: JSONSchema = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name", "arguments"],
                     "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}},
    },
}

_MESSAGE: JSONSchema = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": _CONTENT,
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": _TOOL_CALL},
        "tool_call_id": {"type": "string"},
    },
}

_TOOL: JSONSchema = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                "description": {"type": "string"},
                "parameters": {"type": "object", "description": "a JSON Schema for the arguments"},
                "strict": _nullable({"type": "boolean"}),
            },
        },
    },
}

_TOOL_CHOICE: JSONSchema = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        {"type": "object", "required": ["type", "function"],
         "properties": {"type": {"const": "function"},
                        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
    ]
}

_RESPONSE_FORMAT: JSONSchema = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": {"type": "object", "required": ["name"],
                        "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                                       "schema": {"type": "object"}, "strict": _nullable({"type": "boolean"})}},
    },
}

_CHAT_REQUEST: JSONSchema = {
    "title": "ChatCompletionRequest",
    "description": ("OpenAI's chat completions request. minigate reads `model` (a route name) and `stream`, "
                    "and forwards every other parameter, known or not, to the upstream unchanged. "
                    "Objects and arrays may nest at most 64 levels; each top-level key may appear once."),
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": True,
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "a route name (GET /v1/models lists them)",
                  "examples": ["gpt-4.1"]},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": _nullable({"type": "boolean"}),
        "stream_options": _nullable({"type": "object", "properties": {"include_usage": {"type": "boolean"}}}),
        "tools": {"type": "array", "items": _TOOL},
        "tool_choice": _TOOL_CHOICE,
        "parallel_tool_calls": {"type": "boolean"},
        "response_format": _RESPONSE_FORMAT,
        "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
        "top_p": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "max_tokens": _nullable({"type": "integer", "minimum": 1}),
        "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
        "n": _nullable({"type": "integer", "minimum": 1, "maximum": 128}),
        "stop": _nullable({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]}),
        "presence_penalty": _nullable({"type": "number", "minimum": -2, "maximum": 2}),
        "frequency_penalty": _nullable({"type": "number", "minimum": -2, "maximum": 2}),
        "logit_bias": _nullable({"type": "object", "additionalProperties": {"type": "number"}}),
        "logprobs": _nullable({"type": "boolean"}),
        "top_logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 20}),
        "seed": _nullable({"type": "integer"}),
        "user": {"type": "string"},
        "metadata": _nullable({**_STRING_MAP, "maxProperties": 16}),
        "store": _nullable({"type": "boolean"}),
        "reasoning_effort": _nullable({"enum": ["minimal", "low", "medium", "high"]}),
        "service_tier": _nullable({"type": "string"}),
        "modalities": _nullable({"type": "array", "items": {"enum": ["text", "audio"]}}),
    },
}

CHAT_REQUEST_BODY: JSONSchema = {
    "required": True,
    "content": {"application/json": {"schema": _CHAT_REQUEST}},
}

_CHAT_COMPLETION: JSONSchema = {
    "title": "ChatCompletion",
    "description": "The upstream's reply, relayed byte for byte.",
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message"],
                "properties": {
                    "index": {"type": "integer"},
                    "message": {"type": "object", "required": ["role"],
                                "properties": {"role": {"const": "assistant"}, "content": _nullable({"type": "string"}),
                                               "tool_calls": {"type": "array", "items": _TOOL_CALL}}},
                    "finish_reason": _nullable({"type": "string"}),
                },
            },
        },
        "usage": _nullable({
            "type": "object",
            "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                           "total_tokens": {"type": "integer"}},
        }),
    },
}

_STREAM_EVENT: JSONSchema = {
    "description": "One server-sent event (OpenAPI 3.2's `itemSchema`: the schema of each event of the stream).",
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "a `chat.completion.chunk` as JSON, an `{\"error\": ...}` object "
                                                  "after a failure mid-stream, or `[DONE]`"},
        "event": {"type": "string"},
        "id": {"type": "string"},
    },
}

_CHAT_STATUSES = (400, 401, 403, 404, 408, 413, 429, "4XX", 500, 502, 503, 504)

CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": ("A chat completion (JSON), or with `stream: true` server-sent events of "
                        "`chat.completion.chunk` objects ending in `data: [DONE]`; a failure after the first "
                        "event arrives as an `error` event in OpenAI's error shape."),
        "content": {"application/json": {"schema": _CHAT_COMPLETION},
                    "text/event-stream": {"itemSchema": _STREAM_EVENT}},
    },
    **error_responses(*_CHAT_STATUSES),
}


def describe_errors(app: FastAPI) -> None:
    """Serve a schema in which every operation lists the errors any request can get.

    FastAPI documents 422 for a route with parameters; our validation handler answers 400, in OpenAI's
    shape. Any route can answer 500 (a fault in minigate) and 503 (server.max_connections reached).
    """
    app.openapi = _openapi(app)  # type: ignore[method-assign]


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)  # FastAPI's own, cached in app.openapi_schema: amended once, in place
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                _describe_operation(operation["responses"])
        _replace_validation_error(schema.setdefault("components", {}).setdefault("schemas", {}))
        return schema

    return build


_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _describe_operation(responses: dict[str, Any]) -> None:
    if responses.pop("422", None) is not None:
        responses.setdefault("400", _error_response(400))
    for status in (500, 503):
        responses.setdefault(str(status), _error_response(status))


def _error_response(status: int) -> dict[str, Any]:
    return {"description": _WHY[status], "content": {"application/json": {"schema": _ERROR_REF}}}


def _replace_validation_error(schemas: dict[str, Any]) -> None:
    """FastAPI's 422 body models, no longer referenced, give way to ours (referenced above)."""
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    _, ours = models_json_schema([(ErrorResponse, "serialization")], ref_template="#/components/schemas/{model}")
    for name, definition in ours["$defs"].items():
        schemas.setdefault(name, definition)
