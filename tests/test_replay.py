"""`minigate replay`: requests and logged calls through a candidate config, as subprocesses, offline."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from minigate.logger.crypto import generate_key
from minigate.router.catalogue import Catalogue, Task, save_catalogue
from minigate.router.features import extract_features
from minigate.router.signature import signature
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import ScriptedUpstream

MINI = {"input_per_mtok": 0.5, "output_per_mtok": 1.5}
FRONTIER = {"input_per_mtok": 10.0, "output_per_mtok": 30.0}
LONG = "Please read the whole incident report below and tell me what failed. " + "The pump stalled again. " * 40


def minigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, timeout=120)


def candidate(upstream_url: str, *, mini_price: dict[str, float] | None = MINI, **sections: Any) -> dict[str, Any]:
    """Route `agent` (and `gpt-4.1`, `cheap`) to the miniature unless the prompt is long."""
    route = {"default": "mini", "escalate_to": "gpt-4.1",
             "rules": [{"name": "long", "when": {"prompt_tokens": {"gt": 100}}, "use": "gpt-4.1"}]}
    return {
        "upstreams": {"scripted": {"kind": "openai", "base_url": upstream_url}},
        "models": {
            "gpt-4.1": {"upstream": "scripted", "model": "gpt-4.1", "tier": "frontier", "price": FRONTIER},
            "mini": {"upstream": "scripted", "model": "mini-lora", "tier": "miniature",
                     **({"price": mini_price} if mini_price else {})},
        },
        "routes": {"agent": route, "gpt-4.1": route, "cheap": route},
        **sections,
    }


def request(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "agent", "messages": [{"role": "user", "content": text}], **extra}


def cost(price: dict[str, float], tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * price["input_per_mtok"] + tokens_out * price["output_per_mtok"]) / 1e6


def prompt_tokens(body: dict[str, Any]) -> int:
    return extract_features(body).prompt_tokens


@pytest.fixture
def requests_file(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    bodies = [
        request("What is my balance?", id="a", task="account", output_tokens=100),
        request("Reset my password", id="b", task="account", max_tokens=50),
        request(LONG, id="c", task="incident", output_tokens=200),
        request("Opening hours?", id="d"),
    ]
    path = tmp_path / "requests.jsonl"
    lines = [orjson.dumps(body) for body in bodies] + [b"{broken", orjson.dumps({**request("hi"), "model": "nope"})]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, bodies


def test_replay_prices_each_request_at_the_model_chosen(tmp_path: Path, requests_file: tuple[Path, list[Any]],
                                                          upstream: ScriptedUpstream) -> None:
    path, bodies = requests_file
    config = write_config(tmp_path / "candidate.yaml", candidate(upstream.base_url))
    result = minigate("replay", "--config", str(config), "--input", str(path), "--assume-output-tokens", "300",
                      "--json")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)

    tokens = {  # the router's estimate for prompts; replies: stated, else max_tokens (50), else the assumption
        "a": (prompt_tokens(bodies[0]), 100), "b": (prompt_tokens(bodies[1]), 50),
        "c": (prompt_tokens(bodies[2]), 200), "d": (prompt_tokens(bodies[3]), 300),
    }
    assert tokens["c"][0] > 100 > max(tokens[k][0] for k in "abd")
    mini = {k: cost(MINI, *t) for k, t in tokens.items()}
    frontier = {k: cost(FRONTIER, *t) for k, t in tokens.items()}
    assert report["calls"] == 4 and [s["id"] for s in report["skipped"]] == ["4", "5"]
    assert "not JSON" in report["skipped"][0]["reason"] and "'nope' does not exist" in report["skipped"][1]["reason"]
    assert report["candidate_cost"] == pytest.approx(mini["a"] + mini["b"] + frontier["c"] + mini["d"])
    assert report["all_frontier_cost"] == pytest.approx(sum(frontier.values()))
    assert report["all_miniature_cost"] == pytest.approx(sum(mini.values()))
    assert report["actual_cost"] is None and report["logged"] == 0
    assert report["savings"]["vs_all_frontier"] == pytest.approx(1 - report["candidate_cost"] / sum(frontier.values()))
    assert (report["estimated_input"], report["assumed_output"]) == (4, 2)

    tiers = {row["name"]: (row["calls"], row["share"]) for row in report["tiers"]}
    assert tiers == {"miniature": (3, 0.75), "frontier": (1, 0.25)} and report["frontier_share"] == 0.25
    rules = {(row["route"], row["name"]): row["calls"] for row in report["rules"]}
    assert rules == {("agent", "default"): 3, ("agent", "long"): 1}
    tasks = {row["name"]: (row["calls"], row["frontier"]) for row in report["tasks"]}
    assert tasks == {"account": (2, 0), "incident": (1, 1), "unknown": (1, 0)}
    for group in ("tiers", "rules", "tasks"):
        assert sum(row["share"] for row in report[group]) == pytest.approx(1.0)

    sweep = report["sweep"]
    assert sweep[0] == {"frontier_share": 0.0, "cost": pytest.approx(sum(mini.values()))}
    assert sweep[-1] == {"frontier_share": 1.0, "cost": pytest.approx(sum(frontier.values()))}
    assert [point["frontier_share"] for point in sweep] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sweep[1]["cost"] == pytest.approx(report["candidate_cost"])  # "c" has the highest escalation score
    assert upstream.requests == []


@pytest.mark.slow
def test_replay_prints_tables_and_writes_a_png(tmp_path: Path, requests_file: tuple[Path, list[Any]]) -> None:
    path, _ = requests_file
    config = write_config(tmp_path / "candidate.yaml", candidate("http://127.0.0.1:9"))  # nothing listens there
    png = tmp_path / "cost.png"
    result = minigate("replay", "--config", str(config), "--input", str(path), "--png", str(png))
    assert result.returncode == 0, result.stderr
    for title in ("calls by tier", "calls by rule", "calls by task", "projected cost", "candidate config",
                  "all frontier", "skipped 2 lines"):
        assert title in result.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400 and height > 300


@pytest.mark.slow
def test_unpriced_models_are_reported_not_guessed(tmp_path: Path, requests_file: tuple[Path, list[Any]]) -> None:
    path, _ = requests_file
    config = write_config(tmp_path / "candidate.yaml", candidate("http://127.0.0.1:9", mini_price=None))
    report = orjson.loads(minigate("replay", "--config", str(config), "--input", str(path), "--json").stdout)
    assert report["candidate_cost"] is None and report["all_miniature_cost"] is None and report["sweep"] == []
    assert report["all_frontier_cost"] > 0
    assert report["notes"] == ["model 'mini' has no price"]

    png = tmp_path / "cost.png"
    table = minigate("replay", "--config", str(config), "--input", str(path), "--png", str(png))
    assert "unpriced" in table.stdout and "model 'mini' has no price" in table.stdout
    assert table.returncode == 1 and "no plot" in table.stderr and not png.exists()


@pytest.mark.slow
def test_replay_reads_logged_calls_from_the_store(upstream: ScriptedUpstream, tmp_path: Path, store_url: str) -> None:
    logging = {"store": store_url, "encryption_key": generate_key(), "spool": str(tmp_path / "spool")}
    live = write_config(tmp_path / "live.yaml", gateway_config(upstream.base_url, logging=logging))
    sent = [("cheap", "What is my balance?"), ("cheap", LONG), ("gpt-4.1", "Opening hours?"), ("cheap", "Thanks!")]
    with run_gateway(live) as gateway:
        for route, text in sent:
            response = httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                                  json={"model": route, "messages": [{"role": "user", "content": text}]})
            assert response.status_code == 200
    served = len(upstream.requests)
    rows = fetch(store_url, "SELECT route, input_tokens, output_tokens FROM calls ORDER BY started_at")
    assert len(rows) == 4 and all(t_in and t_out for _, t_in, t_out in rows)

    config = write_config(tmp_path / "candidate.yaml", candidate(upstream.base_url, logging=logging))
    result = minigate("replay", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert len(upstream.requests) == served  # replay called no upstream

    # As logged: "cheap" served by the miniature, "gpt-4.1" by the frontier; the candidate escalates LONG only.
    actual = [cost(FRONTIER if route == "gpt-4.1" else MINI, t_in, t_out) for route, t_in, t_out in rows]
    projected = [cost(FRONTIER if i == 1 else MINI, t_in, t_out) for i, (_, t_in, t_out) in enumerate(rows)]
    assert report["logged"] == 4 and report["actual_tiers"] == {"miniature": 3, "frontier": 1}
    assert report["actual_cost"] == pytest.approx(sum(actual))
    assert report["candidate_cost"] == pytest.approx(sum(projected))
    assert report["savings"]["vs_actual"] == pytest.approx(1 - sum(projected) / sum(actual))
    assert (report["estimated_input"], report["assumed_output"]) == (0, 0)
    rules = {(row["route"], row["name"]): row["calls"] for row in report["rules"]}
    assert rules == {("cheap", "default"): 2, ("cheap", "long"): 1, ("gpt-4.1", "default"): 1}
    assert fetch(store_url, "SELECT count(*) FROM audit WHERE actor LIKE 'cli:%'") == [(1,)]

    exported = tmp_path / "calls.jsonl"
    assert minigate("logs", "export", "--config", str(config), "--output", str(exported)).returncode == 0
    again = minigate("replay", "--config", str(config), "--input", str(exported), "--json")
    assert orjson.loads(again.stdout) == report


INVOICE_STEP = "Extract the invoice's total and due date as JSON."


def test_task_rules_fire_in_replay(tmp_path: Path) -> None:
    """A task is known by signature, by a logged task id or by a stated name; its rule fires offline."""
    invoice = {"model": "agent", "messages": [{"role": "system", "content": INVOICE_STEP},
                                              {"role": "user", "content": "ACME, 120 EUR, due 1 March"}]}
    task = Task("t001", "invoices", 10, 0.5, {signature(invoice): 10})
    save_catalogue(Catalogue([task], {"t001": np.eye(1, 384, dtype=np.float32)[0]}, 10, "2026-01-01T00:00:00Z",
                             "test", "test", 2), tmp_path / "tasks.yaml")
    route = {"default": "gpt-4.1", "rules": [{"name": "invoices", "when": {"task": "invoices"}, "use": "mini"}]}
    config = write_config(tmp_path / "candidate.yaml", candidate(
        "http://127.0.0.1:9", routes={"agent": route}, tasks={"catalogue": str(tmp_path / "tasks.yaml")}))
    logged = {"request_id": "logged", "route": "agent", "task": "t001", "model": "gpt-4.1", "tier": "frontier",
              "input_tokens": 20, "output_tokens": 5, "request": request("Total of the attached invoice?")}
    lines = [{**invoice, "id": "by-signature"}, request("Total of this invoice?", id="stated", task="invoices"),
             logged, request("Opening hours?", id="other")]
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    result = minigate("replay", "--config", str(config), "--input", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert {row["name"]: row["calls"] for row in report["rules"]} == {"invoices": 3, "default": 1}
    assert {row["name"]: (row["calls"], row["frontier"]) for row in report["tasks"]} == {
        "invoices": (3, 0), "unknown": (1, 1)}
