"""Anthropic Messages served from chat completions: requests, replies, stream events and errors, checked with the
real anthropic SDK: its request bodies in; its types, accumulator and clients (over a mock transport) on what
comes out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from minigate.errors import InvalidRequest
from minigate.protocols.anthropic_reply import _STOP_REASONS, ReplyError, finish_reason
from minigate.protocols.messages_reply import anthropic_error, from_openai_error, to_message
from minigate.protocols.messages_request import to_chat_body
from minigate.protocols.messages_stream import MessagesStream

anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is in the test extra (scripts/setup test)")
httpx2 = pytest.importorskip("httpx2")
pydantic = pytest.importorskip("pydantic")
from anthropic.lib.streaming._messages import accumulate_event  # noqa: E402
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent  # noqa: E402

EVENTS: Any = pydantic.TypeAdapter(RawMessageStreamEvent)
WEATHER: Any = {"name": "get_weather", "description": "Weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG = "iVBORw0KGgo="


def sdk(respond: Callable[[Any], Any]) -> Any:
    """An anthropic client whose transport is `respond` (no sockets): what the real SDK sends and parses."""
    client = httpx2.Client(transport=httpx2.MockTransport(respond))
    return anthropic.Anthropic(api_key="k", base_url="http://minigate.test", http_client=client, max_retries=0)


def sent_by_sdk(**params: Any) -> dict[str, Any]:
    """The body the SDK sends for `messages.create(**params)`."""
    bodies: list[Any] = []

    def respond(request: Any) -> Any:
        bodies.append(orjson.loads(request.content))
        return httpx2.Response(200, json=to_message(completion("ok")))

    sdk(respond).messages.create(**params)
    return dict(bodies[0])


def completion(content: str | None, *, finish: str = "stop", calls: list[Any] | None = None,
               **choice: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "mini",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None, **choice}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}}


def call(index: int, name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}


def refused(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        to_chat_body(body)
    return caught.value


def ask(*messages: Any, **params: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "max_tokens": 64, "messages": list(messages), **params}


# -- requests --


def test_a_text_request_from_the_sdk() -> None:
    # anthropic 2.x dropped temperature and top_p from its signature; older clients still send them.
    body = sent_by_sdk(model="gpt-4.1", max_tokens=64, system="Be brief.",
                       extra_body={"temperature": 0.2, "top_p": 0.9}, stop_sequences=["END", "STOP"],
                       metadata={"user_id": "u-7"},
                       messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                 {"role": "user", "content": [{"type": "text", "text": "Count"},
                                                              {"type": "text", "text": "to 3"}]}])
    assert to_chat_body(body) == {
        "model": "gpt-4.1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Count\nto 3"}],
        "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop": ["END", "STOP"], "user": "u-7"}


def test_system_blocks_and_cache_hints() -> None:
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "Answer in English."}]
    chat = to_chat_body(ask({"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control":
                                                           {"type": "ephemeral"}}]},
                            system=system, cache_control={"type": "ephemeral"}, service_tier="auto",
                            thinking={"type": "disabled"}, top_k=None, stream=True))
    assert chat["messages"] == [{"role": "system", "content": "You are terse.\nAnswer in English."},
                                {"role": "user", "content": "Hi"}]
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_images_become_image_url_parts() -> None:
    body = sent_by_sdk(model="m", max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"}]}])
    assert to_chat_body(body)["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"}]}]


def test_tool_use_and_tool_results_round_trip() -> None:
    body = sent_by_sdk(model="m", max_tokens=64, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Here you go."},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "content": [
                {"type": "text", "text": "station down"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]}])
    chat = to_chat_body(body)
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER["input_schema"]}}]
    def weather(call_id: str, city: str) -> dict[str, Any]:
        arguments = orjson.dumps({"city": city}).decode()
        return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}

    assert chat["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [weather("toolu_1", "Oslo"),
                                                                     weather("toolu_2", "Rome")]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: station down"},
        {"role": "user", "content": [{"type": "text", "text": "Here you go."},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]


def test_a_turn_of_tool_results_alone_and_a_bare_tool_use() -> None:
    chat = to_chat_body(ask(
        {"role": "user", "content": "now?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "clock", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}))
    assert chat["messages"][1:] == [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather"},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"type": "any", "disable_parallel_tool_use": True}, {"tool_choice": "required", "parallel_tool_calls": False}),
    ({"type": "auto", "disable_parallel_tool_use": False}, {"tool_choice": "auto"}),
])
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    body = sent_by_sdk(model="m", max_tokens=8, tools=[WEATHER], tool_choice=choice,
                       messages=[{"role": "user", "content": "x"}])
    chat = to_chat_body(body)
    assert {key: chat[key] for key in ("tool_choice", "parallel_tool_calls") if key in chat} == expected


def test_structured_output_is_a_strict_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    chat = to_chat_body(ask({"role": "user", "content": "n?"},
                            output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert chat["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": schema, "strict": True}}


@pytest.mark.parametrize(("change", "param"), [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}, "tools[0].type"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
    ({"tools": [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]}, "tools[0].type"),
    ({"tools": [{**WEATHER, "defer_loading": True}]}, "tools[0].defer_loading"),
    ({"top_k": 5}, "top_k"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"container": "container_1"}, "container"),
    ({"output_config": {"effort": "high"}}, "output_config.effort"),
    ({"frobnicate": True}, "frobnicate"),
    ({"temperature": 1.5}, "temperature"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages[0].content[0].source"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}, "messages[0].content[0]"),
])
def test_what_cannot_be_served_is_refused_by_name(change: dict[str, Any], param: str) -> None:
    body = {**ask({"role": "user", "content": "hi"}), **change}
    error = refused({key: value for key, value in body.items() if value is not None})
    assert error.status == 400 and error.param == param and param in error.message


# -- replies --


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn")])
def test_a_text_reply(finish: str, stop: str) -> None:
    message = to_message(completion("Hello Ada", finish=finish))
    assert Message.model_validate(message).content[0].type == "text"
    assert message["id"] == "msg_abc" and message["model"] == "mini" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": "Hello Ada"}]
    assert message["stop_reason"] == stop and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 20, "output_tokens": 7, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 0}


def test_a_tool_use_reply_parsed_by_the_sdk() -> None:
    reply = completion("Let me check.", finish="tool_calls",
                       calls=[call(0, "get_weather", '{"city": "Oslo"}'), call(1, "now", "")])
    message = sdk(lambda request: httpx2.Response(200, json=to_message(reply, message_id="msg_42"))).messages.create(
        model="gpt-4.1", max_tokens=64, tools=[WEATHER], messages=[{"role": "user", "content": "Oslo?"}])
    assert isinstance(message, Message) and message.id == "msg_42" and message.stop_reason == "tool_use"
    text, first, second = message.content
    assert text.type == "text" and text.text == "Let me check."
    assert first.type == "tool_use" and (first.id, first.name, first.input) == ("call_0", "get_weather",
                                                                                 {"city": "Oslo"})
    assert second.type == "tool_use" and second.input == {}
    # The reply goes straight back into the next request.
    chat = to_chat_body(sent_by_sdk(model="gpt-4.1", max_tokens=64, tools=[WEATHER], messages=[
        {"role": "user", "content": "Oslo?"}, message.to_param(),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "sunny"}]}]))
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool"]


def test_tool_calls_finished_with_stop_are_still_tool_use() -> None:
    message = to_message(completion(None, calls=[call(0, "now", "{}")]))
    assert message["stop_reason"] == "tool_use" and message["content"][0]["type"] == "tool_use"


def test_a_stop_sequence_named_by_the_upstream() -> None:
    message = to_message(completion("one two", stop_reason="END"))
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "END"
    assert Message.model_validate(message).stop_sequence == "END"


def test_a_refusal_and_an_empty_reply() -> None:
    reply = completion(None)
    reply["choices"][0]["message"]["refusal"] = "I can't help with that."
    refusal = to_message(reply)
    assert refusal["stop_reason"] == "refusal" and refusal["content"][0]["text"] == "I can't help with that."
    assert Message.model_validate(to_message(completion(""))).content == []


def test_cached_tokens_are_counted_apart_as_anthropic_does() -> None:
    reply = completion("x")
    reply["usage"] = {"prompt_tokens": 100, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 64}}
    usage = Message.model_validate(to_message(reply)).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (36, 64, 3)


@pytest.mark.parametrize("reply", [{"object": "chat.completion"}, completion(None, calls=[call(0, "f", "[1]")]),
                                   completion(None, calls=[call(0, "f", "{not json")])])
def test_an_untranslatable_reply(reply: dict[str, Any]) -> None:
    with pytest.raises(ReplyError) as caught:
        to_message(reply)
    assert caught.value.kind == "invalid_reply"


@pytest.mark.parametrize("finish", sorted(set(_STOP_REASONS) - {"function_call"}))
def test_stop_reasons_are_the_inverse_of_finish_reasons(finish: str) -> None:
    calls = [call(0, "f", "{}")] if finish == "tool_calls" else None
    stop = to_message(completion("x", finish=finish, calls=calls))["stop_reason"]
    assert finish_reason(stop, called_tools=calls is not None) == finish


# -- errors --


@pytest.mark.parametrize(("status", "kind", "raised"), [
    (400, "invalid_request_error", "BadRequestError"), (401, "authentication_error", "AuthenticationError"),
    (403, "permission_error", "PermissionDeniedError"), (404, "not_found_error", "NotFoundError"),
    (413, "request_too_large", "ContentTooLargeError"), (429, "rate_limit_error", "RateLimitError"),
    (500, "api_error", "InternalServerError"), (502, "api_error", "InternalServerError"),
    (503, "overloaded_error", "ServiceUnavailableError"), (504, "timeout_error", "GatewayTimeoutError"),
    (529, "overloaded_error", "OverloadedError"), (408, "invalid_request_error", "RequestTimeoutError"),
])
def test_errors_in_anthropic_shape(status: int, kind: str, raised: str) -> None:
    body = anthropic_error(status, "it broke")
    assert orjson.loads(body) == {"type": "error", "error": {"type": kind, "message": "it broke"}}
    if kind != "request_too_large":  # documented by Anthropic, though missing from the SDK's ErrorObject union
        assert ErrorResponse.model_validate_json(body).error.type == kind
    client = sdk(lambda request: httpx2.Response(status, content=body, headers={"content-type": "application/json"}))
    with pytest.raises(getattr(anthropic, raised)) as caught:
        client.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert "it broke" in str(caught.value)


def test_openai_errors_rendered_in_anthropic_shape() -> None:
    openai = orjson.dumps({"error": {"message": "Unknown model 'x'; routes: gpt-4.1", "type": "invalid_request_error",
                                     "param": "model", "code": "model_not_found"}})
    assert orjson.loads(from_openai_error(404, openai)) == {
        "type": "error", "error": {"type": "not_found_error", "message": "Unknown model 'x'; routes: gpt-4.1"}}
    garbled = ErrorResponse.model_validate_json(from_openai_error(502, b"<html>bad gateway</html>"))
    assert garbled.error.type == "api_error" and garbled.error.message == "HTTP 502: <html>bad gateway</html>"


# -- streams --


def chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None, usage: Any = None,
          **choice: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                                         **choice}]
    body = {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1, "model": "mini",
            "choices": choices, "usage": usage}
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = {"prompt_tokens": 25, "completion_tokens": 3, "total_tokens": 28}
DONE = b"data: [DONE]\n\n"
TEXT = (chunk({"role": "assistant", "content": ""}) + chunk({"content": "one"}) + chunk({"content": " two"})
        + chunk({"content": " three"}) + chunk({}, finish="stop") + chunk(usage=USAGE) + DONE)


def tool_delta(index: int, *, name: str | None = None, arguments: str = "") -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if name is not None:
        call |= {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"tool_calls": [call]}


TOOLS = (chunk({"role": "assistant", "content": "Checking."}) + chunk(tool_delta(0, name="get_weather"))
         + chunk(tool_delta(0, arguments='{"city": ')) + chunk(tool_delta(0, arguments='"Oslo"}'))
         + chunk(tool_delta(1, name="now", arguments="{}")) + chunk({}, finish="tool_calls") + chunk(usage=USAGE)
         + DONE)


def translate(stream: bytes, piece: int | None = None, *, end: bool = True) -> bytes:
    translator = MessagesStream(model="gpt-4.1", message_id="msg_s")
    size = piece or len(stream)
    out = b"".join(translator.feed(stream[i:i + size]) for i in range(0, len(stream), size))
    return out + translator.end() if end else out


def events(out: bytes) -> list[dict[str, Any]]:
    """The events, each checked against the SDK's event union and its `event:` line."""
    parsed = []
    for frame in out.split(b"\n\n")[:-1]:
        name, data = frame.split(b"\n")
        event = orjson.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + event["type"].encode()
        if event["type"] != "error":
            EVENTS.validate_python(event)
        parsed.append(event)
    return parsed


