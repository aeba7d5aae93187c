"""The drop-in promise: an OpenAI client pointed at minigate behaves as if it talked to the upstream."""

from __future__ import annotations

import asyncio

import httpx
import openai
import orjson

from tests.conftest import AGENT_KEY
from tests.support.servers import RunningGateway
from tests.support.upstream import ScriptedUpstream

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)


def test_sdk_non_streamed_reaches_upstream_with_its_model_id(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply="Paris.")
    completion = client(gateway).chat.completions.create(
        model="cheap", messages=[{"role": "user", "content": "Capital of France?"}]
    )
    assert completion.choices[0].message.content == "Paris."
    assert upstream.requests[-1].json()["model"] == "mini-lora"
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-upstream"


def test_sdk_raw_response_carries_minigate_headers(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-minigate-model"] == "mini"
    assert raw.headers["x-minigate-tier"] == "miniature"
    assert raw.headers["x-minigate-task"] == "unknown"
    assert raw.headers["x-minigate-rule"] == "default"
    assert len(raw.headers["x-minigate-request-id"]) == 32
    assert raw.parse().choices[0].message.content == "hi"


def test_sdk_streamed_with_usage(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply="one two three four")
    stream = client(gateway).chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_sdk_tool_call_round_trip(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(tool_call={"name": "get_weather", "arguments": '{"city": "Oslo"}'})
    completion = client(gateway).chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        parallel_tool_calls=False,
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == {"city": "Oslo"}
    sent = upstream.requests[-1].json()
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is False


def test_async_sdk_streamed_tool_call(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(tool_call={"name": "get_weather", "arguments": '{"city": "Lima"}'})

    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "Lima?"}], tools=[WEATHER_TOOL], stream=True
            )
            arguments = ""
            async for chunk in stream:
                for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                    arguments += call.function.arguments or "" if call.function else ""
            return arguments

    assert orjson.loads(asyncio.run(run())) == {"city": "Lima"}


def test_every_parameter_passes_through_untouched(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    body = (
        b'{"messages":[{"role":"user","content":"caf\\u00e9 1.50"}],"model":"cheap","temperature":0.70,'
        b'"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}},'
        b'"logprobs":true,"top_logprobs":2,"n":2,"seed":7,"stop":["\\n"],"user":"u-1",'
        b'"metadata":{"model":"not-this-one"},"some_future_field":{"a":[1e-05]}}'
    )
    response = httpx.post(f"{gateway.v1}/chat/completions", content=body,
                          headers={"authorization": f"Bearer {AGENT_KEY}", "content-type": "application/json"})
    assert response.status_code == 200
    assert len(response.json()["choices"]) == 2
    # Only the model id changed, every other byte (escapes, number formatting, nested "model") as sent.
    assert upstream.requests[-1].body == body.replace(b'"model":"cheap"', b'"model":"mini-lora"')


def test_body_reaches_client_byte_identical(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply="exact bytes")
    response = httpx.post(f"{gateway.v1}/chat/completions", json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]},
                          headers={"authorization": f"Bearer {AGENT_KEY}"})
    assert response.content == upstream.sent[-1]


def test_stream_reaches_client_byte_identical(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply="a streamed reply in several chunks")
    body = {"model": "gpt-4.1", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json=body,
                      headers={"authorization": f"Bearer {AGENT_KEY}"}) as response:
        received = b"".join(response.iter_bytes())
        assert response.headers["content-type"].startswith("text/event-stream")
    assert received == upstream.sent[-1]
    assert received.endswith(b"data: [DONE]\n\n")


def test_unchanged_model_id_sends_the_body_as_is(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    body = b'{ "model" : "gpt-4.1", "messages": [{"role": "user", "content": "spacing kept"}] }'
    httpx.post(f"{gateway.v1}/chat/completions", content=body, headers={"authorization": f"Bearer {AGENT_KEY}"})
    assert upstream.requests[-1].body == body


def test_models_lists_routes(gateway: RunningGateway) -> None:
    models = client(gateway).models.list()
    assert [m.id for m in models.data] == ["gpt-4.1", "cheap"]


def test_upstream_headers_pass_through(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(headers={"x-request-id": "req_up_1", "openai-processing-ms": "12"})
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-request-id"] == "req_up_1" and raw.headers["openai-processing-ms"] == "12"


def test_usage_is_asked_upstream_and_hidden_from_clients_that_did_not_ask(
    gateway: RunningGateway, upstream: ScriptedUpstream
) -> None:
    upstream.script(reply="one two three")
    with httpx.stream("POST", f"{gateway.v1}/chat/completions",
                      json={"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "x"}]},
                      headers={"authorization": f"Bearer {AGENT_KEY}"}) as response:
        received = b"".join(response.iter_bytes())
    assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}
    assert b'"usage"' in upstream.sent[-1] and b'"usage"' not in received
    events = [orjson.loads(line[6:]) for line in received.split(b"\n\n") if line.startswith(b"data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "one two three"
    assert all(e["choices"] for e in events) and received.endswith(b"data: [DONE]\n\n")
