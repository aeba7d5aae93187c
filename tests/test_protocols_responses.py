"""The Responses API translated to chat completions and back, checked against the openai SDK's own types.

Replies go through `openai.types.responses.Response.model_validate`, every streamed event through the SDK's
`ResponseStreamEvent` union, and whole streams through the SDK client's own stream parser
(`client.responses.stream`, over an in-process transport), so what minigate sends is what the SDK reads.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from minigate.errors import InvalidRequest
from minigate.protocols.responses_reply import response_usage, to_response
from minigate.protocols.responses_request import input_items, to_chat_body
from minigate.protocols.responses_stream import ResponsesStream

EVENT = TypeAdapter(ResponseStreamEvent)
RID = "resp_abc"
CHAT_USAGE = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25,
              "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 2}}
WEATHER = {"type": "function", "name": "weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def refused(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        to_chat_body(body)
    return caught.value


# -- requests --


def test_string_input_and_instructions() -> None:
    assert to_chat_body({"model": "gpt-4.1", "input": "Hi", "instructions": "Be brief."}) == {
        "model": "gpt-4.1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }
    assert input_items({"input": "Hi"}) == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]


def test_message_items_and_parts() -> None:
    body = {"model": "m", "input": [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Un chat.",
                                                                "annotations": []}]},
    ]}
    assert to_chat_body(body)["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.png",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "content": "Un chat."},
    ]


def test_function_call_items_merge_into_one_assistant_message() -> None:
    body = {"model": "m", "tools": [WEATHER], "input": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "21C"}]},
    ]}
    messages = to_chat_body(body)["messages"]
    assert messages[1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
    ]


def test_a_replys_output_is_history_for_the_next_turn() -> None:
    """previous_response_id: the earlier input and output items come before the new input."""
    first = {"model": "m", "input": "Weather in Paris?", "tools": [WEATHER]}
    reply = to_response(completion(None, tool_calls=[tool_call("call_9", "weather", '{"city":"Paris"}')],
                                   finish_reason="tool_calls"), first, response_id=RID, created_at=1)
    history = input_items(first) + reply["output"]
    second = {"model": "m", "tools": [WEATHER], "previous_response_id": RID,
              "input": [{"type": "function_call_output", "call_id": "call_9", "output": "18C"}]}
    assert to_chat_body(second, history)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "18C"},
    ]


def test_tools_and_parameters() -> None:
    body = {
        "model": "m", "input": "Hi", "tools": [{**WEATHER, "strict": True}],
        "tool_choice": {"type": "function", "name": "weather"}, "parallel_tool_calls": False,
        "max_output_tokens": 64, "temperature": 0.2, "top_p": 0.9, "user": "u-1", "top_logprobs": 3,
        "reasoning": {"effort": "low", "summary": "auto"}, "stream": True,
        "metadata": {"k": "v"}, "store": True, "truncation": "disabled", "include": [], "background": False,
        "service_tier": "auto", "prompt_cache_key": "pk", "safety_identifier": "s",
    }
    chat = to_chat_body(body)
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Weather in a city", "parameters": WEATHER["parameters"], "strict": True}}]
    assert {key: value for key, value in chat.items() if key not in ("messages", "tools")} == {
        "model": "m", "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": False, "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "user": "u-1",
        "logprobs": True, "top_logprobs": 3, "reasoning_effort": "low",
        "stream": True, "stream_options": {"include_usage": True},
    }


def test_tool_choice_without_tools_is_not_sent() -> None:
    """OpenAI's chat API refuses tool_choice and parallel_tool_calls without tools; Responses accepts them."""
    assert to_chat_body({"model": "m", "input": "Hi", "tool_choice": "auto", "parallel_tool_calls": True}) == {
        "model": "m", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(("text", "expected"), [
    ({"format": {"type": "json_schema", "name": "city", "strict": True,
                 "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}},
     {"response_format": {"type": "json_schema", "json_schema": {
         "name": "city", "schema": {"type": "object", "properties": {"name": {"type": "string"}}}, "strict": True}}}),
    ({"format": {"type": "json_object"}}, {"response_format": {"type": "json_object"}}),
    ({"format": {"type": "text"}}, {}),
])
def test_text_format(text: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = to_chat_body({"model": "m", "input": "Hi", "text": text})
    assert {key: value for key, value in chat.items() if key not in ("model", "messages")} == expected


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"tools": [WEATHER, {"type": "web_search_preview"}]}, "tools[1].type", "built-in tool"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type", "function tools only"),
    ({"tool_choice": {"type": "web_search_preview"}, "tools": [WEATHER]}, "tool_choice", "built-in tool"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "send the referenced item"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
     "input[0].content[0].type", "input_text instead"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "built-in tool"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].image_url", "file store"),
    ({"background": True}, "background", "background"),
    ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "instructions"),
    ({"frequency_penalty": 1}, "frequency_penalty", "not supported on translated Responses calls"),
    ({"input": 3}, "input", "'input' must be a string or an array of items"),
    ({"input": ["Hi"]}, "input[0]", "must be an object"),
    ({"input": [{"role": "robot", "content": "Hi"}]}, "input[0].role", "user, assistant"),
    ({"max_output_tokens": "many"}, "max_output_tokens", "an integer"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "name is required"),
])
def test_refusals_name_the_field(body: dict[str, Any], param: str, words: str) -> None:
    error = refused({"model": "m", "input": "Hi", **body})
    assert error.status == 400
    assert error.param == param
    assert words in error.message


