"""The `minigate` command's messages read whole on any terminal: a narrow one, or none at all.

Off a terminal (a pipe, a file, these tests) every message is one plain line, whatever `COLUMNS` says
and whether or not `TERM` is set: a program or a person grepping a log finds it whole. Each case runs a
real `minigate` process with `COLUMNS=40` and no `TERM`, the shell that once split "row 2" from "maybe"
inside a box drawn at 80 columns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import gateway_config
from tests.support.servers import write_config

NARROW = {**{name: value for name, value in os.environ.items() if name != "TERM"}, "COLUMNS": "40"}
LONG_URL = "http://upstream-with-a-long-name.example.internal:8080/v1"


def minigate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, env=NARROW,
                          cwd=cwd, timeout=60)


def line_with(text: str, *parts: str) -> str:
    """The line of `text` that holds every part, in order; fails showing the text when none does."""
    for line in text.splitlines():
        at = 0
        for part in parts:
            at = line.find(part, at)
            if at < 0:
                break
            at += len(part)
        else:
            return line
    raise AssertionError(f"no line holds {parts!r}:\n{text}")


def test_a_usage_error_is_one_plain_line(tmp_path: Path) -> None:
    """typer boxed `BadParameter` in a panel wrapped at the terminal's width; off a terminal it is click's line."""
    data = tmp_path / "mmlu_x.csv"
    data.write_text("prompt,model-a,model-b\nWhat is 2+2?,True,maybe\n")
    result = minigate("router", "fit", "-i", str(data), "-o", str(tmp_path / "x.json"), "--strong", "model-a",
                      "--weak", "model-b", cwd=tmp_path)
    assert result.returncode == 2
    line_with(result.stderr, "Error: Invalid value for --input:", str(data), "row 2", "maybe", "True/False")
    assert "╭" not in result.stderr and "│" not in result.stderr


def test_an_unknown_option_and_a_bad_choice_are_plain_too(tmp_path: Path) -> None:
    unknown = minigate("logs", "export", "--no-such-option", cwd=tmp_path)
    assert unknown.returncode == 2
    line_with(unknown.stderr, "Error: No such option: --no-such-option")
    choice = minigate("logs", "export", "--format", "xml", cwd=tmp_path)
    assert choice.returncode == 2
    line_with(choice.stderr, "Error: Invalid value for --format: choose jsonl or parquet")


def test_a_command_error_is_one_line(tmp_path: Path) -> None:
    """The commands' own `error: ...` lines (rich's stderr console) are not wrapped at COLUMNS either."""
    missing = tmp_path / "a" / "folder" / "with" / "no" / "catalogue" / "tasks.yaml"
    result = minigate("tasks", "list", "--catalogue", str(missing), cwd=tmp_path)
    assert result.returncode == 2
    line_with(result.stderr, "error: no catalogue at", str(missing), "run `minigate tasks discover` first")


def test_a_long_explanation_stays_on_its_line(tmp_path: Path) -> None:
    config = gateway_config("http://127.0.0.1:9/v1", logging={"store": f"sqlite:///{tmp_path}/calls.db"})
    path = write_config(tmp_path / "minigate.yaml", config)
    result = minigate("keys", "rotate", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    line_with(result.stderr, "error: no log key is configured (logging.encryption_key, logging.key_file)",
              "there is nothing to rotate")


def test_tables_on_stdout_keep_each_value_whole(tmp_path: Path) -> None:
    """Data goes to stdout at the width of its content: a 40-column setting does not cut a URL in a cell."""
    path = write_config(tmp_path / "minigate.yaml", gateway_config(LONG_URL))
    result = minigate("check", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line_with(result.stdout, "scripted", "openai", LONG_URL)
    line_with(result.stdout, "cheap", "mini", "scripted", "mini-lora", "miniature")


@pytest.mark.parametrize("args", [["--help"], ["tasks", "--help"]])
def test_help_still_lists_every_command(tmp_path: Path, args: list[str]) -> None:
    """Plain errors off a terminal leave help as it was: the commands and groups, on stdout."""
    result = minigate(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = ["serve", "check", "replay", "tasks", "router"] if args == ["--help"] else ["discover", "merge"]
    assert all(name in result.stdout for name in expected), result.stdout
