"""Run the gateway for a test: in a thread (fast, fresh registry) or as a `minigate serve` process (signals)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from minigate.config import load_config
from minigate.gateway.app import create_app
from minigate.gateway.server import uvicorn_config
from tests.support.quick_server import QuickServer

__all__ = ["GatewayProcess", "RunningGateway", "run_gateway", "start_gateway_process", "write_config"]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class RunningGateway:
    base_url: str  # http://127.0.0.1:PORT
    app: FastAPI
    registry: CollectorRegistry

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


@contextmanager
def run_gateway(config_path: Path, *, watch: bool = False) -> Iterator[RunningGateway]:
    """A real uvicorn server on a free loopback port, in a thread, with its own metrics registry."""
    registry = CollectorRegistry()
    config = load_config(config_path)
    app = create_app(config, registry, config_path=config_path if watch else None)
    server = QuickServer(uvicorn_config(app, config.server, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", app, registry)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# uvicorn's line for one process; the supervisor's for `server.workers` above 1 (its workers share its socket).
_LISTENING = re.compile(r"(?:Uvicorn|minigate) running on http://[^:]+:(\d+)")


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    base_url: str
    log: list[str]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)


@contextmanager
def start_gateway_process(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                          timeout: float = 60) -> Iterator[GatewayProcess]:
    """`minigate serve ARGS` as a child process; yields once it listens (port read from its log).

    It runs in a new temporary folder unless `cwd` is given, so relative paths (the default call-log
    file) land there and not in the repository.
    """
    command = [sys.executable, "-m", "minigate.cli", "serve", *args]
    cwd = cwd or Path(tempfile.mkdtemp(prefix="minigate-serve-"))
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)
    assert process.stderr is not None
    log: list[str] = []
    reader = _start_reader(process, log)
    deadline = time.monotonic() + timeout
    port = None
    while port is None:
        if time.monotonic() > deadline or (process.poll() is not None and not reader.is_alive()):
            process.kill()
            raise RuntimeError("minigate serve did not start:\n" + "".join(log))
        port = next((m.group(1) for line in list(log) if (m := _LISTENING.search(line))), None)
        time.sleep(0.02)
    running = GatewayProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _start_reader(process: subprocess.Popen[str], log: list[str]) -> threading.Thread:
    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread
