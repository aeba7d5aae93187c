"""One load run: wrk against a server, with the server's CPU time and RSS read around it.

wrk runs with one thread on CPU 0 (beside the upstream); its Lua `done()` prints the summary
as JSON, so nothing depends on the layout of wrk's human-readable report.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from overhead_fixtures import Api, Mode
from overhead_proc import Server, cpu_seconds, rss_bytes

__all__ = ["LOAD_CPU", "Measurement", "TargetRun", "WrkFailed", "run_wrk", "measure"]

LOAD_CPU = "0"


class WrkFailed(RuntimeError):
    """wrk exited non-zero or printed no summary."""


@dataclass
class Measurement:
    target: str
    round: int
    api: Api
    mode: Mode
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    requests_per_s: float
    latency_ms: dict[str, float]
    cpu_s: float
    cpu_ms_per_request: float
    rss_after_bytes: int


@dataclass
class TargetRun:
    """One start of one target: start-up, memory, and its load runs (APIs x modes x concurrencies)."""

    target: str
    round: int
    startup_s: float
    idle_rss_bytes: int
    rss_after_load_bytes: int
    measurements: list[Measurement]


def run_wrk(wrk: str, url: str, script: Path, concurrency: int, duration_s: int) -> dict[str, object]:
    """Run wrk pinned to the load CPU and return its `done()` summary."""
    command = ["taskset", "-c", LOAD_CPU, wrk, "-t1", f"-c{concurrency}", f"-d{duration_s}s",
               "--latency", "--timeout", "10s", "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            summary: dict[str, object] = json.loads(line.removeprefix("WRK_JSON "))
            return summary
    said = (result.stderr.strip() or result.stdout.strip()).splitlines()[:3]
    raise WrkFailed(f"wrk exited {result.returncode}: {' / '.join(said)}")


def _errors(summary: dict[str, object]) -> int:
    counts = summary["errors"]
    assert isinstance(counts, dict)
    return sum(int(value) for value in counts.values())


def measure(server: Server, wrk: str, url: str, script: Path, mode: Mode, concurrency: int,
            duration_s: int, round_: int, api: Api = "chat") -> Measurement:
    """Load `server` at `url` and charge it the CPU time its process tree spent meanwhile."""
    cpu_before = cpu_seconds(server.process.pid)
    summary = run_wrk(wrk, url, script, concurrency, duration_s)
    cpu = cpu_seconds(server.process.pid) - cpu_before
    requests, elapsed = int(str(summary["requests"])), int(str(summary["duration_us"])) / 1e6
    latency = summary["latency_us"]
    assert isinstance(latency, dict)
    return Measurement(
        target=server.name, round=round_, api=api, mode=mode, concurrency=concurrency,
        requests=requests, errors=_errors(summary), duration_s=elapsed,
        requests_per_s=requests / elapsed if elapsed else 0.0,
        latency_ms={key: float(value) / 1000 for key, value in latency.items()},
        cpu_s=cpu, cpu_ms_per_request=1000 * cpu / requests if requests else float("nan"),
        rss_after_bytes=rss_bytes(server.process.pid),
    )
