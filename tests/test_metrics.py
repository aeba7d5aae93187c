"""Prometheus metrics: a real gateway serves scripted traffic, and `/metrics` is scraped over HTTP and
parsed with prometheus_client's own parser, as Prometheus would read it.

Token and cost counters are updated by the call log's writer once it has parsed each reply, so tests
wait until the log has written every call (`minigate_log_records_written_total`) before reading them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import RunningGateway
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

PRICES = {"gpt-4.1": {"input_per_mtok": 2.0, "output_per_mtok": 8.0},
          "mini": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}}
QUESTIONS = ["Where is my parcel?", "Cancel order 1234, please.", "What is your refund policy for opened items?"]


class Scrape:
    """One scrape of /metrics, parsed."""

    def __init__(self, gateway: RunningGateway) -> None:
        response = httpx.get(f"{gateway.base_url}/metrics", timeout=10)
        assert response.status_code == 200
        self.text = response.text
        self.samples = [s for family in text_string_to_metric_families(self.text) for s in family.samples]

    def total(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels`."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def priced_config(upstream: ScriptedUpstream, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Both models priced in config; `cheap` serves the miniature with gpt-4.1 as its frontier."""
    config = gateway_config(upstream.base_url, **overrides)
    for name, price in PRICES.items():
        config["models"][name]["price"] = price
    config["routes"]["cheap"] = {"default": "mini", "escalate_to": "gpt-4.1"}
    config.setdefault("logging", {"store": f"sqlite:///{tmp_path}/calls.db"})
    return config


def cost(model: str, input_tokens: int, output_tokens: int) -> float:
    price = PRICES[model]
    return (input_tokens * price["input_per_mtok"] + output_tokens * price["output_per_mtok"]) / 1e6


def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)


def settled(gateway: RunningGateway, check: Callable[[Scrape], bool]) -> Scrape:
    """The first scrape where `check` holds (the writer counts calls a moment after they end)."""
    return eventually(lambda: _passing(Scrape(gateway), check))


def _passing(scrape: Scrape, check: Callable[[Scrape], bool]) -> Scrape | None:
    return scrape if check(scrape) else None


def logged(gateway: RunningGateway, calls: int) -> Scrape:
    return settled(gateway, lambda s: s.total("minigate_log_records_written_total") >= calls)


