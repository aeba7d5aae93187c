"""`server.workers: N` above 1: a supervisor process serving one port with N gateway worker processes.

The supervisor binds the listening socket once (port 0 picks one port for all) and starts each
worker with multiprocessing's `spawn`: a fresh interpreter that builds its own app, uvicorn config
and connection guards (gateway/worker.py), exactly as a lone gateway does, and accepts on the shared
socket. uvicorn's own `workers=` is not used: it pickles its `Config` into each worker, and ours
carries a protocol class built at run time (gateway/connections.py) that pickle cannot name. Before
the first worker starts, PROMETHEUS_MULTIPROC_DIR points at a fresh private folder, so every
worker's prometheus_client writes its metrics there; the folder is removed at exit.

Signals: SIGTERM and SIGINT make every worker drain (uvicorn's graceful shutdown within
`server.drain_timeout_s`, then the call log's flush) and the supervisor return True (exit 0) once
all have exited; one that is still there `_KILL_AFTER_S` past both timeouts is killed. SIGHUP goes
on to every serving worker, and each reloads its config. A worker that dies otherwise is logged
with its exit status or signal and started again under the same index (so it replays its own
spool), at once if it had lived `_STABLE_AFTER_S`, else after a pause that doubles, up to
`_MAX_BACKOFF_S`, while it keeps dying young. A replacement starts from the config the supervisor
was given and reloads the file before it serves, under the same rules as a SIGHUP. If any worker
fails to start at first, the others are stopped and `supervise` returns False (STARTUP_FAILURE).

This module stays light (no app, no uvicorn): the supervisor only watches; each worker imports the
gateway in its own process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from minigate.config import Config
from minigate.logger.settings import LoggingSection

__all__ = ["WorkerLaunch", "spool_folder", "supervise", "warn_of_stranded_spools"]

log = logging.getLogger("minigate.gateway")

_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
_BACKLOG = 2048  # uvicorn's default: connections wait here while every worker is busy or restarting
_TICK_S = 0.5  # how often the loops look at `stopping` between events
_STABLE_AFTER_S = 30.0  # a worker that lived this long was healthy: its death restarts it at once
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
_KILL_AFTER_S = 10.0


@dataclass(frozen=True)
class WorkerLaunch:
    """What every worker is started with (pickled into it by `spawn`; the socket travels as a file descriptor)."""

    config: Config
    config_path: Path
    host: str
    port: int
    log_level: str
    metrics_dir: Path
    listener: socket.socket


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready: Connection | None  # the worker's "serving" message arrives here; None once read
    started_at: float

    @property
    def is_serving(self) -> bool:
        return self.ready is None


def supervise(config: Config, config_path: Path, *, host: str, port: int, log_level: str) -> bool:
    """Serve with `config.server.workers` processes until SIGTERM/SIGINT; False when they could not start."""
    try:
        listener = _bind(host, port)
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", host, port, exc)
        return False
    metrics_dir = Path(tempfile.mkdtemp(prefix="minigate-metrics-"))
    os.environ[_MULTIPROC_DIR] = str(metrics_dir)  # inherited by the workers, read when they import prometheus_client
    bound_port = listener.getsockname()[1]
    launch = WorkerLaunch(config, config_path, host, bound_port, log_level, metrics_dir, listener)
    try:
        return _Supervisor(launch, config.server.workers).run()
    finally:
        listener.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(_BACKLOG)
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


def spool_folder(section: LoggingSection, index: int) -> Path:
    """Worker `index`'s spool: worker 0 has the lone gateway's, the others a folder of their own inside it."""
    return section.spool_path() if index == 0 else section.spool_path() / f"worker-{index}"


def warn_of_stranded_spools(section: LoggingSection, workers: int) -> None:
    """Records a worker spooled (or journalled) wait for a worker of the same index: say so when none will run."""
    root = section.spool_path()
    if not section.enabled or not root.is_dir():
        return
    for folder in sorted(root.glob("worker-*")):
        index = folder.name.removeprefix("worker-")
        if index.isdigit() and int(index) >= workers and any(
                file.suffix in (".seg", ".log") and file.stat().st_size > 0 for file in folder.iterdir()):
            log.warning("%s holds call records of worker %s, which server.workers: %d does not run: they reach the "
                        "store once a gateway runs with more than %s workers", folder, index, workers, index)


class _Supervisor:
    def __init__(self, launch: WorkerLaunch, count: int) -> None:
        self.launch = launch
        self.count = count
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}
        self.restart_at: dict[int, float] = {}  # index -> when a dead worker is started again
        self.backoff_s: dict[int, float] = {}
        self.stopping = False

    def run(self) -> bool:
        with self._signals():
            for index in range(self.count):
                self._start(index, is_restart=False)
            if not self._await_first_start():
                self._stop()
                return False
            if not self.stopping:
                log.info("minigate running on http://%s:%d with %d workers (supervisor pid %d; Press CTRL+C to quit)",
                         self.launch.host, self.launch.port, self.count, os.getpid())
            while not self.stopping:
                self._watch()
            self._stop()
        return True

    # -- starting ---------------------------------------------------------------------------------------

    def _start(self, index: int, *, is_restart: bool) -> None:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_run_worker, args=(self.launch, index, is_restart, writer),
                                       name=f"minigate-worker-{index}")
        process.start()
        writer.close()  # the worker holds the other copy: its exit reads as EOF here
        self.workers[index] = _Worker(index, process, reader, time.monotonic())
        log.info("worker %d started (pid %s)", index, process.pid)

    def _await_first_start(self) -> bool:
        """Wait until every worker serves; False as soon as one exits before it does."""
        while not self.stopping and not all(worker.is_serving for worker in self.workers.values()):
            starting = [worker for worker in self.workers.values() if not worker.is_serving]
            multiprocessing.connection.wait(_events(starting), _TICK_S)
            for worker in starting:
                if self._has_died_starting(worker):
                    log.error("worker %d could not start (%s); stopping", worker.index, _exit_of(worker.process))
                    return False
        return True

    def _has_died_starting(self, worker: _Worker) -> bool:
        """Take a starting worker's "serving" message if it came; True when it exited without sending one."""
        if worker.ready is None:
            return False
        with contextlib.suppress(EOFError):
            if worker.ready.poll():
                worker.ready.recv_bytes()
                worker.ready.close()
                worker.ready = None
                return False
        return not worker.process.is_alive()

    # -- watching ---------------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Wait for a worker to exit, a replacement to serve, or a restart to fall due; handle what happened."""
        now = time.monotonic()
        timeout = min([_TICK_S, *(at - now for at in self.restart_at.values())])
        multiprocessing.connection.wait(_events(self.workers.values()), max(0.0, timeout))
        for worker in list(self.workers.values()):
            if self._has_died_starting(worker) or not worker.process.is_alive():
                self._reap(worker)
        for index, at in list(self.restart_at.items()):
            if at <= time.monotonic() and not self.stopping:
                del self.restart_at[index]
                self._start(index, is_restart=True)

    def _reap(self, worker: _Worker) -> None:
        worker.process.join()
        if worker.ready is not None:
            worker.ready.close()
        del self.workers[worker.index]
        _forget(worker, self.launch.metrics_dir)
        if self.stopping:
            return
        lived_s = time.monotonic() - worker.started_at
        delay_s = 0.0 if lived_s >= _STABLE_AFTER_S else self.backoff_s.get(worker.index, _FIRST_BACKOFF_S)
        self.backoff_s[worker.index] = _FIRST_BACKOFF_S if delay_s == 0 else min(delay_s * 2, _MAX_BACKOFF_S)
        log.error("worker %d (pid %s) %s after %.1f s; starting it again in %.1f s", worker.index,
                  worker.process.pid, _exit_of(worker.process), lived_s, delay_s)
        self.restart_at[worker.index] = time.monotonic() + delay_s

    # -- stopping ---------------------------------------------------------------------------------------

    def _stop(self) -> None:
        """Ask every worker to drain and wait for them all; kill what outlives the drain and log flush."""
        self.stopping = True
        self.restart_at.clear()
        self._tell(signal.SIGTERM, serving_only=False)
        settings = self.launch.config
        deadline = time.monotonic() + settings.server.drain_timeout_s + settings.logging.shutdown_timeout_s + _KILL_AFTER_S
        while self.workers and time.monotonic() < deadline:
            multiprocessing.connection.wait([w.process.sentinel for w in self.workers.values()],
                                            min(_TICK_S, max(0.0, deadline - time.monotonic())))
            for worker in [w for w in self.workers.values() if not w.process.is_alive()]:
                self._reap(worker)
        for worker in list(self.workers.values()):
            log.error("worker %d (pid %s) did not stop in time; killing it", worker.index, worker.process.pid)
            worker.process.kill()
            self._reap(worker)

    def _tell(self, signum: signal.Signals, *, serving_only: bool) -> None:
        for worker in self.workers.values():
            if worker.process.pid is not None and (worker.is_serving or not serving_only):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def stop(signum: int, frame: FrameType | None) -> None:
            # SIGTERM for SIGINT too: a worker that got the terminal's SIGINT already drains, and a second
            # SIGINT would make uvicorn skip the drain.
            self.stopping = True
            self._tell(signal.SIGTERM, serving_only=False)

        def reload(signum: int, frame: FrameType | None) -> None:
            # A starting worker has no SIGHUP handler yet (the signal would kill it); it reads the file anyway.
            self._tell(signal.SIGHUP, serving_only=True)

        handlers = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: reload}
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _events(workers: Iterable[_Worker]) -> list[Connection | int]:
    """What to wait on: each worker's exit, and the "serving" message of those starting."""
    return [event for w in workers for event in (w.process.sentinel, w.ready) if event is not None]


def _run_worker(launch: WorkerLaunch, index: int, is_restart: bool, ready: Connection) -> None:
    """The spawned process's target: the gateway is imported there, never in the supervisor."""
    from minigate.gateway.worker import WorkerSlot, serve_worker

    serve_worker(launch, WorkerSlot(index, launch.metrics_dir, is_restart), ready)


def _forget(worker: _Worker, metrics_dir: Path) -> None:
    """A dead worker's live gauges leave the sums; its counters stay, so totals never go back."""
    from prometheus_client import multiprocess

    if worker.process.pid is not None:
        multiprocess.mark_process_dead(worker.process.pid, str(metrics_dir))  # type: ignore[no-untyped-call]


def _exit_of(process: BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "is still running"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
