"""Per-key rate limits and budgets, through a real gateway: OpenAI's 429s and headers, routes, spend
charged from the call log, Redis shared between gateways, and what a Redis outage does (open, closed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from minigate.gateway.auth import Caller
from minigate.gateway.limits import Limiter
from minigate.gateway.settings import KeyLimits, LimitsSection
from prometheus_client import CollectorRegistry
from tests.conftest import ADMIN_KEY, AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.redis_server import RedisServer, redis_server
from tests.support.servers import RunningGateway, run_gateway, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

HI = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
AGENT = {"authorization": f"Bearer {AGENT_KEY}"}
# A dollar a token: any call costs more than a few dollars, so a $5 budget holds one call.
DEAR = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 1_000_000.0}


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def limited(upstream: ScriptedUpstream, tmp_path: Path, limits: dict[str, Any], *,
            section: dict[str, Any] | None = None) -> dict[str, Any]:
    config = gateway_config(upstream.base_url)
    config["auth"]["keys"][0]["limits"] = limits
    config["models"]["gpt-4.1"]["price"] = DEAR
    config["logging"] = {"store": f"sqlite:///{tmp_path}/calls.db", "flush_interval_s": 0.05}
    if section is not None:
        config["limits"] = section
    return config




def chat(gateway: RunningGateway, body: dict[str, Any] = HI, headers: dict[str, str] = AGENT) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", json=body, headers=headers, timeout=30)


def fresh_minute() -> None:
    """Start a per-minute test early in a clock minute, so its counters can't reset half-way."""
    if time.time() % 60 > 45:
        time.sleep(60 - time.time() % 60 + 0.1)


