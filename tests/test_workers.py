"""`server.workers: 2`: one port, two gateway processes, metrics and the call log as if they were one.

The gateway under test is the real `minigate serve` (a subprocess) in front of the scripted upstream. Each
request opens a new connection, so both workers take some; which one answered is read from the workers'
own metric files (prometheus_client's multiprocess folder), never from anything the gateway sends.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from minigate.gateway.supervisor import spool_folder, warn_of_stranded_spools
from minigate.gateway.worker import WorkerSlot
from minigate.logger.settings import LoggingSection
from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import GatewayProcess, start_gateway_process, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}


def _config(upstream: ScriptedUpstream, tmp_path: Path) -> Path:
    config = gateway_config(upstream.base_url, server={"host": "127.0.0.1", "port": 0, "workers": 2},
                            logging={"store": f"sqlite:///{tmp_path}/calls.db"})
    return write_config(tmp_path / "minigate.yaml", config)


def _ask(gateway: GatewayProcess, count: int) -> list[int]:
    """`count` chat calls, each on a new connection (so the kernel hands them to either worker)."""
    return [httpx.post(f"{gateway.base_url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30).status_code
            for _ in range(count)]


def _scrape(gateway: GatewayProcess) -> dict[str, float]:
    """Each sample name with its values summed over the labels."""
    text = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for sample in (sample for family in text_string_to_metric_families(text) for sample in family.samples):
        totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _requests_total(gateway: GatewayProcess) -> float:
    return _scrape(gateway).get("minigate_requests_total", 0.0)


def _workers(gateway: GatewayProcess) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker, its other child)."""
    pid = gateway.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def _requests_by_worker(workers: list[int]) -> dict[int, float]:
    """Each worker's own count of requests, from its file in the supervisor's multiprocess metrics folder."""
    environ = dict(entry.split(b"=", 1) for entry in Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
                   if b"=" in entry)
    folder = Path(environ[b"PROMETHEUS_MULTIPROC_DIR"].decode())
    counts = {}
    for pid in workers:
        file = folder / f"counter_{pid}.db"  # made when the worker creates its metrics: none while it starts
        values = MmapedDict.read_all_values_from_file(str(file)) if file.exists() else []
        counts[pid] = sum(value for key, value, _, _ in values if json.loads(key)[1] == "minigate_requests_total")
    return counts


def _logged(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "calls.db") as db:
        count: int = db.execute("SELECT count(*) FROM calls").fetchone()[0]
    return count


def test_two_workers_count_and_log_every_request_then_drain_on_sigterm(
        upstream: ScriptedUpstream, tmp_path: Path) -> None:
    with start_gateway_process("--config", str(_config(upstream, tmp_path)), "--port", "0", cwd=tmp_path) as gateway:
        workers = _workers(gateway)
        assert len(workers) == 2
        assert _ask(gateway, 40) == [200] * 40
        by_worker = _requests_by_worker(workers)
        assert sum(by_worker.values()) == 40 and all(by_worker.values()), f"requests per worker: {by_worker}"
        # Whichever worker answers the scrape, it reports both workers' requests.
        assert [_requests_total(gateway) for _ in range(6)] == [40] * 6
        scrape = eventually(lambda: (found := _scrape(gateway)).get("minigate_log_records_written_total") == 40
                            and found, what="both workers' call logs have written their records")
        assert scrape["minigate_log_queue_depth"] == 0
        assert scrape["process_resident_memory_bytes"] > 0 and scrape["process_cpu_seconds_total"] > 0
        assert "minigate_event_loop_lag_seconds" in scrape and "python_info" in scrape
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert _logged(tmp_path) == 40


def test_a_killed_worker_is_restarted_and_the_totals_go_on(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    answered: list[int] = []

    def ask(gateway: GatewayProcess) -> list[int]:
        codes = _ask(gateway, 10)
        answered.extend(codes)
        return codes

    with start_gateway_process("--config", str(_config(upstream, tmp_path)), "--port", "0", cwd=tmp_path) as gateway:
        ask(gateway)
        victim, survivor = _workers(gateway)
        os.kill(victim, signal.SIGKILL)
        ask(gateway)  # the other worker answers meanwhile
        eventually(lambda: len(workers := _workers(gateway)) == 2 and victim not in workers, timeout=30,
                   what="a new worker replaces the killed one")
        eventually(lambda: any("was killed by SIGKILL" in line for line in gateway.log), timeout=5,
                   what="the supervisor says why the worker died")
        [replacement] = [pid for pid in _workers(gateway) if pid != survivor]
        eventually(lambda: ask(gateway) and _requests_by_worker([replacement])[replacement] > 0, timeout=30,
                   what="the new worker serves")
        assert answered == [200] * len(answered)
        assert _requests_total(gateway) == len(answered)  # the dead worker's counts stay in the sums
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
    assert _logged(tmp_path) == len(answered)


def test_each_worker_spools_to_a_folder_of_its_own(tmp_path: Path) -> None:
    section = LoggingSection(store=f"sqlite:///{tmp_path}/calls.db")
    folders = [WorkerSlot(index, tmp_path).call_log_settings(section).spool_path() for index in range(3)]
    # Worker 0 has the lone gateway's folder: going from 1 worker to several strands nothing.
    assert folders == [tmp_path / "calls.db.spool", tmp_path / "calls.db.spool" / "worker-1",
                       tmp_path / "calls.db.spool" / "worker-2"]


def test_a_worker_that_cannot_start_stops_the_others_and_serve_exits_3(tmp_path: Path) -> None:
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "workers": 2},
        "upstreams": {"local": {"kind": "llamacpp", "path": str(tmp_path / "missing.gguf")}},
        "models": {"mini": {"upstream": "local", "model": "mini", "tier": "miniature"}},
        "routes": {"mini": {"default": "mini"}},
        "logging": {"store": f"sqlite:///{tmp_path}/calls.db"},
    }
    path = write_config(tmp_path / "minigate.yaml", config)
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "serve", "--config", str(path), "--port", "0"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "could not start (exited with status 3); stopping" in result.stderr


def test_records_of_a_worker_no_longer_run_are_pointed_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    section = LoggingSection(store=f"sqlite:///{tmp_path}/calls.db")
    stranded = spool_folder(section, 2)
    stranded.mkdir(parents=True)
    (stranded / "0000000001.seg").write_bytes(b"a spooled batch")
    with caplog.at_level(logging.WARNING, logger="minigate.gateway"):
        warn_of_stranded_spools(section, 3)
        assert not caplog.records
        warn_of_stranded_spools(section, 1)
    assert f"{stranded} holds call records of worker 2" in caplog.text
