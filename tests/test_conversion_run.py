"""The whole conversion loop connects end to end: `examples/conversion/run --fast`.

A tiny workload of the support platform's agent goes through a real `minigate serve` to a scripted
teacher; the product's own commands discover its tasks, rank them, export and fine-tune the top one (a few
steps), shadow it, promote it (the fast run's bar is 0: it shows the wiring, not the quality, which
docs/conversion.md measures with the full run), send fresh traffic and report. The run must leave the
evidence DESIGN.md names: summary.json, its plot and the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agent_workload import missing_data

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(missing_data() is not None, reason=str(missing_data()))


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("peft", reason="the conversion loop fine-tunes: it needs the finetune extra")
    out = tmp_path_factory.mktemp("conversion") / "run"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "conversion" / "loop.py"), "--fast", "--out",
                           str(out)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_fast_run_writes_the_summary_design_md_names(fast_run: Path) -> None:
    summary = json.loads((fast_run / "summary.json").read_text())
    for key in ("wall_s", "calls_before", "calls_after", "miniature_share_before", "miniature_share_after",
                "spend_usd", "counterfactual_usd", "tasks"):
        assert key in summary, key
    assert (summary["calls_before"], summary["calls_after"]) == (168, 50)  # agent.FAST's logged and fresh calls
    assert summary["miniature_share_before"] == 0  # nothing is converted while the traffic is logged
    for task in summary["tasks"]:
        assert set(task) >= {"task", "step", "output_kind", "served_by", "promoted", "agreement", "agreement_low", "n"}
        assert 0 <= task["agreement_low"] <= task["agreement"] <= 1
    assert sum(task["n"] for task in summary["tasks"]) == summary["calls_after"]
    assert (fast_run / "summary.png").stat().st_size > 10_000
    assert (fast_run / "report" / "index.html").is_file()


def test_the_top_candidate_is_tuned_shadowed_promoted_and_serves_fresh_calls(fast_run: Path) -> None:
    summary = json.loads((fast_run / "summary.json").read_text())
    tuned = [task for task in summary["tasks"] if task["tuned"]]
    assert len(tuned) == 1, summary["tasks"]  # --fast converts the top candidate only
    task = tuned[0]
    assert task["promoted"], task
    card = json.loads((fast_run / "adapters" / task["task"] / "card.json").read_text())
    assert card["training"]["steps"] > 0 and card["validation"]["tuned"]["n"] > 0, card
    # Promoted, the task's fresh calls reach its adapter (some may escalate: a few steps teach little).
    fresh = [json.loads(line) for line in (fast_run / "calls-fresh.jsonl").read_text().splitlines()]
    mine = [call for call in fresh if call["task"] == task["task"]]
    assert mine and any(call["model"] == task["tuned"] for call in mine), mine[:3]
    assert summary["miniature_share_after"] == pytest.approx(
        sum(call["tier"] == "miniature" for call in fresh) / len(fresh))
    assert summary["counterfactual_usd"] >= summary["spend_usd"] > 0
    promotions = (fast_run / "promotions.yaml").read_text()
    assert task["task"] in promotions and task["tuned"] in promotions
