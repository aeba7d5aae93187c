"""`minigate serve` as the run drives it: a child process on a free port, its config rewritten between stages.

The gateway reloads a changed config by itself; `reconfigure` writes the file and waits until the gateway
says (in `minigate_config_reloads_total`) that it applied it, so the next stage never races the reload.
A rejected reload stops the run with the gateway's reason.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = ["Gateway", "GatewayError"]

_RELOADS = re.compile(r'^minigate_config_reloads_total\{result="(applied|rejected)"\} (\S+)$', re.M)
_STORED = re.compile(r"^minigate_log_records_written_total (\S+)$", re.M)
_QUEUED = re.compile(r"^minigate_log_queue_depth (\S+)$", re.M)


class GatewayError(RuntimeError):
    """The gateway would not start, or refused a config the run wrote."""


class Gateway:
    """One `minigate serve` child, its config file in the run's folder, its log beside it."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.config_path = folder / "minigate.yaml"
        self.log_path = folder / "gateway.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {**os.environ, **env}
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=10)

    def start(self, config: dict[str, Any]) -> None:
        config["server"] = {"host": "127.0.0.1", "port": self.port}
        self._write(config)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "minigate.cli", "serve", "--config", str(self.config_path)],
                cwd=self.folder, env=self._env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300  # a first start may build the local miniature's cache
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise GatewayError(f"minigate serve exited with {self._process.returncode}; see {self.log_path}")
            try:
                if self._http.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise GatewayError(f"minigate serve was not ready in 300 s; see {self.log_path}")

    def reconfigure(self, config: dict[str, Any], timeout_s: float = 120) -> None:
        """Write the new config and wait until the gateway serves it."""
        config["server"] = {"host": "127.0.0.1", "port": self.port}
        applied, rejected = self.reloads()
        self._write(config)
        self.await_reload(applied, rejected, timeout_s)

    def await_reload(self, applied: float, rejected: float, timeout_s: float = 120) -> None:
        """Wait for one more applied reload than `applied` (a file the run or a command wrote)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now_applied, now_rejected = self.reloads()
            if now_rejected > rejected:
                raise GatewayError(f"the gateway rejected the new config; see {self.log_path}")
            if now_applied > applied:
                return
            time.sleep(0.25)
        raise GatewayError(f"the gateway did not reload {self.config_path} in {timeout_s:.0f} s; see {self.log_path}")

    def stored(self) -> int:
        """Call records the gateway has written to its store so far."""
        return self._stored_and_queued()[0]

    def await_stored(self, count: int, timeout_s: float = 60) -> None:
        """Wait until the store holds `count` records and none waits in memory: logging is asynchronous, and
        a command reading the store right after the calls would otherwise miss the last batch."""
        deadline = time.monotonic() + timeout_s
        while True:
            stored, queued = self._stored_and_queued()
            if stored >= count and queued == 0:
                return
            if time.monotonic() > deadline:
                raise GatewayError(f"the gateway stored {stored} of {count} call records in {timeout_s:.0f} s "
                                   f"({queued} still queued); see {self.log_path}")
            time.sleep(0.1)

    def _stored_and_queued(self) -> tuple[int, int]:
        text = self.metrics()
        stored, queued = _STORED.search(text), _QUEUED.search(text)
        return (int(float(stored.group(1))) if stored else 0, int(float(queued.group(1))) if queued else 0)

    def metrics(self) -> str:
        """The gateway's Prometheus exposition."""
        return self._http.get("/metrics").text

    def reloads(self) -> tuple[float, float]:
        """Applied and rejected reloads so far."""
        counts = {"applied": 0.0, "rejected": 0.0}
        for result, value in _RELOADS.findall(self.metrics()):
            counts[result] = float(value)
        return counts["applied"], counts["rejected"]

    def stop(self) -> None:
        """SIGTERM: the gateway drains its log queue and its shadows' records before it exits."""
        self._http.close()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(120)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _write(self, config: dict[str, Any]) -> None:
        staged = self.config_path.with_suffix(".yaml.new")
        staged.write_text(yaml.safe_dump(config, sort_keys=False, width=120), encoding="utf-8")
        staged.replace(self.config_path)  # atomic: the watcher never reads half a file


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
