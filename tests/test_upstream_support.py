"""The scripted upstream speaks the OpenAI protocol (chat, text completions, embeddings, Responses) well enough
for the real SDK, and fails on cue."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam
from openai.types.responses import FunctionToolParam, ResponseFunctionCallArgumentsDeltaEvent, ResponseFunctionToolCall

from tests.support.upstream import INVALID_JSON_REPLY, Script, ScriptedUpstream
from tests.support.waiting import eventually

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


def sdk(up: ScriptedUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0)


def ask(up: ScriptedUpstream, model: str = "m") -> ChatCompletion:
    return sdk(up).chat.completions.create(model=model, messages=HELLO)


def function_call(completion: ChatCompletion) -> ChatCompletionMessageFunctionToolCall:
    call = (completion.choices[0].message.tool_calls or [])[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    return call


def test_non_stream_echoes_the_last_user_message(up: ScriptedUpstream) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "echo me"}]},
    ]
    completion = sdk(up).chat.completions.create(model="gpt-4.1", messages=messages, n=2)
    assert [c.message.content for c in completion.choices] == ["echo me", "echo me"]
    assert completion.model == "gpt-4.1" and completion.id.startswith("chatcmpl-")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert up.requests[-1].path == "/v1/chat/completions" and up.requests[-1].headers["authorization"] == "Bearer x"
    assert up.requests[-1].json()["messages"] == messages
    assert orjson.loads(up.sent[-1])["id"] == completion.id


def test_stream_with_usage_is_word_by_word_and_ends_with_done(up: ScriptedUpstream) -> None:
    up.script(reply="one two three four")
    chunks = list(sdk(up).chat.completions.create(model="m", messages=HELLO, stream=True,
                                                  stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["one", " two", " three", " four"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert up.sent[-1].endswith(b"data: [DONE]\n\n")

    plain = list(sdk(up).chat.completions.create(model="m", messages=HELLO, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"


def test_tool_call_non_stream_and_stream(up: ScriptedUpstream) -> None:
    up.script(tool_call={"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'})
    completion = ask(up)
    call = function_call(completion)
    assert completion.choices[0].finish_reason == "tool_calls" and completion.choices[0].message.content is None
    assert call.function.name == "get_weather" and call.id.startswith("call_")

    chunks = list(sdk(up).chat.completions.create(model="m", messages=HELLO, stream=True))
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == "" and len(calls) > 2
    arguments = "".join(t.function.arguments or "" for t in calls if t.function)
    assert orjson.loads(arguments) == {"city": "Oslo", "unit": "celsius"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_malformed_tool_call_and_invalid_json(up: ScriptedUpstream) -> None:
    up.enqueue(Script(malformed_tool_call=True), Script(invalid_json=True))
    call = function_call(ask(up))
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(call.function.arguments)
    assert call.function.name == "undeclared_tool"
    assert ask(up).choices[0].message.content == INVALID_JSON_REPLY


def test_error_status_and_verbatim_body(up: ScriptedUpstream) -> None:
    up.script(status=429, headers={"retry-after": "1"})
    with pytest.raises(openai.RateLimitError) as caught:
        ask(up)
    assert caught.value.code == "rate_limit_exceeded" and caught.value.response.headers["retry-after"] == "1"

    body = b'{"error":{"message":"nope","type":"invalid_request_error","param":null,"code":null}}'
    up.script(status=400, body=body)
    response = httpx.post(f"{up.base_url}/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
    assert response.status_code == 400 and response.content == body == up.sent[-1]


def test_enqueue_runs_in_order_before_per_model_and_default(up: ScriptedUpstream) -> None:
    up.script(reply="default")
    up.script(reply="for mini", model="mini")
    up.enqueue(Script(reply="first"), Script(status=503))
    assert ask(up, "mini").choices[0].message.content == "first"
    with pytest.raises(openai.InternalServerError):
        ask(up, "mini")
    assert ask(up, "mini").choices[0].message.content == "for mini"
    assert ask(up, "big").choices[0].message.content == "default"
    assert len(up.requests) == 4


def test_stream_cut_is_an_incomplete_body(up: ScriptedUpstream) -> None:
    up.script(reply="one two three four five six", cut_after_chunks=3)
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{up.base_url}/chat/completions", json={"model": "m", "messages": HELLO, "stream": True}) as r:
            received.extend(r.iter_bytes())
    assert b"".join(received) == up.sent[-1] and up.sent[-1].count(b"data: ") == 3 and b"[DONE]" not in up.sent[-1]
    # The SDK wraps the cut as APIError since 3.x; 2.x (which litellm pins) lets httpx's error through.
    with pytest.raises((openai.APIError, httpx.RemoteProtocolError)):
        list(sdk(up).chat.completions.create(model="m", messages=HELLO, stream=True))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{up.base_url}/chat/completions", json={"model": "m", "messages": HELLO})
    assert up.open_streams == 0


def test_client_leaving_ends_the_stream_and_latency_delays_headers(up: ScriptedUpstream) -> None:
    up.script(reply=" ".join(["word"] * 100), chunk_delay_s=0.05)
    with httpx.stream("POST", f"{up.base_url}/chat/completions", json={"model": "m", "messages": HELLO, "stream": True}) as r:
        chunks = r.iter_bytes()  # held: a dropped iterator closes the connection at once
        next(chunks)
        assert up.open_streams == 1
    # Well before the 5 s the whole stream would take.
    eventually(lambda: up.open_streams == 0, timeout=2, interval=0.01, what="the server ends the stream")

    up.script(latency_s=0.3)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{up.base_url}/chat/completions", json={"model": "m", "messages": HELLO}, timeout=0.05)


def test_embeddings_are_deterministic_in_both_encodings(up: ScriptedUpstream) -> None:
    first = sdk(up).embeddings.create(model="emb", input=["a", "b"])  # the SDK asks for base64
    again = httpx.post(f"{up.base_url}/embeddings", json={"model": "emb", "input": "a", "dimensions": 16}).json()
    assert len(first.data) == 2 and len(first.data[0].embedding) == 16
    assert first.data[0].embedding == pytest.approx(again["data"][0]["embedding"], abs=1e-6)
    assert first.data[0].embedding != first.data[1].embedding


def test_lora_adapters_load_list_and_unload(up: ScriptedUpstream) -> None:
    adapter = {"lora_name": "ticket-lora", "lora_path": "/adapters/ticket"}
    assert httpx.post(f"{up.base_url}/load_lora_adapter", json=adapter).status_code == 200
    assert up.adapters == {"ticket-lora"}
    duplicate = httpx.post(f"{up.base_url}/load_lora_adapter", json=adapter)
    assert duplicate.status_code == 400 and "already been loaded" in duplicate.json()["error"]["message"]
    models = {m.id: m for m in sdk(up).models.list()}
    assert set(models) == {"scripted-base", "ticket-lora"}
    assert models["ticket-lora"].model_extra == {"root": "/adapters/ticket", "parent": "scripted-base"}
    assert httpx.post(f"{up.base_url}/unload_lora_adapter", json={"lora_name": "ticket-lora"}).status_code == 200
    assert httpx.post(f"{up.base_url}/unload_lora_adapter", json={"lora_name": "ticket-lora"}).status_code == 400
    assert up.adapters == set() and [m.id for m in sdk(up).models.list()] == ["scripted-base"]


def test_malformed_json_unknown_path_and_health(up: ScriptedUpstream) -> None:
    bad = httpx.post(f"{up.base_url}/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert up.requests[-1].body == b'{"model": '
    assert httpx.get(f"{up.base_url}/nothing").status_code == 404
    assert httpx.get(up.base_url.removesuffix("/v1") + "/health").status_code == 200


# -- text completions, embeddings and the Responses API --


def test_text_completions_echo_the_prompt_and_stream_to_done(up: ScriptedUpstream) -> None:
    completion = sdk(up).completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", n=2)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert [c.text for c in completion.choices] == ["Once upon a time"] * 2 and [c.index for c in completion.choices] == [0, 1]
    assert completion.usage is not None and completion.usage.prompt_tokens == 4 and completion.usage.completion_tokens == 8
    assert up.requests[-1].path == "/v1/completions" and up.requests[-1].json()["prompt"] == "Once upon a time"

    up.script(reply="one two three")
    chunks = list(sdk(up).completions.create(model="m", prompt="x", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert up.sent[-1].endswith(b"data: [DONE]\n\n")
    assert sdk(up).completions.create(model="m", prompt=["a", "b"]).choices[1].text == "one two three"


def test_text_completions_fail_and_cut_like_chat(up: ScriptedUpstream) -> None:
    up.enqueue(Script(status=503))
    with pytest.raises(openai.InternalServerError):
        sdk(up).completions.create(model="m", prompt="x")
    up.script(reply="a b c d e", cut_after_chunks=2)
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{up.base_url}/completions", json={"model": "m", "prompt": "x", "stream": True}) as r:
            list(r.iter_bytes())
    assert up.sent[-1].count(b"data: ") == 2
    assert httpx.post(f"{up.base_url}/completions", json={"model": "m"}).status_code == 400


def test_embeddings_base64_dimensions_and_usage(up: ScriptedUpstream) -> None:
    raw = httpx.post(f"{up.base_url}/embeddings", json={"model": "e", "input": ["a b", "c"], "encoding_format": "base64",
                                                        "dimensions": 8}).json()
    vector = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert len(vector) == 8 and raw["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert raw["object"] == "list" and raw["data"][1]["object"] == "embedding" and raw["data"][1]["index"] == 1
    via_sdk = sdk(up).embeddings.create(model="e", input="a b", dimensions=8)
    assert via_sdk.data[0].embedding == pytest.approx(list(vector), abs=1e-6) and via_sdk.usage.total_tokens == 2
    assert up.requests[-1].json()["encoding_format"] == "base64"


def test_responses_message_and_usage(up: ScriptedUpstream) -> None:
    response = sdk(up).responses.create(model="gpt-4.1", instructions="Be brief.", max_output_tokens=40,
                                        input=[{"role": "user", "content": [{"type": "input_text", "text": "echo me"}]}])
    assert response.output_text == "echo me" and response.status == "completed" and response.id.startswith("resp_")
    assert response.instructions == "Be brief." and response.max_output_tokens == 40 and response.model == "gpt-4.1"
    assert response.usage is not None and response.usage.output_tokens == 2 and response.usage.input_tokens > 3
    assert up.requests[-1].path == "/v1/responses" and up.requests[-1].json()["instructions"] == "Be brief."
    assert orjson.loads(up.sent[-1])["id"] == response.id


def test_responses_function_call(up: ScriptedUpstream) -> None:
    up.script(tool_call={"name": "get_weather", "arguments": '{"city": "Oslo"}'})
    tools: list[FunctionToolParam] = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"},
                                       "strict": False}]
    response = sdk(up).responses.create(model="m", input="weather?", tools=tools)
    call = response.output[0]
    assert isinstance(call, ResponseFunctionToolCall) and call.call_id.startswith("call_")
    assert call.name == "get_weather" and call.arguments == '{"city": "Oslo"}' and response.output_text == ""
    assert up.requests[-1].json()["tools"] == tools

    events = list(sdk(up).responses.create(model="m", input="weather?", tools=tools, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    deltas = "".join(e.delta for e in events if isinstance(e, ResponseFunctionCallArgumentsDeltaEvent))
    assert deltas == '{"city": "Oslo"}'


def test_responses_stream_event_sequence(up: ScriptedUpstream) -> None:
    up.script(reply="one two three")
    with sdk(up).responses.stream(model="m", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 3, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "one two three" and final.usage is not None
    assert b"[DONE]" not in up.sent[-1] and up.sent[-1].startswith(b"event: response.created\ndata: ")


def test_responses_cut_and_error(up: ScriptedUpstream) -> None:
    up.enqueue(Script(status=429))
    with pytest.raises(openai.RateLimitError):
        sdk(up).responses.create(model="m", input="x")
    up.script(reply="a b", cut_after_chunks=100)  # past the last event: the body still never ends
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{up.base_url}/responses", json={"model": "m", "input": "x", "stream": True}) as r:
            list(r.iter_bytes())
    assert up.sent[-1].count(b"event: ") == 10 and up.open_streams == 0
