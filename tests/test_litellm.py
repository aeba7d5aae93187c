"""Kind `litellm`: chat completions through litellm, against the scripted upstream over real HTTP.

litellm reaches the scripted upstream through its `openai/` provider (any OpenAI-compatible API) with
`api_base` pointing at it: litellm's own request building, HTTP client, response parsing and error
mapping all run; only the far end is scripted.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from minigate.config import load_config
from minigate.errors import ConfigError
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import RunningGateway, write_config
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

needs_litellm = pytest.mark.skipif(importlib.util.find_spec("litellm") is None,
                                   reason="the litellm extra is not installed: pip install 'minigate[litellm]'")
AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
HELLO = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}


def litellm_config(base_url: str, **upstream: Any) -> dict[str, Any]:
    """Route `tail` to model `tail` on a litellm upstream (provider `openai`, i.e. any OpenAI-compatible API)."""
    config = gateway_config(base_url)
    config["upstreams"] = {"tail": {"kind": "litellm", "provider": "openai", "base_url": base_url,
                                    "api_key": "sk-tail", **upstream}}
    config["models"] = {"tail": {"upstream": "tail", "model": "tail-model-1", "tier": "frontier",
                                 "price": {"input_per_mtok": 1.0, "output_per_mtok": 3.0}}}
    config["routes"] = {"tail": {"default": "tail"}}
    return config


@pytest.fixture
def gateway(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(litellm_config(upstream.base_url))


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)


@pytest.mark.slow
@needs_litellm
def test_a_completion_reaches_the_provider_and_comes_back_openai_shaped(
        gateway: RunningGateway, client: openai.OpenAI, upstream: ScriptedUpstream, tmp_path: Path) -> None:
    raw = client.chat.completions.with_raw_response.create(model="tail", messages=HELLO, temperature=0.2)
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.choices[0].message.content == "hello there"
    assert reply.choices[0].finish_reason == "stop" and reply.usage is not None and reply.usage.total_tokens > 0
    assert raw.headers["x-minigate-model"] == "tail" and raw.headers["content-type"] == "application/json"

    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == "Bearer sk-tail"
    assert sent.json()["model"] == "tail-model-1" and sent.json()["temperature"] == 0.2  # no `openai/` prefix

    # The first batch may wait for the sealing worker to start.
    eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 1)
    [(tokens_in, tokens_out, cost)] = fetch(f"sqlite:///{tmp_path}/calls-0.db",
                                            "SELECT input_tokens, output_tokens, cost_usd FROM calls")
    assert (tokens_in, tokens_out) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert cost == pytest.approx((tokens_in * 1.0 + tokens_out * 3.0) / 1e6)


@needs_litellm
def test_a_stream_is_relayed_as_sse_ending_with_done(gateway: RunningGateway, client: openai.OpenAI,
                                                     upstream: ScriptedUpstream) -> None:
    upstream.script(reply="one two three four")
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", headers=AUTH, timeout=30,
                      json={"model": "tail", "messages": HELLO, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    chunks = [orjson.loads(line.removeprefix("data: ")) for line in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "one two three four"
    assert all("usage" not in c for c in chunks)  # the gateway asked for usage upstream; the client didn't
    assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}

    whole = client.chat.completions.create(model="tail", messages=HELLO).usage
    stream = client.chat.completions.create(model="tail", messages=HELLO, stream=True,
                                            stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert whole is not None and len(usage) == 1 and usage[0].completion_tokens == whole.completion_tokens


@needs_litellm
def test_tool_calls_pass_through(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.script(tool_call={"name": "get_weather", "arguments": '{"city": "Oslo"}'})
    reply = client.chat.completions.create(model="tail", messages=HELLO, tools=[WEATHER_TOOL])
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == {"city": "Oslo"}
    assert upstream.requests[-1].json()["tools"][0]["function"]["name"] == "get_weather"

    stream = client.chat.completions.create(model="tail", messages=HELLO, tools=[WEATHER_TOOL], stream=True)
    pieces = [c.choices[0].delta.tool_calls[0].function.arguments or "" for c in stream
              if c.choices and c.choices[0].delta.tool_calls]
    assert orjson.loads("".join(pieces)) == {"city": "Oslo"}


@needs_litellm
def test_provider_errors_reach_the_client_in_openai_shape(gateway: RunningGateway, client: openai.OpenAI,
                                                          upstream: ScriptedUpstream) -> None:
    upstream.enqueue(Script(status=400))
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tail", messages=HELLO)
    assert "scripted upstream error (status 400)" in bad.value.message

    upstream.enqueue(Script(status=503))
    response = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json={"model": "tail", "messages": HELLO})
    assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
    assert "'tail'" in response.json()["error"]["message"]
    assert gateway.metric("minigate_upstream_errors_total", {"upstream": "tail", "kind": "status_503"}) == 1


@needs_litellm
def test_an_unreachable_provider_is_a_502(make_gateway: Callable[..., RunningGateway]) -> None:
    gateway = make_gateway(litellm_config("http://127.0.0.1:9/v1"))
    response = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json={"model": "tail", "messages": HELLO},
                          timeout=60)
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_unavailable"
    assert gateway.metric("minigate_upstream_errors_total", {"upstream": "tail", "kind": "connect_error"}) == 1


@needs_litellm
def test_a_slow_provider_is_a_504(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    upstream.script(latency_s=5)
    gateway = make_gateway(litellm_config(upstream.base_url, timeouts={"read_s": 0.3, "total_s": 1}))
    response = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json={"model": "tail", "messages": HELLO},
                          timeout=60)
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert gateway.metric("minigate_upstream_errors_total", {"upstream": "tail", "kind": "timeout"}) == 1


@needs_litellm
def test_a_stream_cut_ends_with_an_error_event(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.script(reply="one two three four five", cut_after_chunks=3)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="ended the stream early"):
        for chunk in client.chat.completions.create(model="tail", messages=HELLO, stream=True):
            received += [chunk.choices[0].delta.content or ""] if chunk.choices else []
    assert "".join(received) == "one two"  # the events before the cut were relayed as they came


@needs_litellm
def test_a_client_cannot_redirect_the_call(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    """litellm's keyword arguments in a body (api_base, api_key, mock_response) never reach litellm."""
    reply = client.chat.completions.create(model="tail", messages=HELLO, extra_body={
        "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-stolen", "mock_response": "mocked"})
    assert reply.choices[0].message.content == "hello there"
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-tail"


