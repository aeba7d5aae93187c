"""OpenAI chat requests translated to Anthropic Messages requests: what maps, and what is refused and why."""

from __future__ import annotations

from typing import Any

import pytest

from minigate.errors import InvalidRequest
from minigate.protocols.anthropic_request import DEFAULT_MAX_TOKENS, to_messages_request
from minigate.protocols.anthropic_tools import Answer

USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


def translate(**request: Any) -> dict[str, Any]:
    request.setdefault("messages", [USER])
    return to_messages_request({"model": "claude-x", **request}).body


def refusal(**request: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        translate(**request)
    return caught.value


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def test_minimal_request() -> None:
    assert translate() == {"model": "claude-x", "max_tokens": DEFAULT_MAX_TOKENS,
                           "messages": [{"role": "user", "content": [text("hi")]}]}


def test_system_and_developer_messages_join_the_top_level_system() -> None:
    body = translate(messages=[{"role": "system", "content": "A"}, USER,
                               {"role": "developer", "content": [{"type": "text", "text": "B"}]}])
    assert body["system"] == [text("A"), text("B")]
    assert body["messages"] == [{"role": "user", "content": [text("hi")]}]


def test_consecutive_turns_of_one_role_merge_and_empty_text_is_dropped() -> None:
    body = translate(messages=[USER, {"role": "user", "content": ""}, {"role": "user", "content": "again"},
                               {"role": "assistant", "content": "ok"}])
    assert body["messages"] == [{"role": "user", "content": [text("hi"), text("again")]},
                                {"role": "assistant", "content": [text("ok")]}]


def test_tool_calls_and_results() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    no_arguments = {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}}
    body = translate(messages=[
        USER,
        {"role": "assistant", "content": "Looking.", "tool_calls": [call, no_arguments]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "tool", "tool_call_id": "call_2", "content": ""},
        {"role": "user", "content": "thanks"},
    ])
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [
            text("Looking."),
            {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "x"}},
            {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": [text("found")]},
            {"type": "tool_result", "tool_use_id": "call_2"},
            text("thanks")]},
    ]


def test_tool_results_open_their_user_turn() -> None:
    body = translate(messages=[USER, {"role": "tool", "tool_call_id": "c", "content": "r"}])
    assert [block["type"] for block in body["messages"][0]["content"]] == ["tool_result", "text"]


def test_images() -> None:
    body = translate(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR"}},
        {"type": "image_url", "image_url": {"url": "http://example.com/a.gif"}},
    ]}])
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGR"}},
        {"type": "image", "source": {"type": "url", "url": "http://example.com/a.gif"}},
    ]


@pytest.mark.parametrize("url", ["data:image/tiff;base64,AAAA", "data:image/png,rawbytes", "ftp://example.com/a.png"])
def test_images_anthropic_cannot_take_are_refused(url: str) -> None:
    error = refusal(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert error.param == "messages[0].content[0].image_url" and "JPEG, PNG, GIF or WebP" in error.message


@pytest.mark.parametrize(("choice", "expected"), [
    (None, {"type": "auto"}),
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "lookup"}}, {"type": "tool", "name": "lookup"}),
])
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    body = translate(tools=[TOOL], tool_choice=choice)
    assert body["tool_choice"] == expected
    assert body["tools"] == [{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}]


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    assert translate(tools=[TOOL], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}


def test_a_tool_without_parameters_gets_an_empty_object_schema() -> None:
    body = translate(tools=[{"type": "function", "function": {"name": "now", "description": "The time"}}])
    assert body["tools"] == [{"name": "now", "description": "The time",
                              "input_schema": {"type": "object", "properties": {}}}]


def test_tool_choice_without_tools() -> None:
    assert "tool_choice" not in translate(tool_choice="auto")
    assert refusal(tool_choice="required").param == "tool_choice"


