"""The `anthropic` upstream kind end to end: the OpenAI SDK talks to minigate, minigate to a scripted
server speaking Anthropic's Messages API, and neither side can tell it is not talking to its own kind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pydantic
import pytest
from pydantic import TypeAdapter

from minigate.serving.anthropic import AnthropicClient
from minigate.serving.options import ClientOptions
from minigate.serving.settings import AnthropicUpstream, Upstream
from tests.conftest import ADMIN_KEY, AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.anthropic_upstream import AnthropicScript, ScriptedAnthropic
from tests.support.servers import RunningGateway, run_gateway, write_config
from tests.support.upstream import ScriptedUpstream

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city", "parameters": CITY}}
ANTHROPIC_WEATHER = {"name": "get_weather", "description": "Weather for a city", "input_schema": CITY}
LABEL_SCHEMA = {"type": "object", "properties": {"label": {"enum": ["billing", "shipping"]}}, "required": ["label"]}
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture
def anthropic() -> Iterator[ScriptedAnthropic]:
    with ScriptedAnthropic() as up:
        yield up


def claude_config(up: ScriptedAnthropic, **overrides: Any) -> dict[str, Any]:
    """One Anthropic upstream serving the route `claude`."""
    return gateway_config(
        up.base_url,
        upstreams={"claude": {"kind": "anthropic", "base_url": up.base_url, "api_key": up.api_key}},
        models={"sonnet": {"upstream": "claude", "model": "claude-sonnet-4-5", "tier": "frontier"}},
        routes={"claude": {"default": "sonnet"}},
        **overrides,
    )


@pytest.fixture
def gateway(anthropic: ScriptedAnthropic, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(claude_config(anthropic))


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)


def sse_events(raw: bytes) -> list[Any]:
    return [orjson.loads(event[6:]) for event in raw.split(b"\n\n") if event.startswith(b"data: {")]


# -- text --


def test_text_completion_with_system_prompt(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(text="Paris.")
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=[
        {"role": "system", "content": "Answer in one word."},
        {"role": "developer", "content": "Be polite."},
        {"role": "user", "content": "Capital of France?"},
    ])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude-sonnet-4-5" and completion.id.startswith("msg_")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert raw.headers["x-minigate-model"] == "sonnet"
    sent = anthropic.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == anthropic.api_key and sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": [{"type": "text", "text": "Answer in one word."}, {"type": "text", "text": "Be polite."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}],
    }


def test_sampling_parameters_are_translated(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                   max_completion_tokens=50, temperature=0.2, top_p=0.9, stop="END", user="u-1",
                                   seed=7, store=False, n=1)
    sent = anthropic.last()
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (50, 0.2, 0.9)
    assert sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "u-1"}
    assert not {"seed", "store", "n", "user"} & set(sent)


def test_streamed_text_arrives_in_pieces(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(text="one two three four", chunk_delay_s=0.02, split_events=True)
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "count"}],
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["one", " two", " three", " four"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert anthropic.last()["stream"] is True


def test_usage_is_relayed_only_to_clients_that_asked(client: openai.OpenAI, gateway: RunningGateway,
                                                     anthropic: ScriptedAnthropic) -> None:
    anthropic.script(text="a b c", cache_read_tokens=100, cache_creation_tokens=20)
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                                 stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert usage.completion_tokens == 3 and usage.prompt_tokens > 120
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 100
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", headers=AUTH, json={
            "model": "claude", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as response:
        received = b"".join(response.iter_bytes())
    assert b'"usage"' not in received and received.endswith(b"data: [DONE]\n\n")
    assert all(event["choices"] for event in sse_events(received))


def test_streamed_usage_reaches_the_call_log(anthropic: ScriptedAnthropic, tmp_path: Path) -> None:
    anthropic.script(text="one two three")
    config = claude_config(anthropic, logging={"store": f"sqlite:///{tmp_path}/c.db"})
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        response = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json={
            "model": "claude", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        request_id = response.headers["x-minigate-request-id"]
    [(status, input_tokens, output_tokens)] = fetch(
        f"sqlite:///{tmp_path}/c.db",
        f"SELECT status, input_tokens, output_tokens FROM calls WHERE request_id = '{request_id}'")
    assert status == 200 and input_tokens > 0 and output_tokens == 3


# -- tools --


def test_tool_call(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(tool_uses=[{"name": "get_weather", "input": {"city": "Oslo"}}])
    completion = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Oslo?"}],
                                                tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("toolu_")
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == {"city": "Oslo"}
    sent = anthropic.last()
    assert sent["tools"] == [ANTHROPIC_WEATHER]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_named_tool_choice(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(tool_uses=[{"name": "get_weather", "input": {"city": "Oslo"}}])
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Oslo?"}], tools=[WEATHER],
                                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert anthropic.last()["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_streamed_parallel_tool_calls(gateway: RunningGateway, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(text="Checking both.", chunk_delay_s=0.01, tool_uses=[
        {"name": "get_weather", "input": {"city": "Lima"}}, {"name": "get_weather", "input": {"city": "Quito"}}])

    async def run() -> tuple[str, dict[int, dict[str, str]], str | None]:
        async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="claude", messages=[{"role": "user", "content": "Lima and Quito?"}], tools=[WEATHER], stream=True)
            text, calls, finish = "", {}, None
            async for chunk in stream:
                delta = chunk.choices[0].delta
                text += delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
                for call in delta.tool_calls or []:
                    held = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    held["id"] += call.id or ""
                    held["name"] += call.function.name or "" if call.function else ""
                    held["arguments"] += call.function.arguments or "" if call.function else ""
            return text, calls, finish

    text, calls, finish = asyncio.run(run())
    assert text == "Checking both." and finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_weather"]
    assert all(c["id"] for c in calls.values())
    assert [orjson.loads(calls[i]["arguments"]) for i in (0, 1)] == [{"city": "Lima"}, {"city": "Quito"}]


def test_tool_results_round_trip(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(text="Lima is sunny, Quito rainy.")
    calls = [{"id": f"call_{city}", "type": "function",
              "function": {"name": "get_weather", "arguments": orjson.dumps({"city": city}).decode()}}
             for city in ("Lima", "Quito")]
    completion = client.chat.completions.create(model="claude", tools=[WEATHER], messages=[
        {"role": "user", "content": "Lima and Quito?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_Lima", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_Quito", "content": [{"type": "text", "text": "rainy"}]},
    ])
    assert completion.choices[0].message.content == "Lima is sunny, Quito rainy."
    assert anthropic.last()["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_Lima", "name": "get_weather", "input": {"city": "Lima"}},
            {"type": "tool_use", "id": "call_Quito", "name": "get_weather", "input": {"city": "Quito"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_Lima", "content": [{"type": "text", "text": "sunny"}]},
            {"type": "tool_result", "tool_use_id": "call_Quito", "content": [{"type": "text", "text": "rainy"}]}]},
    ]


# -- images and JSON --


def test_images_become_image_blocks(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}])
    assert anthropic.last()["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


class Label(pydantic.BaseModel):
    label: str


def test_json_schema_through_a_forced_tool(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(tool_uses=[{"name": "Label", "input": {"label": "billing"}}])
    completion = client.chat.completions.parse(model="claude", response_format=Label,
                                               messages=[{"role": "user", "content": "I was charged twice."}])
    message = completion.choices[0].message
    assert message.parsed == Label(label="billing") and not message.tool_calls
    assert completion.choices[0].finish_reason == "stop"
    sent = anthropic.last()
    assert sent["tool_choice"] == {"type": "tool", "name": "Label"}
    [tool] = sent["tools"]
    assert tool["name"] == "Label"
    assert tool["input_schema"]["properties"] == {"label": {"title": "Label", "type": "string"}}


def test_streamed_json_schema_with_a_non_object_schema(gateway: RunningGateway, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(tool_uses=[{"name": "intent", "input": {"value": "shipping"}}])
    enum = {"type": "json_schema", "json_schema": {"name": "intent", "schema": {"enum": ["billing", "shipping"]}}}
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", headers=AUTH, json={
            "model": "claude", "stream": True, "response_format": enum,
            "messages": [{"role": "user", "content": "Where is my parcel?"}]}) as response:
        events = sse_events(response.read())
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert orjson.loads(content) == "shipping" and events[-1]["choices"][0]["finish_reason"] == "stop"
    assert anthropic.last()["tools"][0]["input_schema"] == {
        "type": "object", "properties": {"value": {"enum": ["billing", "shipping"]}}, "required": ["value"]}


# -- refusals and errors --


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"temperature": 1.5}, "temperature"),
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_untranslatable_parameters_are_refused_before_the_upstream(
    gateway: RunningGateway, anthropic: ScriptedAnthropic, extra: dict[str, Any], param: str
) -> None:
    response = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                          json={"model": "claude", "messages": [{"role": "user", "content": "x"}], **extra})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and param in error["message"]
    assert anthropic.requests == []


@pytest.mark.parametrize(("status", "kind", "exception"), [
    (400, "invalid_request_error", openai.BadRequestError),
    (401, "authentication_error", openai.AuthenticationError),
    (404, "not_found_error", openai.NotFoundError),
    (429, "rate_limit_error", openai.RateLimitError),
])
def test_client_errors_keep_their_status(client: openai.OpenAI, anthropic: ScriptedAnthropic, status: int, kind: str,
                                         exception: type[openai.APIStatusError]) -> None:
    anthropic.script(status=status, headers={"retry-after": "3"})
    with pytest.raises(exception) as caught:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status and caught.value.code == kind
    assert "scripted failure" in caught.value.message and caught.value.response.headers["retry-after"] == "3"


@pytest.mark.parametrize("status", [500, 529])
def test_server_errors_are_upstream_errors(client: openai.OpenAI, anthropic: ScriptedAnthropic, status: int) -> None:
    anthropic.script(status=status)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502 and caught.value.code == "upstream_unavailable"
    assert f"HTTP {503 if status == 529 else status}" in caught.value.message


def test_error_event_mid_stream_reaches_the_client_as_an_sse_error(gateway: RunningGateway,
                                                                   anthropic: ScriptedAnthropic) -> None:
    anthropic.script(text="partial answer here", stream_error="overloaded_error")
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", headers=AUTH, json={
            "model": "claude", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as response:
        events = sse_events(response.read())
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["error"]["type"] == "upstream_error" and "overloaded_error" in events[-1]["error"]["message"]
    assert gateway.metric("minigate_upstream_errors_total", {"upstream": "claude", "kind": "stream_error"}) == 1


def test_stream_ending_before_message_stop_is_a_cut(client: openai.OpenAI, anthropic: ScriptedAnthropic) -> None:
    anthropic.script(text="one two three", end_after_events=5)
    with pytest.raises(openai.APIError, match="ended the stream early"):
        list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], stream=True))


def cascade(anthropic: ScriptedAnthropic, upstream: ScriptedUpstream, escalate_on: list[str]) -> dict[str, Any]:
    """Route `gpt-4.1` tries `haiku` (Anthropic) first and escalates to the scripted OpenAI upstream."""
    config = gateway_config(upstream.base_url)
    config["upstreams"]["claude"] = {"kind": "anthropic", "base_url": anthropic.base_url, "api_key": anthropic.api_key}
    config["models"]["haiku"] = {"upstream": "claude", "model": "claude-haiku-4-5", "tier": "miniature"}
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
        {"name": "haiku-first", "when": {}, "use": "haiku", "escalate_on": escalate_on}]}
    upstream.script(reply="from the frontier")
    return config


def answer(gateway: RunningGateway, stream: bool, **extra: Any) -> tuple[str, httpx.Headers]:
    raw = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0).chat.completions.with_raw_response
    response = raw.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}], stream=stream, **extra)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices), response.headers
    return response.parse().choices[0].message.content or "", response.headers


@pytest.mark.parametrize("stream", [False, True])
def test_overloaded_miniature_escalates(anthropic: ScriptedAnthropic, upstream: ScriptedUpstream,
                                        make_gateway: Callable[..., RunningGateway], stream: bool) -> None:
    """An overloaded Anthropic model counts as an error for the cascade: the client gets the escalation model."""
    gateway = make_gateway(cascade(anthropic, upstream, ["error", "empty"]))
    # Before any content: once content reached the client the stream can only end in an SSE error.
    overloaded = AnthropicScript(stream_error="overloaded_error", error_after_events=1)
    anthropic.script(overloaded if stream else AnthropicScript(status=529))
    text, headers = answer(gateway, stream)
    assert text == "from the frontier" and headers["x-minigate-escalated"] == "error"
    assert len(anthropic.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_translated_reply_passes_the_cascade_checks(
    anthropic: ScriptedAnthropic, upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], stream: bool
) -> None:
    """The checks read the translated reply (non-streamed: read twice, once to check and once to relay)."""
    gateway = make_gateway(cascade(anthropic, upstream, ["error", "invalid_json", "empty"]))
    anthropic.script(tool_uses=[{"name": "label", "input": {"label": "billing"}}])
    labels = {"type": "json_schema", "json_schema": {"name": "label", "schema": LABEL_SCHEMA}}
    text, headers = answer(gateway, stream, response_format=labels)
    assert orjson.loads(text) == {"label": "billing"} and "x-minigate-escalated" not in headers
    assert headers["x-minigate-model"] == "haiku" and not upstream.requests


def test_config_defaults() -> None:
    spec = TypeAdapter(Upstream).validate_python({"kind": "anthropic"})
    assert isinstance(spec, AnthropicUpstream)
    assert (spec.base_url, spec.anthropic_version, spec.api_key) == ("https://api.anthropic.com", "2023-06-01", None)
    with pytest.raises(pydantic.ValidationError, match="anthropic_verison"):
        TypeAdapter(Upstream).validate_python({"kind": "anthropic", "anthropic_verison": "2023-06-01"})


def test_a_base_url_given_with_v1_works_too(anthropic: ScriptedAnthropic) -> None:
    settings = AnthropicUpstream(kind="anthropic", base_url=f"{anthropic.base_url}/v1/", api_key=anthropic.api_key)

    async def ask() -> tuple[int, bytes]:
        client = AnthropicClient(ClientOptions.of("claude", settings), anthropic_version=settings.anthropic_version)
        try:
            reply = await client.chat(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
            return reply.status, await reply.read()
        finally:
            await client.aclose()

    status, body = asyncio.run(ask())
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"] == "hi"
    assert anthropic.requests[-1].path == "/v1/messages"


def test_readyz_probes_the_anthropic_upstream(gateway: RunningGateway) -> None:
    assert httpx.get(f"{gateway.base_url}/readyz", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()["upstreams"] == {"claude": "reachable"}
