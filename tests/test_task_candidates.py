"""`minigate tasks candidates` (S4): tasks ranked by projected savings times learnability, from the catalogue,
the config's prices and what the call log says about each task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from minigate.conversion.candidates import CandidatePrices, TaskStats, rank_candidates
from minigate.pricing import Rate
from minigate.router.catalogue import Catalogue, Task, save_catalogue
from minigate.router.signature import signature
from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import ScriptedUpstream

LABELS = "Label the ticket: billing, shipping or other."
ESSAYS = "Write a long, friendly reply to the customer."


def body(system: str, user: str) -> dict[str, object]:
    return {"model": "gpt-4.1", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def catalogue() -> Catalogue:
    tasks = [
        Task("t001", "ticket-labels", size=300, call_share=0.6, signatures={signature(body(LABELS, "x")): 300},
             prompt_tokens=400, output_tokens=3, output_kind="label", served_by={"gpt-4.1": 300}),
        Task("t002", "long-replies", size=200, call_share=0.4, signatures={signature(body(ESSAYS, "x")): 200},
             prompt_tokens=9000, output_tokens=600, output_kind="free_text", served_by={"gpt-4.1": 200}),
    ]
    return Catalogue(tasks, {"t001": np.eye(1, 768, 0, np.float32)[0], "t002": np.eye(1, 768, 1, np.float32)[0]},
                     500, "2026-11-23T00:00:00Z", "test", "all-MiniLM-L6-v2", 3)


def test_ranking_weighs_savings_by_fit() -> None:
    prices = CandidatePrices(frontier=Rate(2.0, 8.0), miniature=Rate(0.1, 0.4))
    ranked = rank_candidates(catalogue(), prices, period_days=30)
    labels, replies = ranked[1], ranked[0]
    # Long replies save more per month ...
    assert replies.monthly_savings == pytest.approx(200 * ((9000 * 1.9 + 600 * 7.6) / 1e6))
    assert labels.monthly_savings == pytest.approx(300 * ((400 * 1.9 + 3 * 7.6) / 1e6))
    # ... and labels are the easier conversion: structure 1.0 vs 0.45, short prompt vs 9k tokens.
    assert labels.fit == 1.0 and replies.fit == pytest.approx(0.45 * 0.5)
    assert "short labels" in labels.reason and "saves $" in labels.reason

    stats = {"t001": TaskStats(calls=3000, days=30, escalated=300, miniature_calls=1000, output_tokens=[3, 3, 4, 3])}
    steady = rank_candidates(catalogue(), prices, period_days=30, stats=stats)
    first = next(c for c in steady if c.task.id == "t001")
    assert first.monthly_calls == 3000 and first.escalation_rate == pytest.approx(0.3)
    assert first.fit == pytest.approx((1 / (1 + np.std([3, 3, 4, 3]) / np.mean([3, 3, 4, 3]))) * 0.7, abs=1e-3)
    assert "30% of miniature calls escalated" in first.reason
    assert rank_candidates(catalogue(), None, period_days=30)[0].reason.endswith("unpriced")


@pytest.mark.slow
def test_cli_ranks_with_logged_volumes_and_config_prices(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    save_catalogue(catalogue(), tmp_path / "tasks.yaml")
    config = gateway_config(upstream.base_url, tasks={"catalogue": "tasks.yaml"},
                            logging={"store": f"sqlite:///{tmp_path}/calls.db"})
    config["models"]["gpt-4.1"]["price"] = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
    config["models"]["mini"]["price"] = {"input_per_mtok": 0.1, "output_per_mtok": 0.4}
    path = write_config(tmp_path / "minigate.yaml", config)
    with run_gateway(path) as gateway:
        for i in range(4):
            httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                       json=body(LABELS, f"ticket {i}"))
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "tasks", "candidates", "--config", str(path),
                             "--json", "--days", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {row["task"]: row for row in orjson.loads(result.stdout)}
    assert rows["t001"]["monthly_calls"] == 120.0  # 4 logged calls in the 1-day window
    assert rows["t002"]["monthly_calls"] == 6000.0  # no logged calls: the catalogue's 200 over --days 1
    assert rows["t001"]["fit"] > rows["t002"]["fit"]
    table = subprocess.run([sys.executable, "-m", "minigate.cli", "tasks", "candidates", "--config", str(path)],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert "ticket-labels" in table.stdout and "savings priced as gpt-4.1 -> mini" in table.stderr
