"""One gateway process among `server.workers`: what it does unlike a lone gateway, and its main.

A worker is a whole gateway (`create_app`: its own upstream clients, call log, runtime, reload
triggers and connection guards) serving the listening socket its supervisor bound
(gateway/supervisor.py). Three things differ, all carried by `WorkerSlot`:

- Metrics. prometheus_client's multiprocess mode: every worker writes its values to files in the
  folder the supervisor made (PROMETHEUS_MULTIPROC_DIR, set before the worker imported
  prometheus_client), and `/metrics`, whichever worker answers it, renders all of them: counters
  and histograms summed (a dead worker's included, so totals never go back), gauges by their
  `multiprocess_mode` over the live workers.
- The call log's spool. A spool has one owner, so each worker has its own folder: worker 0 the one
  a lone gateway uses (nothing is stranded when `workers` goes from 1 to N), worker i > 0
  `<spool>/worker-<i>`. A restarted worker keeps its index, so it replays what its predecessor
  spooled. The store itself is shared (SQLite in WAL mode serialises the writers; PostgreSQL).
- What must happen once: the conversion autopilot (the one writer of promotions.yaml) and the
  start-up table of models run in worker 0 only.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from uvicorn.config import STARTUP_FAILURE

from minigate.gateway.app import create_app
from minigate.gateway.server import GatewayServer, uvicorn_config
from minigate.gateway.supervisor import WorkerLaunch, spool_folder
from minigate.logger.settings import LoggingSection

__all__ = ["WorkerSlot", "serve_worker"]


@dataclass(frozen=True)
class WorkerSlot:
    """Which of the workers this gateway is, and where the workers pool their metrics.

    >>> slot = WorkerSlot(1, Path("/tmp/metrics"))
    >>> slot.call_log_settings(LoggingSection(store="sqlite:///calls.db")).spool_path()
    PosixPath('calls.db.spool/worker-1')
    """

    index: int
    metrics_dir: Path
    is_restart: bool = False  # a replacement for a worker that died: the config file may have changed since

    @property
    def is_first(self) -> bool:
        return self.index == 0

    def call_log_settings(self, section: LoggingSection) -> LoggingSection:
        return section.model_copy(update={"spool": spool_folder(section, self.index)})

    def exposition(self) -> CollectorRegistry:
        """What `/metrics` renders: every worker's values, and the Python version (the same in all)."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        PlatformCollector(registry=registry)
        return registry


class _WorkerServer(GatewayServer):
    """Tells the supervisor once it serves: the app's lifespan has started and the socket is listened on."""

    def __init__(self, config: uvicorn.Config, ready: Connection) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            with contextlib.suppress(OSError):  # a supervisor gone meanwhile: `_stop_when_orphaned` stops us
                self._ready.send_bytes(b"serving")
            self._ready.close()


def serve_worker(launch: WorkerLaunch, slot: WorkerSlot, ready: Connection) -> None:
    """The worker process's main (spawned by the supervisor): serve `launch.listener` until SIGTERM."""
    logging.basicConfig(level=launch.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s [worker {slot.index}]: %(message)s")
    _stop_when_orphaned()
    app = create_app(launch.config, CollectorRegistry(), config_path=launch.config_path, announce=slot.is_first,
                     host=launch.host, worker=slot)
    server = _WorkerServer(uvicorn_config(app, launch.config.server, host=launch.host, port=launch.port,
                                          log_level=launch.log_level), ready)
    server.run(sockets=[launch.listener])
    sys.exit(0 if server.started else STARTUP_FAILURE)


def _stop_when_orphaned() -> None:
    """Drain and exit should the supervisor die without stopping us (SIGKILL): nobody would, else."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
