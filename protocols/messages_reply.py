"""Chat completions replies as Anthropic Messages API replies, to serve `/v1/messages` from any upstream. Pure.

The message's content becomes a text block (a refusal too, with `stop_reason: refusal`), each tool call a
`tool_use` block with its arguments parsed; `finish_reason` becomes `stop_reason` by the inverse of
`anthropic_reply`'s table; usage is split back the way Anthropic counts it (`input_tokens` without the
cache reads). Reasoning fields (`reasoning_content`) are left out: minigate refuses `thinking` on this path.
Errors take Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, typed by status.

>>> anthropic_usage({"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 90}})
{'input_tokens': 10, 'output_tokens': 5, 'cache_creation_input_tokens': 0, 'cache_read_input_tokens': 90}
>>> anthropic_error(429, "slow down")
b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from minigate.protocols.anthropic_reply import ReplyError, stop_reason

__all__ = ["anthropic_error", "anthropic_usage", "error_type", "from_openai_error", "message_id_for", "to_message"]

# Anthropic's error types by HTTP status (its 529 is "overloaded"; minigate says 503 for the same).
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}


def to_message(completion: Mapping[str, Any], *, message_id: str | None = None) -> dict[str, Any]:
    """A parsed `chat.completion` body as an Anthropic `message`; raises `ReplyError` ("invalid_reply") when the
    body is not a chat completion or a tool call's arguments are not a JSON object."""
    try:
        choice = completion["choices"][0]
        reply = choice["message"]
        calls = [_tool_use(call) for call in reply.get("tool_calls") or []]
        model = completion["model"]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise ReplyError(f"the reply is not a chat completion ({type(exc).__name__}: {exc})", "invalid_reply") from exc
    refusal, content = reply.get("refusal"), reply.get("content")
    is_refusal = isinstance(refusal, str) and bool(refusal)
    text = refusal if is_refusal else content if isinstance(content, str) else ""
    matched = choice.get("stop_reason")  # vLLM names the stop string that ended the output
    matched = matched if isinstance(matched, str) else None
    reason = "refusal" if is_refusal else stop_reason(choice.get("finish_reason"), called_tools=bool(calls),
                                                      stop_sequence=matched)
    return {
        "id": message_id or message_id_for(completion.get("id")), "type": "message", "role": "assistant",
        "model": model, "content": ([{"type": "text", "text": text}] if text else []) + calls,
        "stop_reason": reason, "stop_sequence": matched if reason == "stop_sequence" else None,
        "usage": anthropic_usage(completion.get("usage")),
    }


def message_id_for(chat_id: Any) -> str:
    """A `msg_` id from a chat completion's id."""
    return "msg_" + (chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) else "")


def anthropic_usage(counts: Any) -> dict[str, int]:
    """Anthropic usage from OpenAI's, whose `prompt_tokens` include the cached tokens that Anthropic counts apart;
    the inverse of `anthropic_reply.usage` (chat upstreams report no cache writes)."""
    def count(where: Any, name: str) -> int:
        value = where.get(name) if isinstance(where, Mapping) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    cached = count(counts.get("prompt_tokens_details") if isinstance(counts, Mapping) else None, "cached_tokens")
    return {"input_tokens": max(count(counts, "prompt_tokens") - cached, 0),
            "output_tokens": count(counts, "completion_tokens"),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error(status: int, message: str) -> bytes:
    """An error body in Anthropic's shape, typed by `status`."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


def from_openai_error(status: int, body: bytes) -> bytes:
    """An OpenAI-shaped error body (`{"error": {"message", ...}}`, or any other body) in Anthropic's shape."""
    try:
        error = orjson.loads(body)["error"]
        message = error if isinstance(error, str) else error["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    if not isinstance(message, str):
        message = f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
    return anthropic_error(status, message)


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call["function"]
    arguments = orjson.loads(function.get("arguments") or "{}")
    if not isinstance(arguments, dict):
        raise ValueError(f"tool call {function['name']!r} has arguments that are not a JSON object")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}
