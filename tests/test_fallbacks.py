"""Per-route fallback chains: the next model when one's upstream fails before any byte reached the client."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
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
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
HELLO = [{"role": "user", "content": "hello there"}]
PRICE = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}


@pytest.fixture
def three() -> Iterator[tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]]:
    with ScriptedUpstream() as a, ScriptedUpstream() as b, ScriptedUpstream() as c:
        yield a, b, c


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def chain_config(urls: list[str], **primary: Any) -> dict[str, Any]:
    """Route `agent`: model `a` (upstream up-a), falling back to `b`, then `c`, each on its own upstream."""
    config = gateway_config(urls[0])
    names = ["a", "b", "c"][: len(urls)]
    config["upstreams"] = {f"up-{n}": {"kind": "openai", "base_url": url, "api_key": "sk-up",
                                       **(primary if n == "a" else {})} for n, url in zip(names, urls, strict=True)}
    config["models"] = {n: {"upstream": f"up-{n}", "model": f"model-{n}", "tier": "frontier", "price": PRICE}
                        for n in names}
    config["routes"] = {"agent": {"default": "a", "fallbacks": names[1:]}}
    return config


def post(gateway: RunningGateway, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, timeout=30,
                      json={"model": "agent", "messages": HELLO, **body})


def record(gateway: RunningGateway, tmp_path: Path, request_id: str) -> list[tuple[Any, ...]]:
    # The first batch may wait for the sealing worker to start.
    eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 1)
    return fetch(f"sqlite:///{tmp_path}/calls-0.db",
                 "SELECT model, upstream, status, attempts, input_tokens, output_tokens, cost_usd FROM calls "
                 f"WHERE request_id = '{request_id}'")


def errors(gateway: RunningGateway, upstream: str, kind: str) -> float:
    return gateway.metric("minigate_upstream_errors_total", {"upstream": upstream, "kind": kind})


def test_a_failing_model_is_replaced_by_the_next_and_billed_once(
        make_gateway: Callable[..., RunningGateway], tmp_path: Path,
        three: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]) -> None:
    a, b, c = three
    a.script(status=503)
    gateway = make_gateway(chain_config([a.base_url, b.base_url, c.base_url]))
    response = post(gateway)
    assert response.status_code == 200, response.text
    assert response.headers["x-minigate-model"] == "b" and response.headers["x-minigate-fallback"] == "a=status_503"
    assert response.json()["choices"][0]["message"]["content"] == "hello there"
    assert [r.json()["model"] for r in a.requests + b.requests] == ["model-a", "model-b"] and c.requests == []
    assert errors(gateway, "up-a", "status_503") == 1

    [(model, upstream, status, attempts, tokens_in, tokens_out, cost)] = record(
        gateway, tmp_path, response.headers["x-minigate-request-id"])
    assert (model, upstream, status) == ("b", "up-b", 200)
    assert [(x["upstream"], x["model"], x["status"]) for x in orjson.loads(attempts)] == [
        ("up-a", "model-a", 503), ("up-b", "model-b", 200)]
    usage = response.json()["usage"]
    assert (tokens_in, tokens_out) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert cost == pytest.approx((tokens_in * PRICE["input_per_mtok"] + tokens_out * PRICE["output_per_mtok"]) / 1e6)


def test_the_chain_goes_on_until_one_answers(make_gateway: Callable[..., RunningGateway],
                                             three: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]) -> None:
    _, b, c = three
    b.script(status=500)
    gateway = make_gateway(chain_config([closed_port_url(), b.base_url, c.base_url]))
    response = post(gateway)
    assert response.status_code == 200 and response.headers["x-minigate-model"] == "c"
    assert response.headers["x-minigate-fallback"] == "a=connect_error, b=status_500"
    assert (errors(gateway, "up-a", "connect_error"), errors(gateway, "up-b", "status_500")) == (1, 1)


def test_rate_limits_fall_back_after_the_upstreams_own_retries(
        make_gateway: Callable[..., RunningGateway],
        three: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]) -> None:
    a, b, c = three
    a.script(status=429, headers={"retry-after": "0"})
    gateway = make_gateway(chain_config([a.base_url, b.base_url, c.base_url], retry={"attempts": 1}))
    response = post(gateway)
    assert response.status_code == 200 and response.headers["x-minigate-fallback"] == "a=status_429"
    assert len(a.requests) == 2 and len(b.requests) == 1  # the retry first, then the fallback


def test_a_timeout_falls_back(make_gateway: Callable[..., RunningGateway],
                              three: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]) -> None:
    a, b, c = three
    a.script(latency_s=5)
    gateway = make_gateway(chain_config([a.base_url, b.base_url, c.base_url],
                                        timeouts={"read_s": 0.3, "total_s": 0.5}))
    response = post(gateway)
    assert response.status_code == 200 and response.headers["x-minigate-fallback"] == "a=timeout"
    assert errors(gateway, "up-a", "timeout") == 1


def test_a_stream_falls_back_before_its_first_byte(make_gateway: Callable[..., RunningGateway],
                                                   three: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]) -> None:
    a, b, c = three
    a.script(status=502)
    gateway = make_gateway(chain_config([a.base_url, b.base_url, c.base_url]))
    client = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="agent", messages=HELLO, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text == "hello there" and raw.headers["x-minigate-fallback"] == "a=status_502"
    assert b.requests[0].json()["stream"] is True


def test_when_every_model_fails_the_client_sees_the_last_failure(
        make_gateway: Callable[..., RunningGateway],
        three: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]) -> None:
    a, b, c = three
    for up in three:
        up.script(status=503)
    gateway = make_gateway(chain_config([a.base_url, b.base_url, c.base_url]))
    response = post(gateway)
    assert response.status_code == 502 and "'up-c'" in response.json()["error"]["message"]
    assert response.headers["x-minigate-fallback"] == "a=status_503, b=status_503"
    assert [errors(gateway, f"up-{n}", "status_503") for n in "abc"] == [1, 1, 1]


def test_client_errors_are_not_retried_elsewhere(make_gateway: Callable[..., RunningGateway],
                                                 three: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]) -> None:
    a, b, c = three
    a.script(status=400)
    gateway = make_gateway(chain_config([a.base_url, b.base_url, c.base_url]))
    response = post(gateway)
    assert response.status_code == 400 and "x-minigate-fallback" not in response.headers
    assert b.requests == [] and c.requests == []


def test_an_escalated_miniature_falls_back_after_its_escalation(
        make_gateway: Callable[..., RunningGateway],
        three: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]) -> None:
    a, b, c = three
    a.script(status=500)
    b.script(status=503)
    config = chain_config([a.base_url, b.base_url, c.base_url])
    config["models"]["a"]["tier"] = "miniature"
    config["routes"]["agent"] = {"default": "b", "escalate_to": "b", "fallbacks": ["b", "c"],
                                 "rules": [{"name": "mini", "use": "a", "escalate_on": ["error"]}]}
    gateway = make_gateway(config)
    response = post(gateway)
    assert response.status_code == 200 and response.headers["x-minigate-model"] == "c"
    assert response.headers["x-minigate-escalated"] == "error"
    assert response.headers["x-minigate-fallback"] == "b=status_503"  # b, the escalation, is not tried twice
    assert (len(a.requests), len(b.requests), len(c.requests)) == (1, 1, 1)


def test_fallbacks_name_models_of_the_config(tmp_path: Path) -> None:
    config = chain_config(["http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"])
    config["routes"]["agent"]["fallbacks"] = ["b", "nope"]
    path = write_config(tmp_path / "minigate.yaml", config)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if "- nope" in text)
    assert f"minigate.yaml:{line}: routes.agent.fallbacks.1: unknown model 'nope' (models: a, b)" in str(caught.value)

    config["routes"]["agent"]["fallbacks"] = ["b", "b"]
    with pytest.raises(ConfigError, match="routes.agent.fallbacks: .*b listed more than once"):
        load_config(write_config(tmp_path / "minigate.yaml", config))
