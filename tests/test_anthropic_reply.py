"""Anthropic messages and errors translated to OpenAI chat completions and errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from minigate.protocols.anthropic_reply import ReplyError, completion, error_body, finish_reason, openai_status, usage
from minigate.protocols.anthropic_tools import Answer


def message(*blocks: dict[str, Any], stop_reason: str = "end_turn", **counts: int) -> bytes:
    return orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                         "content": list(blocks), "stop_reason": stop_reason, "stop_sequence": None,
                         "usage": {"input_tokens": 10, "output_tokens": 4, **counts}})


def translated(body: bytes, answer: Answer | None = None) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(completion(body, answer, created=1700000000))
    return result


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def tool_use(name: str, tool_input: Any, id_: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_use", "id": id_, "name": name, "input": tool_input}


def test_text() -> None:
    assert translated(message(text("Hello"), text(" world"))) == {
        "id": "msg_1", "object": "chat.completion", "created": 1700000000, "model": "claude-x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world", "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


def test_tool_uses_become_tool_calls() -> None:
    body = translated(message(text("Let me look."), tool_use("lookup", {"q": "x"}), tool_use("now", {}, "toolu_2"),
                              stop_reason="tool_use"))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me look."
    assert choice["message"]["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]


def test_only_tool_calls_means_null_content() -> None:
    body = translated(message(tool_use("lookup", {}), stop_reason="tool_use"))
    assert body["choices"][0]["message"]["content"] is None


def test_the_answer_tool_is_the_content() -> None:
    body = translated(message(text("Sure:"), tool_use("label", {"label": "billing"}), stop_reason="tool_use"),
                      Answer("label"))
    choice = body["choices"][0]
    assert orjson.loads(choice["message"]["content"]) == {"label": "billing"}
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"


def test_text_is_dropped_when_a_json_answer_was_asked() -> None:
    body = translated(message(text("I cannot."), stop_reason="end_turn"), Answer("label"))
    assert body["choices"][0]["message"]["content"] == ""


def test_a_wrapped_answer_is_unwrapped() -> None:
    body = translated(message(tool_use("intent", {"value": ["a", "b"]}), stop_reason="tool_use"),
                      Answer("intent", key="value"))
    assert body["choices"][0]["message"]["content"] == '["a","b"]'


def test_a_client_tool_called_instead_of_the_answer_stays_a_tool_call() -> None:
    body = translated(message(tool_use("lookup", {"q": "x"}), stop_reason="tool_use"), Answer("label"))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "lookup"


@pytest.mark.parametrize(("stop_reason", "expected"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"),
    ("something_new", "stop"), (None, "stop"),
])
def test_finish_reasons(stop_reason: str | None, expected: str) -> None:
    assert finish_reason(stop_reason, called_tools=True) == expected


def test_usage_counts_cache_reads_and_writes_into_the_prompt() -> None:
    assert usage({"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 20}) == {
        "prompt_tokens": 125, "completion_tokens": 7, "total_tokens": 132,
        "prompt_tokens_details": {"cached_tokens": 100}}


@pytest.mark.parametrize("body", [b"not json", b'{"id": "msg_1"}', orjson.dumps({"content": [1]})])
def test_a_body_that_is_not_a_message_is_a_reply_error(body: bytes) -> None:
    with pytest.raises(ReplyError) as caught:
        completion(body, None, 0)
    assert caught.value.kind == "invalid_reply"


@pytest.mark.parametrize(("status", "kind", "client_status", "type_"), [
    (400, "invalid_request_error", 400, "invalid_request_error"),
    (429, "rate_limit_error", 429, "rate_limit_error"),
    (500, "api_error", 500, "server_error"),
    (529, "overloaded_error", 503, "server_error"),
])
def test_errors(status: int, kind: str, client_status: int, type_: str) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": "Overloaded"}, "request_id": "req_1"})
    assert openai_status(status) == client_status
    assert orjson.loads(error_body(status, body, "claude")) == {"error": {
        "message": "Anthropic upstream 'claude': Overloaded", "type": type_, "param": None, "code": kind}}


def test_an_error_body_that_is_not_anthropic_is_quoted() -> None:
    error = orjson.loads(error_body(502, b"<html>Bad Gateway</html>", "claude"))["error"]
    assert error["type"] == "server_error" and "HTTP 502: <html>Bad Gateway</html>" in error["message"]