def accumulated(out: bytes) -> Any:
    snapshot, buffers = None, {}
    for event in events(out):
        snapshot = accumulate_event(event=EVENTS.validate_python(event), current_snapshot=snapshot, json_bufs=buffers)
    return snapshot


def test_a_text_stream_event_by_event() -> None:
    parsed = events(translate(TEXT))
    assert [e["type"] for e in parsed] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    start, block = parsed[0]["message"], parsed[1]
    assert start["id"] == "msg_s" and start["model"] == "gpt-4.1" and start["content"] == []
    assert start["usage"]["input_tokens"] == 0 and start["usage"]["output_tokens"] == 0
    assert block == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert parsed[2]["delta"] == {"type": "text_delta", "text": "one"}
    assert parsed[6]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert parsed[6]["usage"]["output_tokens"] == 3 and parsed[6]["usage"]["input_tokens"] == 25
    final = accumulated(translate(TEXT))
    assert final.content[0].text == "one two three" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (25, 3)


@pytest.mark.parametrize("stream", [TEXT, TOOLS], ids=["text", "tools"])
def test_bytes_split_anywhere_give_the_same_events(stream: bytes) -> None:
    assert translate(stream, piece=1) == translate(stream) == translate(stream, piece=7)
    assert translate(stream.replace(b"\n", b"\r\n"), piece=1) == translate(stream)