def test_tokens_cost_and_counterfactual_follow_usage_and_prices(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    gateway = make_gateway(priced_config(upstream, tmp_path))
    usage: dict[str, list[tuple[int, int]]] = {"cheap": [], "gpt-4.1": []}
    for route in ("cheap", "cheap", "gpt-4.1"):
        for question in QUESTIONS:
            reply = client(gateway).chat.completions.create(model=route, messages=[{"role": "user", "content": question}])
            assert reply.usage is not None
            usage[route].append((reply.usage.prompt_tokens, reply.usage.completion_tokens))
    scrape = logged(gateway, 3 * len(QUESTIONS))

    mini_in, mini_out = (sum(column) for column in zip(*usage["cheap"], strict=True))
    frontier_in, frontier_out = (sum(column) for column in zip(*usage["gpt-4.1"], strict=True))
    assert scrape.total("minigate_requests_total", route="cheap", model="mini", tier="miniature", status="200") == 6
    assert scrape.total("minigate_requests_total", route="gpt-4.1", model="gpt-4.1", status="200") == 3
    assert scrape.total("minigate_tokens_total", model="mini", tier="miniature", direction="input") == mini_in
    assert scrape.total("minigate_tokens_total", model="mini", tier="miniature", direction="output") == mini_out
    assert scrape.total("minigate_tokens_total", model="gpt-4.1", tier="frontier", direction="input") == frontier_in
    assert scrape.total("minigate_tokens_total", model="gpt-4.1", tier="frontier", direction="output") == frontier_out
    assert scrape.total("minigate_cost_usd_total", model="mini", tier="miniature", task="unknown") == pytest.approx(
        cost("mini", mini_in, mini_out))
    assert scrape.total("minigate_cost_usd_total", model="gpt-4.1", tier="frontier") == pytest.approx(
        cost("gpt-4.1", frontier_in, frontier_out))
    # The counterfactual is the same tokens at the route's frontier price; on the frontier it is the cost.
    assert scrape.total("minigate_counterfactual_cost_usd_total", route="cheap", task="unknown") == pytest.approx(
        cost("gpt-4.1", mini_in, mini_out))
    assert scrape.total("minigate_counterfactual_cost_usd_total", route="gpt-4.1") == pytest.approx(
        scrape.total("minigate_cost_usd_total", model="gpt-4.1"))


def test_savings_from_metrics_equal_the_call_logs(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    gateway = make_gateway(priced_config(upstream, tmp_path))
    upstream.enqueue(Script(status=503))  # a failed call: in the log without usage, so it costs nothing
    routes = ["cheap", "gpt-4.1", "cheap", "cheap", "gpt-4.1"]
    for i, route in enumerate(routes):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] * (i + 1)}]
        httpx.post(f"{gateway.v1}/chat/completions", json={"model": route, "messages": messages},
                   headers={"authorization": f"Bearer {AGENT_KEY}"}, timeout=30)
    with client(gateway).chat.completions.create(model="cheap", messages=[{"role": "user", "content": "Stream it"}],
                                                 stream=True) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Stream it"
    scrape = logged(gateway, len(routes) + 1)

    [(logged_cost, logged_counterfactual, priced)] = fetch(
        f"sqlite:///{tmp_path}/calls.db",
        "SELECT SUM(cost_usd), SUM(counterfactual_cost_usd), COUNT(cost_usd) FROM calls")
    assert priced == len(routes) - 1 + 1, "every call was priced but the failed one (the stream too)"
    assert scrape.total("minigate_cost_usd_total") == pytest.approx(logged_cost, rel=1e-9)
    assert scrape.total("minigate_counterfactual_cost_usd_total") == pytest.approx(logged_counterfactual, rel=1e-9)
    savings = scrape.total("minigate_counterfactual_cost_usd_total") - scrape.total("minigate_cost_usd_total")
    assert savings == pytest.approx(logged_counterfactual - logged_cost, rel=1e-9) and savings > 0


