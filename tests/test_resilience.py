"""Replicas, circuit breakers and safe retries (serving/replicas.py), against real servers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from minigate.serving.options import ClientOptions
from minigate.serving.replicas import Replicas
from minigate.serving.settings import Breaker, OpenAIUpstream, Retry
from minigate.serving.upstream import UpstreamClient
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import RunningGateway
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def replicas() -> Iterator[tuple[ScriptedUpstream, ScriptedUpstream]]:
    with ScriptedUpstream() as a, ScriptedUpstream() as b:
        yield a, b


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def replicated(make_gateway: Callable[..., RunningGateway], urls: list[str], **upstream: Any) -> RunningGateway:
    config = gateway_config(urls[0])
    config["upstreams"] = {"scripted": {"kind": "openai", "base_urls": urls, "api_key": "sk-upstream", **upstream}}
    return make_gateway(config)


def post(gateway: RunningGateway, body: dict[str, Any] = CHAT) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {AGENT_KEY}"})


def test_a_down_replica_costs_clients_nothing(make_gateway: Callable[..., RunningGateway],
                                              upstream: ScriptedUpstream) -> None:
    gateway = replicated(make_gateway, [closed_port_url(), upstream.base_url], retry={})
    statuses = [post(gateway).status_code for _ in range(12)]
    assert statuses == [200] * 12 and len(upstream.requests) == 12


@pytest.mark.slow
def test_a_failing_replica_is_retried_elsewhere(make_gateway: Callable[..., RunningGateway],
                                                replicas: tuple[ScriptedUpstream, ScriptedUpstream]) -> None:
    healthy, failing = replicas
    failing.script(status=503)
    gateway = replicated(make_gateway, [healthy.base_url, failing.base_url], retry={})
    assert [post(gateway).status_code for _ in range(8)] == [200] * 8


# Long enough that ten requests finish before the circuit half-opens, even on a busy 2-core machine.
_OPEN_S = 2.0


@pytest.mark.slow
def test_the_breaker_opens_then_half_opens(make_gateway: Callable[..., RunningGateway],
                                           replicas: tuple[ScriptedUpstream, ScriptedUpstream]) -> None:
    healthy, failing = replicas
    failing.script(status=503)
    gateway = replicated(make_gateway, [healthy.base_url, failing.base_url],
                         breaker={"failures": 2, "open_s": _OPEN_S}, retry={})
    assert [post(gateway).status_code for _ in range(10)] == [200] * 10
    assert len(failing.requests) == 2  # open after two failures: it gets nothing more

    time.sleep(_OPEN_S + 0.1)
    assert [post(gateway).status_code for _ in range(6)] == [200] * 6
    assert len(failing.requests) == 3  # one half-open probe, which failed: open again

    failing.script(status=200)
    time.sleep(_OPEN_S + 0.1)
    assert [post(gateway).status_code for _ in range(6)] == [200] * 6
    assert len(failing.requests) > 4  # the probe succeeded: closed, balanced again


def test_all_circuits_open_fail_fast(make_gateway: Callable[..., RunningGateway]) -> None:
    gateway = replicated(make_gateway, [closed_port_url(), closed_port_url()], breaker={"failures": 1, "open_s": 30},
                         retry={})
    assert post(gateway).status_code == 502
    started = time.perf_counter()
    response = post(gateway)
    message = response.json()["error"]["message"]
    assert response.status_code == 502 and "'scripted'" in message and "circuit is open" in message
    assert time.perf_counter() - started < 0.5


def test_least_outstanding_spreads_slow_requests(make_gateway: Callable[..., RunningGateway],
                                                 replicas: tuple[ScriptedUpstream, ScriptedUpstream]) -> None:
    for replica in replicas:
        replica.script(latency_s=0.5)
    gateway = replicated(make_gateway, [r.base_url for r in replicas])
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: post(gateway).status_code, range(10)))
    assert statuses == [200] * 10
    assert [len(r.requests) for r in replicas] == [5, 5]


def test_least_outstanding_prefers_the_idle_replica(make_gateway: Callable[..., RunningGateway],
                                                    replicas: tuple[ScriptedUpstream, ScriptedUpstream]) -> None:
    slow, fast = replicas
    slow.script(latency_s=1.0)
    gateway = replicated(make_gateway, [slow.base_url, fast.base_url])
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: post(gateway).status_code, range(12)))
    assert len(slow.requests) <= 2 and len(fast.requests) >= 10


def test_429_honours_retry_after(make_gateway: Callable[..., RunningGateway], upstream: ScriptedUpstream) -> None:
    upstream.enqueue(Script(status=429, headers={"retry-after": "0.3"}))
    gateway = replicated(make_gateway, [upstream.base_url], retry={"attempts": 2, "max_wait_s": 2})
    started = time.perf_counter()
    assert post(gateway).status_code == 200
    assert time.perf_counter() - started >= 0.3 and len(upstream.requests) == 2


def test_a_long_retry_after_reaches_the_client(make_gateway: Callable[..., RunningGateway],
                                               upstream: ScriptedUpstream) -> None:
    upstream.enqueue(Script(status=429, headers={"retry-after": "60"}))
    gateway = replicated(make_gateway, [upstream.base_url], retry={"attempts": 2, "max_wait_s": 2})
    response = post(gateway)
    assert response.status_code == 429 and response.headers["retry-after"] == "60"
    assert len(upstream.requests) == 1


def test_a_read_timeout_is_never_retried(make_gateway: Callable[..., RunningGateway],
                                         replicas: tuple[ScriptedUpstream, ScriptedUpstream]) -> None:
    for replica in replicas:
        replica.script(latency_s=1.0)
    gateway = replicated(make_gateway, [r.base_url for r in replicas], retry={},
                         timeouts={"connect_s": 1, "read_s": 0.3, "total_s": 5})
    assert post(gateway).status_code == 504
    time.sleep(0.8)  # let a wrongly retried request arrive
    assert sum(len(r.requests) for r in replicas) == 1


def test_attempts_are_on_the_reply(upstream: ScriptedUpstream) -> None:
    down = closed_port_url()
    options = ClientOptions(name="scripted", base_url=down, replicas=(down, upstream.base_url), retry=Retry())
    client = UpstreamClient(options)

    async def call() -> list[tuple[str, int | None, str | None]]:
        reply = await client.chat(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
        await reply.read()
        await client.aclose()
        return [(a.base_url, a.status, a.error) for a in reply.attempts]

    assert asyncio.run(call()) == [(down, None, "connect_error"), (upstream.base_url, 200, None)]


def test_outstanding_calls_are_released_when_the_body_is_closed(upstream: ScriptedUpstream) -> None:
    client = UpstreamClient(ClientOptions(name="scripted", base_url=upstream.base_url))

    async def call() -> tuple[int, int]:
        reply = await client.chat(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
        during = client.replicas.replicas[0].outstanding
        await reply.read()
        await client.aclose()
        return during, client.replicas.replicas[0].outstanding

    assert asyncio.run(call()) == (1, 0)


def test_ties_go_round_robin() -> None:
    replicas = Replicas(["http://a/v1", "http://b/v1"], None)
    assert [replicas.pick(0.0, set()).base_url for _ in range(4)] == ["http://a/v1", "http://b/v1"] * 2  # type: ignore[union-attr]


def test_one_half_open_probe_at_a_time() -> None:
    replicas = Replicas(["http://a/v1"], Breaker(failures=1, open_s=1))
    replica = replicas.pick(0.0, set())
    assert replica is not None
    replicas.record(replica, 0.0, failed=True)
    assert replicas.pick(0.5, set()) is None  # open
    assert replicas.pick(1.5, set()) is replica  # half-open: this call probes
    assert replicas.pick(1.5, set()) is None  # no second probe while the first is under way
    replicas.record(replica, 1.6, failed=False)
    assert replica.state(1.6, replicas.breaker) == "closed"


def test_base_url_or_base_urls_not_both() -> None:
    with pytest.raises(ValidationError, match="not both"):
        OpenAIUpstream.model_validate({"kind": "openai", "base_url": "http://a/v1", "base_urls": ["http://b/v1"]})
    with pytest.raises(ValidationError, match="at least one"):
        OpenAIUpstream.model_validate({"kind": "openai", "base_urls": []})
    spec = OpenAIUpstream.model_validate({"kind": "vllm", "base_urls": ["http://a/v1", "http://b/v1"]})
    assert spec.base_url == "http://a/v1" and spec.replicas() == ("http://a/v1", "http://b/v1")


def test_a_retried_request_is_one_record_with_each_call_as_an_attempt(
        make_gateway: Callable[..., RunningGateway], replicas: tuple[ScriptedUpstream, ScriptedUpstream],
        tmp_path: Path) -> None:
    healthy, failing = replicas
    failing.script(status=503)
    gateway = replicated(make_gateway, [failing.base_url, healthy.base_url], retry={})
    request_id = post(gateway).headers["x-minigate-request-id"]  # ties go to the first replica: the failing one
    eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 1)
    [(status, attempts)] = fetch(f"sqlite:///{tmp_path}/calls-0.db",
                                 f"SELECT status, attempts FROM calls WHERE request_id = '{request_id}'")
    calls = [(a["base_url"], a["status"]) for a in orjson.loads(attempts)]
    assert status == 200 and calls == [(failing.base_url, 503), (healthy.base_url, 200)]
