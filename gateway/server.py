"""Running the gateway under uvicorn (uvloop, httptools) with a shutdown that counts as success.

One process; with `server.workers` above 1, `minigate serve` runs gateway/supervisor.py instead, whose workers
each serve with the `GatewayServer` and `uvicorn_config` of this module.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY

from minigate.config import Config
from minigate.gateway.app import create_app
from minigate.gateway.connections import guarded_protocol
from minigate.gateway.settings import ServerSection

__all__ = ["GatewayServer", "run", "uvicorn_config"]


class GatewayServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown so the process dies of the signal.

    A drained shutdown is a success for a gateway (Kubernetes, systemd and supervisors read exit codes),
    so we handle the signals ourselves and return normally: exit status 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(config: Config, config_path: Path, *, host: str, port: int, log_level: str) -> bool:
    """Serve until SIGTERM/SIGINT; False when the server could not start (port taken, upstream failing)."""
    app = create_app(config, REGISTRY, config_path=config_path, announce=True, host=host)
    server = GatewayServer(uvicorn_config(app, config.server, host=host, port=port, log_level=log_level))
    server.run()
    return server.started


def uvicorn_config(app: FastAPI, server: ServerSection, *, host: str, port: int,
                   log_level: str) -> uvicorn.Config:
    """How every gateway listens, `minigate serve` and the tests' alike: uvloop, httptools with our
    connection guards, and the timeouts of the `server` section."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=guarded_protocol(server.header_timeout_s, server.max_connections),
        timeout_keep_alive=max(1, round(server.keep_alive_timeout_s)),
        access_log=False,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=max(1, round(server.drain_timeout_s)),
    )