# -- whole replies --


def completion(content: str | None, *, finish_reason: str = "stop", **message: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "mini-lora",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": CHAT_USAGE}


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_text_reply() -> None:
    request = {"model": "gpt-4.1", "input": "Hi", "instructions": "Be brief.", "metadata": {"team": "a"}}
    reply = to_response(completion("Hello!"), request, response_id=RID, created_at=1700000000)
    parsed = Response.model_validate(reply)
    assert parsed.output_text == "Hello!"
    assert reply["output"] == [{"id": "msg_abc_0", "type": "message", "status": "completed", "role": "assistant",
                                "content": [{"type": "output_text", "text": "Hello!", "annotations": [],
                                             "logprobs": []}]}]
    assert (reply["id"], reply["object"], reply["status"]) == (RID, "response", "completed")
    assert reply["model"] == "mini-lora"  # the model that answered, not the route asked for
    assert (reply["instructions"], reply["metadata"], reply["tool_choice"], reply["tools"]) == (
        "Be brief.", {"team": "a"}, "auto", [])
    assert reply["text"]["format"] == {"type": "text"} and reply["parallel_tool_calls"] is True
    assert reply["usage"] == {"input_tokens": 20,
                              "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
                              "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 25}


def test_tool_call_reply() -> None:
    calls = [tool_call("call_1", "weather", '{"city":"Paris"}'), tool_call("call_2", "weather", '{"city":"Rome"}')]
    request = {"model": "m", "input": "Weather?", "tools": [WEATHER], "tool_choice": "required"}
    reply = to_response(completion("Checking.", tool_calls=calls, finish_reason="tool_calls"), request,
                        response_id=RID, created_at=1)
    parsed = Response.model_validate(reply)
    assert parsed.output_text == "Checking."
    assert [(item["type"], item["id"]) for item in reply["output"]] == [
        ("message", "msg_abc_0"), ("function_call", "fc_abc_1"), ("function_call", "fc_abc_2")]
    assert reply["output"][2] == {"id": "fc_abc_2", "type": "function_call", "status": "completed",
                                  "arguments": '{"city":"Rome"}', "call_id": "call_2", "name": "weather"}
    assert reply["tools"][0]["name"] == "weather" and reply["tool_choice"] == "required"


def test_length_makes_an_incomplete_response() -> None:
    request = {"model": "m", "input": "Tell a long story", "max_output_tokens": 5}
    assert to_chat_body(request)["max_tokens"] == 5
    reply = to_response(completion("Once upon a", finish_reason="length"), request, response_id=RID, created_at=1)
    Response.model_validate(reply)
    assert reply["status"] == "incomplete"
    assert reply["incomplete_details"] == {"reason": "max_output_tokens"}
    assert reply["output"][0]["status"] == "incomplete" and reply["max_output_tokens"] == 5


def test_refusal_logprobs_and_json_schema_echo() -> None:
    text = {"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}}
    logprobs = {"content": [{"token": "No", "logprob": -0.1, "bytes": [78, 111],
                             "top_logprobs": [{"token": "No", "logprob": -0.1, "bytes": [78, 111]}]}]}
    body = completion(None, refusal="I can't help with that.")
    body["choices"][0]["logprobs"] = logprobs
    reply = to_response(body, {"model": "m", "input": "x", "text": text}, response_id=RID, created_at=1)
    parsed = Response.model_validate(reply)
    assert reply["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]
    assert parsed.text is not None and parsed.text.format is not None and parsed.text.format.type == "json_schema"
    with_text = to_response({**body, "choices": [{**body["choices"][0], "message": {"content": "No"}}]},
                            {"input": "x"}, response_id=RID, created_at=1)
    assert with_text["output"][0]["content"][0]["logprobs"] == [
        {"token": "No", "bytes": [78, 111], "logprob": -0.1,
         "top_logprobs": [{"token": "No", "bytes": [78, 111], "logprob": -0.1}]}]
    Response.model_validate(with_text)


def test_usage() -> None:
    assert response_usage(None) is None
    assert response_usage({"prompt_tokens": 3, "completion_tokens": 4}) == {
        "input_tokens": 3, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}


# -- streams --


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "mini-lora",
            "choices": choices, **extra}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def fragment(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        piece.update(id=call_id, type="function")
        piece["function"]["name"] = name
    return {"tool_calls": [piece]}


USAGE_CHUNK = chunk(None, usage=CHAT_USAGE)
DONE = b"data: [DONE]\n\n"
TEXT_STREAM = (chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hel"}) + chunk({"content": "lo!"})
               + chunk({}, "stop") + USAGE_CHUNK + DONE)
TOOL_STREAM = (chunk({"role": "assistant", "content": "Let me check."})
               + chunk(fragment(0, "", "call_1", "weather"))
               + chunk(fragment(0, '{"city":')) + chunk(fragment(0, '"Paris"}'))
               + chunk(fragment(1, '{"city":"Rome"}', "call_2", "weather"))
               + chunk({}, "tool_calls") + USAGE_CHUNK + DONE)


def run(stream: bytes, request: dict[str, Any] | None = None, piece: int | None = None) -> list[dict[str, Any]]:
    """The Responses events, each checked by the SDK's event union, feeding `piece` bytes at a time (or whole)."""
    translator = ResponsesStream(request or {"model": "m", "input": "Hi"}, response_id=RID, created_at=1)
    size = piece or len(stream)
    out = b"".join(translator.feed(stream[i:i + size]) for i in range(0, len(stream), size)) + translator.end()
    events = []
    for block in out.split(b"\n\n")[:-1]:
        name, data = block.split(b"\n")
        event = orjson.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + event["type"].encode()
        EVENT.validate_python(event)
        events.append(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert translator.response == events[-1]["response"]
    return events


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"].removeprefix("response.") for event in events]


def test_text_stream() -> None:
    events = run(TEXT_STREAM)
    assert kinds(events) == [
        "created", "in_progress", "output_item.added", "content_part.added", "output_text.delta",
        "output_text.delta", "output_text.done", "content_part.done", "output_item.done", "completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[2]["item"] == {"id": "msg_abc_0", "type": "message", "status": "in_progress", "content": [],
                                 "role": "assistant"}
    assert events[4] == {"type": "response.output_text.delta", "item_id": "msg_abc_0", "output_index": 0,
                         "content_index": 0, "delta": "Hel", "logprobs": [], "sequence_number": 4}
    assert events[6]["text"] == "Hello!"
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed" and final.output_text == "Hello!" and final.model == "mini-lora"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (20, 5)


@pytest.mark.parametrize("stream", [TEXT_STREAM, TOOL_STREAM], ids=["text", "tools"])
def test_streams_split_anywhere_give_the_same_events(stream: bytes) -> None:
    assert run(stream, piece=1) == run(stream) == run(stream.replace(b"\n", b"\r\n"), piece=7)


def test_tool_call_stream() -> None:
    events = run(TOOL_STREAM)
    assert kinds(events) == [
        "created", "in_progress",
        "output_item.added", "content_part.added", "output_text.delta", "output_text.done", "content_part.done",
        "output_item.done",
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.delta",
        "function_call_arguments.done", "output_item.done",
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.done", "output_item.done",
        "completed"]
    assert events[8]["item"] == {"id": "fc_abc_1", "type": "function_call", "status": "in_progress",
                                 "arguments": "", "call_id": "call_1", "name": "weather"}
    assert events[11] == {"type": "response.function_call_arguments.done", "item_id": "fc_abc_1", "output_index": 1,
                          "arguments": '{"city":"Paris"}', "name": "weather", "sequence_number": 11}
    final = events[-1]["response"]
    assert [(item["type"], item["status"]) for item in final["output"]] == [
        ("message", "completed"), ("function_call", "completed"), ("function_call", "completed")]
    assert final["output"][2]["arguments"] == '{"city":"Rome"}' and final["output"][2]["call_id"] == "call_2"
    assert final == to_response(completion("Let me check.", tool_calls=[
        tool_call("call_1", "weather", '{"city":"Paris"}'), tool_call("call_2", "weather", '{"city":"Rome"}')],
        finish_reason="tool_calls"), {"model": "m", "input": "Hi"}, response_id=RID, created_at=1)


def test_text_after_a_tool_call_is_a_new_message() -> None:
    stream = chunk(fragment(0, "{}", "call_1", "now")) + chunk({"content": "Done."}) + chunk({}, "stop") + DONE
    final = run(stream)[-1]["response"]
    assert [(item["type"], item["id"]) for item in final["output"]] == [
        ("function_call", "fc_abc_0"), ("message", "msg_abc_1")]


def test_calls_all_numbered_zero_are_told_apart_by_id() -> None:
    stream = chunk(fragment(0, '{"a":1}', "call_1", "f")) + chunk(fragment(0, '{"b":2}', "call_2", "g")) + DONE
    final = run(stream)[-1]["response"]
    assert [(item["call_id"], item["name"], item["arguments"]) for item in final["output"]] == [
        ("call_1", "f", '{"a":1}'), ("call_2", "g", '{"b":2}')]


def test_length_ends_the_stream_incomplete() -> None:
    events = run(chunk({"content": "Once upon a"}) + chunk({}, "length") + USAGE_CHUNK + DONE,
                 {"model": "m", "input": "Story", "max_output_tokens": 3})
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete" and final["max_output_tokens"] == 3


def test_usage_on_the_finish_chunk_and_an_empty_answer() -> None:
    events = run(chunk({"role": "assistant", "content": ""}, "stop", usage=CHAT_USAGE) + DONE)
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "" and len(final.output) == 1
    assert final.usage is not None and final.usage.total_tokens == 25


def test_refusal_stream() -> None:
    events = run(chunk({"refusal": "I can't"}) + chunk({"refusal": " help."}) + chunk({}, "stop") + DONE)
    assert kinds(events)[2:8] == ["output_item.added", "content_part.added", "refusal.delta", "refusal.delta",
                                  "refusal.done", "content_part.done"]
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]


def test_logprobs_stream() -> None:
    logprobs = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]}
    body = {"model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": logprobs}]}
    events = run(b"data: " + orjson.dumps(body) + b"\n\n" + DONE)
    expected = [{"token": "Hi", "bytes": [72, 105], "logprob": -0.5, "top_logprobs": []}]
    assert events[4]["logprobs"] == expected
    assert events[-1]["response"]["output"][0]["content"][0]["logprobs"] == expected