def test_json_schema_becomes_a_forced_answer_tool() -> None:
    request = to_messages_request({"model": "m", "messages": [USER], "response_format": {
        "type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA, "strict": True}}})
    assert request.answer == Answer("label")
    assert request.body["tool_choice"] == {"type": "tool", "name": "label"}
    [tool] = request.body["tools"]
    assert tool["name"] == "label" and tool["input_schema"] == SCHEMA and tool["description"]


def test_a_schema_that_is_not_an_object_is_wrapped() -> None:
    request = to_messages_request({"model": "m", "messages": [USER], "response_format": {
        "type": "json_schema", "json_schema": {"name": "intent", "schema": {"type": "string", "enum": ["a", "b"]}}}})
    assert request.answer == Answer("intent", key="value")
    assert request.body["tools"][0]["input_schema"] == {
        "type": "object", "properties": {"value": {"type": "string", "enum": ["a", "b"]}}, "required": ["value"]}


def test_json_object_takes_any_object() -> None:
    request = to_messages_request({"model": "m", "messages": [USER], "response_format": {"type": "json_object"}})
    assert request.answer == Answer("json_answer")
    assert request.body["tools"][0]["input_schema"] == {"type": "object"}


def test_json_schema_beside_tools_lets_the_model_call_a_tool_or_answer() -> None:
    request = to_messages_request({"model": "m", "messages": [USER], "tools": [TOOL], "response_format": {
        "type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA}}})
    assert [tool["name"] for tool in request.body["tools"]] == ["lookup", "label"]
    assert request.body["tool_choice"] == {"type": "any"} and request.answer == Answer("label")


def test_json_schema_is_moot_when_a_tool_call_is_required() -> None:
    request = to_messages_request({"model": "m", "messages": [USER], "tools": [TOOL], "tool_choice": "required",
                                   "response_format": {"type": "json_object"}})
    assert request.answer is None and [tool["name"] for tool in request.body["tools"]] == ["lookup"]


def test_answer_tool_name_clashing_with_a_tool_is_refused() -> None:
    error = refusal(tools=[TOOL], response_format={"type": "json_schema", "json_schema": {"name": "lookup"}})
    assert error.param == "response_format" and "rename" in error.message


def test_response_format_text_changes_nothing() -> None:
    assert translate(response_format={"type": "text"}) == translate()


def test_max_tokens() -> None:
    assert translate(max_tokens=10)["max_tokens"] == 10
    assert translate(max_tokens=10, max_completion_tokens=20)["max_tokens"] == 20
    assert refusal(max_completion_tokens=0).param == "max_completion_tokens"


def test_sampling() -> None:
    body = translate(temperature=1, top_p=0.5, stop=["a", "b"])
    assert (body["temperature"], body["top_p"], body["stop_sequences"]) == (1, 0.5, ["a", "b"])
    assert refusal(temperature=1.2).param == "temperature"


def test_stream_and_usage_options() -> None:
    request = to_messages_request({"model": "m", "messages": [USER], "stream": True,
                                   "stream_options": {"include_usage": True}})
    assert request.body["stream"] is True and request.stream and request.include_usage
    assert "stream_options" not in request.body


def test_harmless_and_neutral_parameters_are_dropped() -> None:
    body = translate(seed=1, store=True, metadata={"a": "b"}, service_tier="auto", n=1, logprobs=False,
                     presence_penalty=0, frequency_penalty=0.0, logit_bias={}, modalities=["text"], top_logprobs=None)
    assert body == translate()


@pytest.mark.parametrize(("extra", "param", "says"), [
    ({"n": 3}, "n", "separate requests"),
    ({"logprobs": True}, "logprobs", "remove it or send false"),
    ({"presence_penalty": 1}, "presence_penalty", "remove it or send 0"),
    ({"modalities": ["text", "audio"]}, "modalities", "no equivalent"),
    ({"reasoning_effort": "high"}, "reasoning_effort", "not supported"),
    ({"some_future_field": 1}, "some_future_field", "not supported"),
])
def test_parameters_that_would_change_the_answer_are_refused(extra: dict[str, Any], param: str, says: str) -> None:
    error = refusal(**extra)
    assert error.param == param and says in error.message and error.status == 400


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "system", "content": "only a system prompt"}], "messages"),
    ([{"role": "function", "name": "f", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0]"),
    ([USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}],
     "messages[1].tool_calls[0].function.arguments"),
    ([USER, {"role": "tool", "content": "r"}], "messages[1].tool_call_id"),
    ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}],
     "messages[0].content[0]"),
])
def test_messages_anthropic_cannot_take_are_refused(messages: list[Any], param: str) -> None:
    assert refusal(messages=messages).param == param
