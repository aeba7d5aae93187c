"""`minigate router fit` learns weights from labelled outcomes; `scoring.model` serves them without sklearn."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from minigate.config import load_config
from minigate.errors import ConfigError
from minigate.router.decision import Router

CONFIG = """\
upstreams: {{up: {{kind: openai, base_url: "http://127.0.0.1:1/v1"}}}}
models: {{big: {{upstream: up, model: big, tier: frontier}}}}
routes: {{r: {{default: big}}}}
scoring: {{model: "{model}"}}
"""


def labelled(rng: random.Random) -> bytes:
    """Synthetic outcomes: the small model fails on long prompts and on proofs, succeeds otherwise."""
    lines = []
    for _ in range(300):
        long, proof = rng.random() < 0.4, rng.random() < 0.3
        text = ("Prove that the series converges, step by step. " if proof else "What is my balance? ") + (
            "Context sentence about the account. " * 80 if long else "")
        ok = not (long or proof) if rng.random() < 0.9 else rng.random() < 0.5
        lines.append(orjson.dumps({"messages": [{"role": "user", "content": text}], "miniature_ok": ok}))
    return b"\n".join(lines) + b"\n"


def test_fit_writes_a_scoring_file_the_config_can_use(tmp_path: Path) -> None:
    source, model = tmp_path / "labelled.jsonl", tmp_path / "scoring.json"
    source.write_bytes(labelled(random.Random(0)))
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "router", "fit", "-i", str(source), "-o", str(model)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    fitted = orjson.loads(model.read_bytes())
    assert fitted["examples"] == 300 and set(fitted) >= {"bias", "weights"}
    config_path = tmp_path / "minigate.yaml"
    config_path.write_text(CONFIG.format(model=model))
    router = Router.from_config(load_config(config_path, {}))

    def score(text: str) -> float:
        return router.explain("r", {"messages": [{"role": "user", "content": text}]}, {}).score

    easy, hard = score("What is my balance?"), score("Prove it step by step. " + "Context sentence. " * 80)
    assert easy < 0.3 < 0.7 < hard


def test_bad_labels_and_missing_files_are_clear(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"messages": []}\n')
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "router", "fit", "-i", str(source), "-o",
                             str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "miniature_ok" in result.stderr
    config_path = tmp_path / "minigate.yaml"
    config_path.write_text(CONFIG.format(model=tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r":4: scoring: Value error, cannot read the scoring file"):
        load_config(config_path, {})
