"""`minigate route score` and `minigate route explain`: offline routing, as subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "examples" / "routing.yaml")


def minigate(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], input=stdin, capture_output=True, timeout=120)


def request(text: str, **extra: object) -> dict[str, object]:
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": text}], **extra}


def test_score_writes_one_line_per_request_in_order(tmp_path: Path) -> None:
    lines = [
        request("What is my balance?", id="easy"),
        request("Prove it step by step, and explain why the lemma holds. Then compare both proofs."),
        b"{broken",
        request("hi", tools=[{"type": "function", "function": {"name": f"t{i}"}} for i in range(6)]),
    ]
    source = tmp_path / "requests.jsonl"
    source.write_bytes(b"\n".join(line if isinstance(line, bytes) else orjson.dumps(line) for line in lines) + b"\n")
    result = minigate("route", "score", "--config", CONFIG, "--input", str(source))
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["easy", "1", "2", "3"]
    easy, hard, broken, tools = rows
    assert easy["tier"] == "miniature" and 0 <= easy["score"] < hard["score"] <= 1
    assert hard["tier"] == "frontier" and hard["model"] == "gpt-4.1"
    assert "not JSON" in broken["error"]
    assert tools["rule"] == "many-tools"


def test_score_reads_stdin_and_uses_configured_weights(tmp_path: Path) -> None:
    config = tmp_path / "minigate.yaml"
    config.write_text((ROOT / "examples" / "routing.yaml").read_text() + "scoring: {bias: 5.0}\n")
    result = minigate("route", "score", "--config", str(config), stdin=orjson.dumps(request("hello")) + b"\n")
    assert orjson.loads(result.stdout)["score"] > 0.99


@pytest.mark.slow
def test_explain_shows_rules_and_decision() -> None:
    body = orjson.dumps(request("hello"))
    result = minigate("route", "explain", "--config", CONFIG, "--json", "--header", "x-minigate-tier=frontier",
                      stdin=body)
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["decision"] == {"route": "gpt-4.1", "model": "gpt-4.1", "tier": "frontier",
                                  "rule": "caller-asks-frontier"}
    assert report["rules"][0] == {"rule": "caller-asks-frontier", "matched": True}
    assert report["features"]["turns"] == 1 and 0 <= report["score"] <= 1
    table = minigate("route", "explain", "--config", CONFIG, stdin=body)
    assert b"escalation score" in table.stdout and b"decision:" in table.stdout
    bad = minigate("route", "explain", "--config", CONFIG, stdin=b"[1, 2")
    assert bad.returncode == 2 and b"one chat completions request" in bad.stderr
