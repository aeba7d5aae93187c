"""Promotion and demotion: measured by shadow calls, gated by the Wilson lower bound, applied by a reload.

A gateway routes a catalogued task to the frontier and shadows it with the miniature; `minigate tasks
promote` refuses until the verdicts clear the bar, then writes promotions.yaml, which the running gateway
reloads: the task's calls go to the miniature (escalating to the frontier, which shadows a sample of
them), until `tasks demote` sends them back.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml

from minigate.config import load_config
from minigate.errors import ConfigError
from minigate.router.agreement import wilson
from minigate.router.catalogue import Catalogue, Task, save_catalogue
from minigate.router.promotions import Promotion, Promotions, gate, review, save_promotions
from minigate.router.settings import Policy
from minigate.router.scorecard import Scorecard
from minigate.router.signature import signature
from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import RunningGateway
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

SYSTEM = "Reply with one label: billing or shipping."


def body(text: str = "Where is my parcel?") -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]}


def minigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture
def measured(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> RunningGateway:
    catalogue = tmp_path / "tasks.yaml"
    task = Task("t001", "intents", size=10, call_share=1.0, signatures={signature(body()): 10}, output_kind="label")
    save_catalogue(Catalogue([task], {"t001": np.eye(1, 384, dtype=np.float32)[0]}, 10, "2026-12-01T00:00:00Z",
                             "test", "all-MiniLM-L6-v2", 2), catalogue)
    config = gateway_config(upstream.base_url, tasks={"catalogue": str(catalogue)})
    config["models"]["mini"]["price"] = {"input_per_mtok": 0.02, "output_per_mtok": 0.04}
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "rules": [
        {"name": "measure", "when": {"task": "intents"}, "use": "gpt-4.1", "shadow": {"model": "mini", "sample": 1.0}}]}
    return make_gateway(config, watch=True)


def served_by(gateway: RunningGateway) -> tuple[str, str]:
    response = httpx.post(f"{gateway.v1}/chat/completions", json=body(), timeout=30,
                          headers={"authorization": f"Bearer {AGENT_KEY}"})
    assert response.status_code == 200
    return response.headers["x-minigate-model"], response.headers["x-minigate-rule"]


def test_a_task_is_promoted_when_its_shadow_verdicts_clear_the_bar_and_demoted_by_hand(
    measured: RunningGateway, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.script(reply="shipping")
    upstream.script(reply="shipping", model="mini-lora")
    for _ in range(12):
        assert served_by(measured) == ("gpt-4.1", "measure")
    eventually(lambda: measured.metric("minigate_shadow_comparisons_total",
                                       {"task": "t001", "model": "mini", "verdict": "agree"}) == 12)
    eventually(lambda: measured.metric("minigate_log_records_written_total") >= 24)
    config = str(tmp_path / "minigate-0.yaml")

    refused = minigate("tasks", "promote", "intents", "--model", "mini", "--config", config, "--min-samples", "20")
    assert refused.returncode == 1
    assert "agreement 12/12 = 100.0%" in refused.stderr and "needs 8 more verdicts (needs 20)" in refused.stderr
    assert not (tmp_path / "promotions.yaml").exists()

    scorecard = minigate("tasks", "scorecard", "--config", config, "--json")
    [card] = orjson.loads(scorecard.stdout)
    assert (card["task"], card["task_name"], card["model"], card["agree"], card["n"]) == ("t001", "intents", "mini", 12, 12)

    replayed = minigate("replay", "--config", config, "--json")
    assert replayed.returncode == 0, replayed.stderr
    [projection] = orjson.loads(replayed.stdout)["promotions"]
    assert (projection["task"], projection["model"], projection["agreement"], projection["calls"]) == ("intents", "mini", 1.0, 12)
    assert projection["promoted_cost"] < projection["candidate_cost"] and projection["promoted_cost_low"] > projection["promoted_cost"]

    promoted = minigate("tasks", "promote", "intents", "--model", "mini", "--config", config, "--min-samples", "10",
                        "--min-agreement", "0.7")
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted intents -> mini on route gpt-4.1 (escalates to gpt-4.1" in promoted.stderr
    written = load_config(Path(config)).routes["gpt-4.1"]
    assert written.rules[0].name == "promoted:intents" and written.rules[0].use == "mini"
    assert written.rules[0].shadow is not None and written.rules[0].shadow.model == "gpt-4.1"
    assert written.escalate_to == "gpt-4.1" and "empty" in written.rules[0].escalate_on
    eventually(lambda: served_by(measured) == ("mini", "promoted:intents"), timeout=20)

    demoted = minigate("tasks", "demote", "intents", "--config", config, "--reason", "test")
    assert demoted.returncode == 0, demoted.stderr
    eventually(lambda: served_by(measured) == ("gpt-4.1", "measure"), timeout=20)
    again = minigate("tasks", "demote", "intents", "--config", config)
    assert again.returncode == 1 and "task 'intents' is not promoted" in again.stderr


def card(agree: int, n: int, **fields: Any) -> Scorecard:
    return Scorecard("t001", "mini", agree, n, wilson(agree, n), **fields)


def test_the_gate_needs_both_the_sample_and_the_lower_bound() -> None:
    policy = Policy(min_agreement=0.95, min_samples=200)
    assert gate(card(199, 200), policy).allowed
    assert "needs a lower bound of at least 95.0%" in gate(card(194, 200), policy).reason  # 97%, low 93.6%
    assert "needs 100 more verdicts" in gate(card(100, 100), policy).reason
    assert not gate(None, policy).allowed


def test_demotion_has_hysteresis() -> None:
    policy = Policy(min_agreement=0.95, demote_samples=50)
    assert not review(card(188, 200), None, policy).allowed, "94%: under the bar, but its upper bound is not"
    assert review(card(170, 200), None, policy).allowed  # 85%: upper bound 89.4%
    assert review(card(40, 50), None, policy).allowed and not review(card(39, 49), None, policy).allowed
    assert review(card(200, 200), 0.3, policy).reason.startswith("escalation rate 30.0%")
    assert review(card(200, 200, feedback_mean=0.2, feedback_n=5), None, Policy(min_feedback=0.5)).allowed


def test_a_promotion_naming_an_unknown_model_names_the_promotions_file(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    from tests.support.servers import write_config

    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url))
    promotion = Promotion(task="intents", task_id="t001", model="mini-2", route="gpt-4.1", escalate_to="gpt-4.1",
                          promoted_at=0.0, agreement=1.0, interval=(0.9, 1.0), n=100)
    save_promotions(Promotions(promotions=[promotion]), tmp_path / "promotions.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{tmp_path / 'promotions.yaml'}: promotions.0.model: unknown model 'mini-2'")


def test_the_autopilot_promotes_a_good_miniature_and_demotes_it_when_it_drifts(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    from tests.stores import fetch

    catalogue = tmp_path / "tasks.yaml"
    task = Task("t001", "intents", size=10, call_share=1.0, signatures={signature(body()): 10}, output_kind="label")
    save_catalogue(Catalogue([task], {"t001": np.eye(1, 384, dtype=np.float32)[0]}, 10, "2026-12-01T00:00:00Z",
                             "test", "all-MiniLM-L6-v2", 2), catalogue)
    config = gateway_config(upstream.base_url, tasks={"catalogue": str(catalogue)}, conversion={
        "auto_promote": True, "interval_s": 0.3, "min_samples": 10, "min_agreement": 0.7, "demote_samples": 5,
        "shadow_sample": 1.0})
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "rules": [
        {"name": "measure", "when": {"task": "intents"}, "use": "gpt-4.1", "shadow": {"model": "mini", "sample": 1.0}}]}
    gateway = make_gateway(config, watch=True)
    upstream.script(reply="shipping")
    upstream.script(reply="shipping", model="mini-lora")

    def promoted() -> bool:
        return served_by(gateway) == ("mini", "promoted:intents")

    eventually(promoted, timeout=30, interval=0.2)
    assert gateway.metric("minigate_promotion_changes_total", {"task": "intents", "model": "mini", "action": "promote"}) == 1
    upstream.script(reply="billing", model="mini-lora")  # the miniature drifts; the frontier's reverse shadow sees it
    eventually(lambda: served_by(gateway) == ("gpt-4.1", "measure"), timeout=30, interval=0.2)
    assert gateway.metric("minigate_promotion_changes_total", {"task": "intents", "model": "mini", "action": "demote"}) == 1
    history = yaml.safe_load((tmp_path / "promotions.yaml").read_text())
    assert [(c["action"], c["by"]) for c in history["history"]] == [("promote", "autopilot"), ("demote", "autopilot")]
    assert "upper bound" in history["history"][1]["reason"] and history["promotions"] == []
    audit = fetch(f"sqlite:///{tmp_path}/calls-0.db", "SELECT actor, action FROM audit WHERE actor = 'autopilot'")
    assert audit == [("autopilot", "promote"), ("autopilot", "demote")]