def test_time_to_first_token_is_observed_for_streams(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    gateway = make_gateway(priced_config(upstream, tmp_path))
    upstream.script(reply="one two three", chunk_delay_s=0.02)
    output_tokens = 0
    for _ in range(3):
        with client(gateway).chat.completions.create(
            model="cheap", messages=[{"role": "user", "content": "Count"}], stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            usage = list(stream)[-1].usage
        assert usage is not None
        output_tokens += usage.completion_tokens
    reply = client(gateway).chat.completions.create(model="cheap", messages=[{"role": "user", "content": "No stream"}])
    assert reply.usage is not None
    scrape = logged(gateway, 4)

    assert scrape.total("minigate_time_to_first_token_seconds_count", model="mini", tier="miniature") == 3
    assert scrape.total("minigate_time_to_first_token_seconds_bucket", model="mini", le="+Inf") == 3
    # A call's first byte comes before its last, so the sums keep that order.
    streamed = scrape.total("minigate_time_to_first_token_seconds_sum", model="mini")
    assert 0 < streamed < scrape.total("minigate_request_duration_seconds_sum", model="mini")
    assert scrape.total("minigate_tokens_total", model="mini", direction="output") == (
        output_tokens + reply.usage.completion_tokens)


def test_escalations_count_and_bill_the_answer_and_the_discarded_reply(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    config = priced_config(upstream, tmp_path)
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
        {"name": "json", "when": {}, "use": "mini", "escalate_on": ["invalid_json"]}]}
    gateway = make_gateway(config)
    upstream.script(Script(invalid_json=True), model="mini-lora")
    upstream.script(reply='{"label": "billing"}')
    reply = client(gateway).chat.completions.create(model="gpt-4.1", response_format={"type": "json_object"},
                                                    messages=[{"role": "user", "content": "Label this"}])
    assert reply.usage is not None
    scrape = logged(gateway, 1)

    assert scrape.total("minigate_escalations_total", route="gpt-4.1", reason="invalid_json") == 1
    assert scrape.total("minigate_requests_total", route="gpt-4.1", model="gpt-4.1", tier="frontier") == 1
    assert scrape.total("minigate_tokens_total", model="gpt-4.1", direction="output") == reply.usage.completion_tokens
    assert scrape.total("minigate_tokens_total", model="mini") == 0, "tokens count the reply the client got"
    # The miniature's discarded reply was paid for all the same: the escalated call's cost includes it.
    [(wasted_in, wasted_out)] = fetch(f"sqlite:///{tmp_path}/calls.db",
                                      "SELECT wasted_input_tokens, wasted_output_tokens FROM calls")
    assert wasted_in > 0 and wasted_out > 0
    answered = cost("gpt-4.1", reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert scrape.total("minigate_cost_usd_total", model="gpt-4.1") == pytest.approx(
        answered + cost("mini", wasted_in, wasted_out))
    assert scrape.total("minigate_counterfactual_cost_usd_total") == pytest.approx(answered)


def test_labels_never_carry_client_strings(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    gateway = make_gateway(priced_config(upstream, tmp_path))
    invented = "acme-secret-model-7f3a"
    response = httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                          json={"model": invented, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert response.status_code == 404
    reply = client(gateway).chat.completions.create(model="cheap", user="alice@example.com",
                                                    messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "hi"
    scrape = logged(gateway, 1)

    assert invented not in scrape.text and "alice@example.com" not in scrape.text
    assert scrape.total("minigate_requests_total", route="", model="", status="404") == 1
    assert scrape.label_values("minigate_requests_total", "route") == {"", "cheap"}
    configured = set(priced_config(upstream, tmp_path)["models"])
    for name in ("minigate_tokens_total", "minigate_cost_usd_total", "minigate_time_to_first_token_seconds_count"):
        assert scrape.label_values(name, "model") <= configured
    assert scrape.label_values("minigate_cost_usd_total", "task") == {"unknown"}


def test_tokens_and_cost_count_when_the_log_stores_nothing(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    gateway = make_gateway(priced_config(upstream, tmp_path, logging={"enabled": False,
                                                                      "store": f"sqlite:///{tmp_path}/off.db"}))
    reply = client(gateway).chat.completions.create(model="cheap", messages=[{"role": "user", "content": "Hello"}])
    assert reply.usage is not None
    tokens = reply.usage.prompt_tokens + reply.usage.completion_tokens
    scrape = settled(gateway, lambda s: s.total("minigate_tokens_total") >= tokens)

    assert scrape.total("minigate_tokens_total", model="mini") == tokens
    assert scrape.total("minigate_cost_usd_total", model="mini") == pytest.approx(
        cost("mini", reply.usage.prompt_tokens, reply.usage.completion_tokens))
    assert scrape.total("minigate_log_records_written_total") == 0
    assert not (tmp_path / "off.db").exists()


def test_process_and_event_loop_metrics(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    gateway = make_gateway(priced_config(upstream, tmp_path))
    def lag(scrape: Scrape) -> float:
        [sample] = [s for s in scrape.samples if s.name == "minigate_event_loop_lag_seconds"]
        return sample.value

    scrape = settled(gateway, lambda s: not math.isnan(lag(s)))  # NaN until the lifespan's watcher measures

    assert lag(scrape) >= 0
    assert scrape.total("process_resident_memory_bytes") > 0
    assert scrape.total("process_start_time_seconds") > 0
    assert scrape.label_values("python_info", "implementation") == {"CPython"}
