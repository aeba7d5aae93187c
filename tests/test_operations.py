"""The operational endpoints: liveness, readiness, metrics."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import RunningGateway
from tests.support.upstream import ScriptedUpstream


def test_healthz(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.base_url}/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_summarises_upstreams(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    config = gateway_config(upstream.base_url)
    config["upstreams"]["down"] = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}
    gateway = make_gateway(config)
    body = httpx.get(f"{gateway.base_url}/readyz", headers={"authorization": f"Bearer {ANALYST_KEY}"}).json()
    assert body["status"] == "ready" and body["config_generation"] == 1
    assert body["upstreams"]["scripted"] == "reachable"
    assert "ConnectError" in body["upstreams"]["down"]


def test_metrics_count_requests_and_durations(gateway: RunningGateway) -> None:
    headers = {"authorization": f"Bearer {AGENT_KEY}"}
    for _ in range(3):
        httpx.post(f"{gateway.v1}/chat/completions", headers=headers,
                   json={"model": "cheap", "messages": [{"role": "user", "content": "x"}]})
    text = httpx.get(f"{gateway.base_url}/metrics").text
    assert 'minigate_requests_total{model="mini",route="cheap",status="200",task="unknown",tier="miniature"} 3.0' in text
    assert 'minigate_request_duration_seconds_count{model="mini",route="cheap",tier="miniature"} 3.0' in text


def test_openapi_schema_is_served(gateway: RunningGateway) -> None:
    paths = httpx.get(f"{gateway.base_url}/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(paths)