def test_fail_reports_an_error_then_response_failed() -> None:
    translator = ResponsesStream({"model": "m", "input": "Hi"}, response_id=RID, created_at=1)
    translator.feed(chunk({"content": "Hel"}))
    out = translator.fail("the upstream closed the stream mid-way", "upstream_stream_cut")
    events = [orjson.loads(block.split(b"\ndata: ")[1]) for block in out.split(b"\n\n")[:-1]]
    for event in events:
        EVENT.validate_python(event)
    assert [event["type"] for event in events] == ["error", "response.failed"]
    assert events[0] == {"type": "error", "code": "upstream_stream_cut",
                         "message": "the upstream closed the stream mid-way", "param": None, "sequence_number": 5}
    failed = events[1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["output"][0]["status"] == "incomplete" and translator.response == failed
    assert translator.end() == b"" and translator.feed(chunk({"content": "lo"})) == b""


@pytest.mark.parametrize("bad", [b"data: {not json\n\n", b'data: {"error": {"message": "model overloaded"}}\n\n',
                                 chunk(fragment(0, "x", "call_1", "f")) + chunk({"content": "t"})
                                 + chunk(fragment(0, "y"))])
def test_untranslatable_upstream_streams_fail_in_stream(bad: bytes) -> None:
    translator = ResponsesStream({"model": "m", "input": "Hi"}, response_id=RID, created_at=1)
    out = translator.feed(chunk({"content": "Hi"}) + bad) + translator.end()
    events = [orjson.loads(block.split(b"\ndata: ")[1]) for block in out.split(b"\n\n")[:-1]]
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert translator.response["status"] == "failed"


def test_the_sdk_client_reads_the_stream() -> None:
    """The SDK's own stream parser (what `client.responses.stream` users get) accumulates the same response."""
    def upstream(request: httpx.Request) -> httpx.Response:
        translator = ResponsesStream(orjson.loads(request.content), response_id=RID, created_at=1)
        body = b"".join(translator.feed(TOOL_STREAM[i:i + 5]) for i in range(0, len(TOOL_STREAM), 5))
        return httpx.Response(200, content=body + translator.end(), headers={"content-type": "text/event-stream"})

    http = httpx.Client(transport=httpx.MockTransport(upstream))
    client = openai.OpenAI(api_key="sk-test", base_url="http://minigate.test/v1", http_client=http)
    with client.responses.stream(model="m", input="Weather?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        seen = [event.type for event in stream]
        final = stream.get_final_response()
    assert seen[0] == "response.created" and seen[-1] == "response.completed"
    assert final.output_text == "Let me check."
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
