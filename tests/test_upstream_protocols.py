"""The scripted upstream speaks text completions, embeddings and the Responses API as the openai SDK parses them."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
from openai.types.responses import FunctionToolParam, ResponseFunctionCallArgumentsDeltaEvent, ResponseFunctionToolCall

from tests.support.upstream import Script, ScriptedUpstream


@pytest.fixture
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


def sdk(up: ScriptedUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.base_url, api_key="x", max_retries=0)


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
