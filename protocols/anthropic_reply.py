"""Anthropic Messages API replies as OpenAI chat completions: whole messages and error bodies. Pure.

Text blocks join into `message.content`; `tool_use` blocks become `tool_calls` (arguments as a JSON
string), except a call of the answer tool (`anthropic_tools.Answer`), whose input is then the content;
`stop_reason` becomes `finish_reason`; usage counts the cache reads and writes that Anthropic reports
apart into `prompt_tokens`, as OpenAI does, with the cache reads as `prompt_tokens_details.cached_tokens`.
Extended-thinking and server-tool blocks are not translated (minigate never asks for them).
`stop_reason` is the inverse of `finish_reason`, for serving Anthropic's Messages API from chat upstreams.

>>> usage({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 90})["prompt_tokens"]
100
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from minigate.protocols.anthropic_tools import Answer

__all__ = ["ReplyError", "answer_content", "completion", "error_body", "finish_reason", "openai_status", "stop_reason",
           "usage"]

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The inverse, one canonical stop reason per finish_reason (`function_call` is the legacy `tool_calls`).
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_OVERLOADED = 529  # Anthropic's own status for "overloaded"; clients and the cascade know 503


class ReplyError(Exception):
    """A reply that can't be translated: `kind` is `invalid_reply`, `stream_error` (an error event) or `stream_cut`."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def completion(message: bytes, answer: Answer | None, created: int) -> bytes:
    """A `chat.completion` body from an Anthropic `message` body."""
    try:
        parsed = orjson.loads(message)
        blocks = parsed["content"]
        texts = [block["text"] for block in blocks if block["type"] == "text"]
        uses = [block for block in blocks if block["type"] == "tool_use"]
        answered = [use["input"] for use in uses if answer is not None and use["name"] == answer.tool]
        calls = [_tool_call(use) for use in uses if answer is None or use["name"] != answer.tool]
        head = {"id": parsed["id"], "object": "chat.completion", "created": created, "model": parsed["model"]}
        stop_reason, counts = parsed.get("stop_reason"), parsed["usage"]
    except (ValueError, KeyError, TypeError) as exc:
        problem = f"the reply is not an Anthropic message ({type(exc).__name__}: {exc})"
        raise ReplyError(problem, "invalid_reply") from exc
    if answer is not None:  # the content is the answer tool's input; text beside it would break the JSON
        content: str | None = answer_content(answered[0], answer) if answered else None if calls else ""
    else:
        content = "".join(texts) if texts or not calls else None
    reply: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish_reason(stop_reason, bool(calls))}
    return orjson.dumps({**head, "choices": [choice], "usage": usage(counts)})


def answer_content(tool_input: Any, answer: Answer) -> str:
    """The message content carried by a call of the answer tool: its input, unwrapped when it was wrapped."""
    if answer.key is not None and isinstance(tool_input, Mapping) and answer.key in tool_input:
        tool_input = tool_input[answer.key]
    return orjson.dumps(tool_input).decode()


def finish_reason(stop_reason: Any, called_tools: bool) -> str:
    """OpenAI's finish_reason; a `tool_use` stop with no client tool called was the answer tool: a plain `stop`."""
    if stop_reason == "tool_use" and not called_tools:
        return "stop"
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def stop_reason(finish: Any, *, called_tools: bool, stop_sequence: str | None) -> str:
    """Anthropic's stop_reason from a chat finish_reason.

    Some upstreams finish a turn that called tools with `stop`, so called tools mean `tool_use`
    unless output was cut short; `stop_sequence` is the matched stop string where the upstream names it
    (vLLM's `stop_reason`), since a plain `stop` can't tell a stop sequence from the end of a turn.

    >>> stop_reason("length", called_tools=False, stop_sequence=None)
    'max_tokens'
    """
    if finish in ("stop", None) and stop_sequence is not None:
        return "stop_sequence"
    if called_tools and finish not in ("length", "content_filter"):
        return "tool_use"
    return _STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


def usage(counts: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI usage from Anthropic's, whose `input_tokens` leaves out tokens read from or written to the cache."""
    def count(name: str) -> int:
        value = counts.get(name)
        return value if isinstance(value, int) else 0

    cached = count("cache_read_input_tokens")
    prompt = count("input_tokens") + cached + count("cache_creation_input_tokens")
    completion_tokens = count("output_tokens")
    translated: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt + completion_tokens}
    if "cache_read_input_tokens" in counts or "cache_creation_input_tokens" in counts:
        translated["prompt_tokens_details"] = {"cached_tokens": cached}
    return translated


def openai_status(status: int) -> int:
    """The status a client sees: Anthropic's 529 (overloaded) as 503, so retries and the cascade treat it as such."""
    return 503 if status == _OVERLOADED else status


def error_body(status: int, body: bytes, upstream: str) -> bytes:
    """OpenAI's error shape from Anthropic's `{"type": "error", "error": {"type", "message"}}` (or any other body)."""
    try:
        error = orjson.loads(body)["error"]
        kind, message = str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        excerpt = body[:300].decode("utf-8", "replace")
        kind, message = "api_error", f"HTTP {status}: {excerpt}"
    type_ = "server_error" if openai_status(status) >= 500 else kind
    return orjson.dumps({"error": {"message": f"Anthropic upstream {upstream!r}: {message}", "type": type_,
                                   "param": None, "code": kind}})


def _tool_call(use: Mapping[str, Any]) -> dict[str, Any]:
    arguments = orjson.dumps(use["input"]).decode()
    return {"id": use["id"], "type": "function", "function": {"name": use["name"], "arguments": arguments}}
