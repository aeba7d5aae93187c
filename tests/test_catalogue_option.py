"""`--catalogue` means the same in every command: the option (or $MINIGATE_TASKS_CATALOGUE), else the
config's `tasks.catalogue` (the config from --config, $MINIGATE_CONFIG or ./minigate.yaml), else ./tasks.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typing import Any

import numpy as np
import orjson
import pytest
import typer

from minigate.cli import app
from minigate.logger.crypto import generate_key
from minigate.router.catalogue import Catalogue, Task, save_catalogue
from tests.conftest import gateway_config
from tests.support.servers import write_config

ENV = {name: value for name, value in os.environ.items()
       if name not in ("MINIGATE_CONFIG", "MINIGATE_TASKS_CATALOGUE")}


def commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf command by its full name (typer runs on a click copy of its own: found by shape, not type)."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found |= commands(command, f"{prefix}{name} ")
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_catalogue_option_is_one_declaration() -> None:
    taking = {name: command for name, command in commands(typer.main.get_command(app)).items()
              if any("--catalogue" in param.opts for param in command.params)}
    assert {"tasks list", "tasks show", "tasks rename", "tasks merge", "tasks candidates",
            "dataset export"} <= set(taking)
    options = {name: next(param for param in command.params if "--catalogue" in param.opts)
               for name, command in taking.items()}
    assert {(option.envvar, option.default, getattr(option, "help", None)) for option in options.values()} == {
        ("MINIGATE_TASKS_CATALOGUE", None,
         "The task catalogue (`tasks discover` writes it); default: the config's tasks.catalogue, else ./tasks.yaml.")}
    # The default comes from a config, so every one of them takes --config too.
    assert all(any("--config" in param.opts for param in command.params) for command in taking.values())


def write_catalogue(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    task = Task("t001", name, size=1, call_share=1.0, signatures={"9f2c41d07a5be113": 1})
    save_catalogue(Catalogue([task], {"t001": np.eye(1, 384, dtype=np.float32)[0]}, 1, "2026-11-23T00:00:00Z",
                             "test", "all-MiniLM-L6-v2", 2), path)
    return path


def minigate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**ENV, **env}, timeout=120, check=False)


def listed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return str(orjson.loads(result.stdout)["tasks"][0]["name"])


@pytest.mark.slow
def test_the_default_is_the_configs_catalogue_else_the_local_one(tmp_path: Path) -> None:
    write_catalogue(tmp_path / "tasks.yaml", "local")
    configured = write_catalogue(tmp_path / "conf" / "refunds.yaml", "configured")
    logging = {"store": f"sqlite:///{tmp_path}/calls.db", "encryption_key": generate_key()}
    config = write_config(tmp_path / "conf" / "minigate.yaml", gateway_config(
        "http://127.0.0.1:9/v1", logging=logging, tasks={"catalogue": "refunds.yaml"}))  # beside the config

    assert listed(minigate("tasks", "list", "--json", cwd=tmp_path)) == "local"  # embedded default: no catalogue
    assert listed(minigate("tasks", "list", "--json", "--config", str(config), cwd=tmp_path)) == "configured"
    assert listed(minigate("tasks", "list", "--json", cwd=tmp_path, MINIGATE_CONFIG=str(config))) == "configured"
    assert listed(minigate("tasks", "list", "--json", cwd=tmp_path, MINIGATE_CONFIG=str(config),
                           MINIGATE_TASKS_CATALOGUE="tasks.yaml")) == "local"  # named beats configured

    # The other commands find the same catalogue: export resolves the configured task (then finds no calls).
    export = minigate("dataset", "export", "--task", "configured", cwd=tmp_path, MINIGATE_CONFIG=str(config))
    assert export.returncode == 1 and "no examples for task configured (t001)" in export.stderr
    renamed = minigate("tasks", "rename", "t001", "refunds", "--config", str(config), cwd=tmp_path)
    assert renamed.returncode == 0, renamed.stderr
    assert "name: refunds" in configured.read_text() and "name: local" in (tmp_path / "tasks.yaml").read_text()


@pytest.mark.slow
def test_a_missing_catalogue_is_named_with_what_to_do(tmp_path: Path) -> None:
    result = minigate("tasks", "show", "t001", cwd=tmp_path)
    assert result.returncode == 2 and "no catalogue at tasks.yaml: run `minigate tasks discover` first" in result.stderr
