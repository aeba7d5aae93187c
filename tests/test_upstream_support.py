"""The scripted upstream speaks the OpenAI protocol well enough for the real SDK, and fails on cue."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam

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