def test_over_rpm_is_openais_429_with_retry_after_and_ratelimit_headers(
        upstream: ScriptedUpstream, tmp_path: Path, make_gateway: Callable[..., RunningGateway]) -> None:
    fresh_minute()
    gateway = make_gateway(limited(upstream, tmp_path, {"rpm": 3}))
    answers = [chat(gateway) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0"]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
    assert answers[0].headers["x-ratelimit-reset-requests"].endswith("s")

    refused = chat(gateway)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "requests per minute (RPM): Limit 3, Used 3" in error["message"] and "'agents'" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-minigate-request-id"]
    assert gateway.metric("minigate_limit_rejections_total", {"key": "agents", "route": "", "limit": "rpm"}) == 1

    # The OpenAI SDK reads it as its RateLimitError; other keys are not limited.
    client = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**HI)
    assert chat(gateway, headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_a_route_limit_applies_on_top_of_the_keys_own(upstream: ScriptedUpstream, tmp_path: Path,
                                                     make_gateway: Callable[..., RunningGateway]) -> None:
    fresh_minute()
    gateway = make_gateway(limited(upstream, tmp_path, {"rpm": 100, "routes": {"cheap": {"rpm": 1}}}))
    cheap = {**HI, "model": "cheap"}
    assert chat(gateway, cheap).status_code == 200
    refused = chat(gateway, cheap)
    assert refused.status_code == 429
    assert "on route 'cheap'" in refused.json()["error"]["message"]
    assert chat(gateway).status_code == 200  # the key's other routes still serve
    # Headers show the tightest limit: the route's for `cheap`, the key's for other routes.
    assert chat(gateway).headers["x-ratelimit-limit-requests"] == "100"


def test_a_budget_stops_the_key_at_the_spend_its_call_log_shows(
        upstream: ScriptedUpstream, tmp_path: Path, make_gateway: Callable[..., RunningGateway]) -> None:
    gateway = make_gateway(limited(upstream, tmp_path, {"usd_per_day": 5}))
    assert chat(gateway).status_code == 200
    eventually(lambda: chat(gateway).status_code == 429)  # once the writer has measured the first call
    refused = chat(gateway)
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert "per UTC day (usd_per_day); it resets at " in error["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86400

    def logged_spend() -> float:
        return sum(row[0] for row in fetch(f"sqlite:///{tmp_path}/calls.db", "SELECT cost_usd FROM calls"))

    # Calls admitted before the first was measured overshoot the budget; what is refused quotes the log's spend.
    eventually(lambda: f"spent ${logged_spend():.4f} of its $5 " in chat(gateway).json()["error"]["message"])


def test_tokens_per_minute_count_what_the_log_measured(upstream: ScriptedUpstream, tmp_path: Path,
                                                       make_gateway: Callable[..., RunningGateway]) -> None:
    fresh_minute()
    gateway = make_gateway(limited(upstream, tmp_path, {"tpm": 5}))
    first = chat(gateway)
    assert first.headers["x-ratelimit-remaining-tokens"] == "5"  # nothing measured yet
    used = first.json()["usage"]["total_tokens"]
    assert used >= 5, "the scripted reply must use the whole budget for this test"
    eventually(lambda: chat(gateway).status_code == 429)
    error = chat(gateway).json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert "tokens per minute (TPM): Limit 5" in error["message"]


def test_spend_is_reconciled_from_the_call_log_at_start(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    """In-process counters die with the process; the call log's spend does not."""
    path = write_config(tmp_path / "minigate.yaml", limited(upstream, tmp_path, {"usd_per_month": 5}))
    with run_gateway(path) as first:
        assert chat(first).status_code == 200
    with run_gateway(path) as restarted:  # fresh counters, the same store
        refused = chat(restarted)
    assert refused.status_code == 429
    assert "usd_per_month" in refused.json()["error"]["message"]


def test_the_messages_ingress_refuses_in_anthropics_shape(upstream: ScriptedUpstream, tmp_path: Path,
                                                           make_gateway: Callable[..., RunningGateway]) -> None:
    fresh_minute()
    gateway = make_gateway(limited(upstream, tmp_path, {"rpm": 1}))
    client = anthropic.Anthropic(base_url=gateway.base_url, api_key=AGENT_KEY, max_retries=0)
    message = {"model": "gpt-4.1", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    client.messages.create(**message)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(**message)
    assert refused.value.response.headers["retry-after"]


def test_redis_shares_one_limit_between_gateways(upstream: ScriptedUpstream, tmp_path: Path, redis: RedisServer,
                                                  make_gateway: Callable[..., RunningGateway]) -> None:
    fresh_minute()
    config = limited(upstream, tmp_path, {"rpm": 10}, section={"redis_url": redis.url})
    one = make_gateway(config)
    two = make_gateway({**config, "logging": {**config["logging"], "spool": str(tmp_path / "spool-2")}})
    statuses = [chat(gateway).status_code for _ in range(8) for gateway in (one, two)]
    assert statuses.count(200) == 10 and statuses.count(429) == 6


def test_redis_down_with_fail_open_serves_unchecked_and_says_so(
        upstream: ScriptedUpstream, tmp_path: Path, redis: RedisServer,
        make_gateway: Callable[..., RunningGateway]) -> None:
    fresh_minute()
    gateway = make_gateway(limited(upstream, tmp_path, {"rpm": 1}, section={"redis_url": redis.url}))
    assert chat(gateway).status_code == 200
    redis.stop()
    assert [chat(gateway).status_code for _ in range(3)] == [200, 200, 200]
    ready = httpx.get(f"{gateway.base_url}/readyz", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert ready.status_code == 200
    assert "Redis unreachable" in ready.json()["limits"] and "limits.fail: open" in ready.json()["limits"]
    assert gateway.metric("minigate_limits_backend_up") == 0
    assert gateway.metric("minigate_limits_unchecked_total", {"outcome": "admitted"}) == 3

    redis.start()  # an empty Redis: counting starts again
    eventually(lambda: gateway.metric("minigate_limits_backend_up") == 1)
    assert [chat(gateway).status_code for _ in range(2)] == [200, 429]
    assert httpx.get(f"{gateway.base_url}/readyz", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()[
        "limits"] == "checked in Redis"


def test_redis_down_with_fail_closed_refuses_limited_keys_and_is_not_ready(
        upstream: ScriptedUpstream, tmp_path: Path, make_gateway: Callable[..., RunningGateway]) -> None:
    closed = "redis://127.0.0.1:1/0"  # nothing listens there
    gateway = make_gateway(limited(upstream, tmp_path, {"rpm": 100}, section={"redis_url": closed, "fail": "closed"}))
    refused = chat(gateway)
    assert refused.status_code == 503
    assert "limits.fail is 'closed'" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"
    assert chat(gateway, headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200  # unlimited keys
    assert httpx.get(f"{gateway.base_url}/readyz").status_code == 503


def test_a_key_limited_on_an_unknown_route_is_a_config_error(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    from minigate.config import load_config
    from minigate.errors import ConfigError

    path = write_config(tmp_path / "m.yaml", limited(upstream, tmp_path, {"routes": {"gpt-4": {"rpm": 1}}}))
    with pytest.raises(ConfigError, match=r"m.yaml:\d+: auth.keys.0.limits.routes.gpt-4: unknown route 'gpt-4'"):
        load_config(path)


def test_in_process_counters_count_every_admission() -> None:
    """The limiter alone (bench/limits times it): a thousand admissions leave a thousand requests counted."""
    limiter = Limiter(LimitsSection(), CollectorRegistry(), limited=lambda: [], limits_of=lambda name: None)
    caller = Caller("agents", "agent", KeyLimits(rpm=1_000_000, tpm=1_000_000, usd_per_day=10))

    async def admit_many() -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(1000):
            headers = await limiter.admit(caller, "gpt-4.1")
        return headers

    headers = asyncio.run(admit_many())
    assert headers["x-ratelimit-remaining-requests"] == "999000"