@needs_litellm
def test_params_go_to_litellm_and_may_not_override_the_upstreams_own(upstream: ScriptedUpstream,
                                                                      make_gateway: Callable[..., RunningGateway],
                                                                      tmp_path: Path) -> None:
    gateway = make_gateway(litellm_config(upstream.base_url, params={"seed": 7}, headers={"x-team": "a"}))
    assert httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                      json={"model": "tail", "messages": HELLO}).status_code == 200
    assert upstream.requests[-1].json()["seed"] == 7 and upstream.requests[-1].headers["x-team"] == "a"
    path = write_config(tmp_path / "bad.yaml", litellm_config(upstream.base_url, params={"api_base": "http://x"}))
    with pytest.raises(ConfigError, match=r"upstreams\.tail\.params: .*api_base: set by the gateway"):
        load_config(path)


def test_without_litellm_the_config_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # how Python marks a module as not importable
    path = write_config(tmp_path / "minigate.yaml", litellm_config("http://127.0.0.1:9/v1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if "kind: litellm" in text)
    assert (f"minigate.yaml:{line}: upstreams.tail.kind: Value error, the litellm kind needs the litellm package: "
            "pip install 'minigate[litellm]'") in str(caught.value)


_SERVE_AND_REPORT = """
import sys, httpx, yaml
from pathlib import Path
from tests.conftest import AGENT_KEY
from tests.support.servers import run_gateway
from tests.support.upstream import ScriptedUpstream
config = yaml.safe_load(sys.stdin.read())
with ScriptedUpstream() as up:
    for spec in config["upstreams"].values():
        spec["base_url"] = up.base_url
    path = Path(sys.argv[1])
    path.write_text(yaml.safe_dump(config))
    with run_gateway(path) as gateway:
        reply = httpx.post(gateway.v1 + "/chat/completions", headers={"authorization": "Bearer " + AGENT_KEY},
                           json={"model": next(iter(config["routes"])), "messages": [{"role": "user", "content": "hi"}]},
                           timeout=60)
        print(reply.status_code, "litellm" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("make_config", "imported"), [
    (lambda tmp: gateway_config("http://set-by-the-child/v1"), False),
    pytest.param(lambda tmp: litellm_config("http://set-by-the-child/v1"), True, marks=needs_litellm),
])
def test_litellm_is_imported_only_by_a_litellm_upstream(tmp_path: Path, make_config: Callable[[Path], dict[str, Any]],
                                                        imported: bool) -> None:
    config = make_config(tmp_path)
    config["logging"] = {"store": f"sqlite:///{tmp_path}/calls.db"}
    result = subprocess.run([sys.executable, "-c", _SERVE_AND_REPORT, str(tmp_path / "minigate.yaml")],
                            input=orjson.dumps(config).decode(), capture_output=True, text=True, timeout=180,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", str(imported)]
