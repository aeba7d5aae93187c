"""`minigate tasks show`: a task's example calls with what they said, redacted, when the calls are given.

The catalogue keeps only the example calls' ids; `--input` reads the calls back from Request JSONL (redacted
here) or `logs export` JSONL (redacted when logged). The CLI runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from minigate.conversion.task_view import example_texts
from minigate.logger.redact import Redactor
from minigate.router.catalogue import Catalogue, Task, save_catalogue

EXAMPLES = ["0", "req-7", "r-logged", "gone"]
LOGGED = {"request_id": "r-logged", "task": "t001", "status": 200,
          "request": {"messages": [{"role": "user", "content": "Where is parcel <EMAIL_1> sent?"}]},
          "response": {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
              "role": "assistant", "content": None,
              "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "track", "arguments": '{"id": 7}'}}],
          }}]}}
CALLS = [
    {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Refund order 12 to jane@example.com please"}]},
    {"id": "req-7", "model": "gpt-4.1", "messages": [
        {"role": "system", "content": "You handle refunds."}, {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Which order?"},
        {"role": "user", "content": [{"type": "text", "text": "Call me on +1 415-555-0100"}]}]},
    LOGGED,
    {"id": "other", "messages": [{"role": "user", "content": "not an example"}]},
]
TEXTS = {"0": "Refund order 12 to <EMAIL_1> please", "req-7": "Call me on <PHONE_1>",
         "r-logged": 'Where is parcel <EMAIL_1> sent? -> track({"id": 7})'}


def minigate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, input=stdin,
                          timeout=120, check=False)


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.yaml"
    task = Task("t001", "refunds", size=4, call_share=1.0, signatures={"9f2c41d07a5be113": 4}, examples=EXAMPLES)
    save_catalogue(Catalogue([task], {"t001": np.eye(1, 384, dtype=np.float32)[0]}, 4, "2026-11-23T00:00:00Z",
                             "test", "all-MiniLM-L6-v2", 2), path)
    return path


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(orjson.dumps(call) + b"\n" for call in CALLS))
    return path


@pytest.mark.slow
def test_show_prints_the_examples_texts_redacted(catalogue: Path, calls: Path) -> None:
    shown = minigate("tasks", "show", "refunds", "--catalogue", str(catalogue), "--input", str(calls))
    assert shown.returncode == 0, shown.stderr
    for identifier, text in TEXTS.items():
        assert f"{identifier}: {text}" in shown.stdout
    assert "jane@example.com" not in shown.stdout and "555-0100" not in shown.stdout
    assert "1 of the 4 example calls are not in" in shown.stderr  # "gone" was discovered from other calls

    piped = minigate("tasks", "show", "t001", "--catalogue", str(catalogue), "--input", "-", "--json",
                     stdin=calls.read_text())
    assert piped.returncode == 0, piped.stderr
    document = orjson.loads(piped.stdout)
    assert document["example_texts"] == TEXTS and list(document["example_texts"]) == ["0", "req-7", "r-logged"]
    assert document["examples"] == EXAMPLES


@pytest.mark.slow
def test_show_without_calls_lists_ids_and_says_how_to_get_texts(catalogue: Path, tmp_path: Path) -> None:
    shown = minigate("tasks", "show", "t001", "--catalogue", str(catalogue), "--json")
    assert shown.returncode == 0, shown.stderr
    assert "example_texts" not in orjson.loads(shown.stdout)
    unreadable = minigate("tasks", "show", "t001", "--catalogue", str(catalogue), "--input", str(tmp_path / "nope"))
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr
    assert "--input" in minigate("tasks", "show", "--help").stdout


def test_long_texts_are_clipped_after_redaction() -> None:
    task = Task("t001", "refunds", size=1, call_share=1.0, signatures={}, examples=["0"])
    long = "word " * 100 + "mail me at jane@example.com"
    texts = example_texts(task, [orjson.dumps({"messages": [{"role": "user", "content": long}]})], Redactor())
    assert len(texts["0"]) == 240 and texts["0"].endswith("…") and texts["0"].startswith("word word")
    straddling = "x " * 115 + "jane@example.com"  # 246 characters: clipping first would leave "jane@exam…"
    redacted = example_texts(task, [orjson.dumps({"messages": [{"role": "user", "content": straddling}]})],
                             Redactor())
    assert redacted["0"] == "x " * 115 + "<EMAIL_1>"  # redacted whole, then short enough to show whole