def test_text_and_tool_calls_each_get_a_block() -> None:
    parsed = events(translate(TOOLS))
    starts = [(e["index"], e["content_block"]) for e in parsed if e["type"] == "content_block_start"]
    assert starts == [(0, {"type": "text", "text": ""}),
                      (1, {"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {}}),
                      (2, {"type": "tool_use", "id": "call_1", "name": "now", "input": {}})]
    assert [e["index"] for e in parsed if e["type"] == "content_block_stop"] == [0, 1, 2]
    fragments = [e["delta"]["partial_json"] for e in parsed if e["type"] == "content_block_delta" and e["index"] == 1]
    assert fragments == ['{"city": ', '"Oslo"}']
    final = accumulated(translate(TOOLS))
    assert final.stop_reason == "tool_use" and final.content[0].text == "Checking."
    assert [(b.name, b.input) for b in final.content[1:]] == [("get_weather", {"city": "Oslo"}), ("now", {})]


def test_the_sdk_streams_our_events() -> None:
    def respond(request: Any) -> Any:
        return httpx2.Response(200, content=translate(TOOLS), headers={"content-type": "text/event-stream"})

    with sdk(respond).messages.stream(model="gpt-4.1", max_tokens=64, tools=[WEATHER],
                                      messages=[{"role": "user", "content": "Oslo?"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Checking." and final.stop_reason == "tool_use" and final.usage.input_tokens == 25
    assert final.content[1].type == "tool_use" and final.content[1].input == {"city": "Oslo"}


@pytest.mark.parametrize(("ending", "stop", "sequence"), [
    (chunk({}, finish="length"), "max_tokens", None),
    (chunk({}, finish="stop", stop_reason="END"), "stop_sequence", "END"),
    (chunk({}, finish="content_filter"), "refusal", None),
])
def test_stream_stop_reasons(ending: bytes, stop: str, sequence: str | None) -> None:
    stream = chunk({"role": "assistant", "content": "partial"}) + ending + chunk(usage=USAGE) + DONE
    final = accumulated(translate(stream))
    assert (final.stop_reason, final.stop_sequence) == (stop, sequence)


def test_done_closes_the_message_and_end_adds_nothing() -> None:
    translator = MessagesStream(model="m")
    out = translator.feed(TEXT)
    assert events(out)[-1] == {"type": "message_stop"} and events(out)[0]["message"]["id"] == "msg_s1"
    assert translator.end() == b"" and translator.feed(chunk({"content": "late"})) == b""


def test_end_closes_a_stream_without_done() -> None:
    out = translate(TEXT.removesuffix(DONE), end=False)
    assert events(out)[-1]["type"] == "content_block_delta"
    final = accumulated(translate(TEXT.removesuffix(DONE)))
    assert final.content[0].text == "one two three" and final.stop_reason == "end_turn"


def test_an_empty_stream_is_still_a_whole_message() -> None:
    parsed = events(translate(DONE))
    assert [e["type"] for e in parsed] == ["message_start", "message_delta", "message_stop"]
    assert parsed[1]["usage"] == {"output_tokens": 0}


def test_a_cut_reported_as_an_error_event() -> None:
    translator = MessagesStream(model="m", message_id="msg_c")
    sent = translator.feed(chunk({"content": "one"})) + translator.fail("upstream 'mini' closed the stream mid-way")
    failure = events(sent)[-1]
    assert failure == {"type": "error", "error": {"type": "api_error",
                                                  "message": "upstream 'mini' closed the stream mid-way"}}
    assert ErrorResponse.model_validate(failure).error.type == "api_error"
    assert translator.end() == b"" and translator.fail("again") == b""

    def respond(request: Any) -> Any:
        return httpx2.Response(200, content=sent, headers={"content-type": "text/event-stream"})

    with pytest.raises(anthropic.APIStatusError) as caught, sdk(respond).messages.stream(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]) as stream:
        "".join(stream.text_stream)
    assert "closed the stream" in str(caught.value)


def test_an_upstream_error_chunk_becomes_an_error_event() -> None:
    error = {"error": {"message": "model overloaded", "type": "server_error"}}
    stream = chunk({"content": "one"}) + b"data: " + orjson.dumps(error) + b"\n\n"
    parsed = events(translate(stream + chunk({"content": "never"}) + DONE))
    assert [e["type"] for e in parsed][-1] == "error" and parsed[-1]["error"]["message"] == "model overloaded"
    assert "never" not in str(parsed)


def test_an_unreadable_event_is_an_invalid_reply() -> None:
    with pytest.raises(ReplyError) as caught:
        MessagesStream(model="m").feed(b"data: {not json\n\n")
    assert caught.value.kind == "invalid_reply"

