"""bench/limits: what checking a key's rate limits and budgets costs on the request path.

`Limiter.admit` is timed one call at a time on one event loop, for: a key without limits (the common case:
one attribute read), a key limited on everything in process memory (rpm, tpm, usd/day, usd/month for the key
and for its route: eight counters), the same key with the counters in Redis (one EVALSHA round trip to a
redis-server this bench starts on loopback), and, beside it, a bare Redis INCR round trip through the same
client: the floor any limiter shared between replicas pays. Then 32 admissions at once, in Redis, to show
the round trips overlap.

Then accuracy across replicas: two `minigate serve` processes sharing that Redis behind a round-robin
balancer, a key limited to L requests per minute, 2L requests sent by 32 threads (a new connection each, so
turns alternate) within one clock minute: how many were admitted, against L. Prints tables; `--json`
writes them as JSON too.

    .venv/bin/python bench/limits.py [--n 20000] [--rpm 100,1000] [--json bench/results/limits.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from minigate.gateway.auth import Caller
from minigate.gateway.limits import Limiter
from minigate.gateway.settings import KeyLimits, LimitsSection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.round_robin import round_robin  # noqa: E402
from tests.support.servers import start_gateway_process, write_config  # noqa: E402
from tests.support.upstream import ScriptedUpstream  # noqa: E402

LIMITS = KeyLimits.model_validate({
    "rpm": 10**9, "tpm": 10**9, "usd_per_day": 10**9, "usd_per_month": 10**9,
    "routes": {"gpt-4.1": {"rpm": 10**9, "tpm": 10**9, "usd_per_day": 10**9, "usd_per_month": 10**9}},
})


async def timed(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    for _ in range(min(n // 10, 1000)):  # warm up
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def row(name: str, samples: list[float]) -> dict[str, object]:
    ordered = sorted(samples)
    return {"case": name, "n": len(samples), "mean_us": statistics.fmean(samples),
            "p50_us": ordered[len(ordered) // 2], "p99_us": ordered[int(len(ordered) * 0.99)]}


async def measure(n: int, redis_url: str) -> list[dict[str, object]]:
    registry = CollectorRegistry()
    memory = Limiter(LimitsSection(), registry, limited=list, limits_of=lambda name: None)
    shared = Limiter(LimitsSection.model_validate({"redis_url": redis_url}), CollectorRegistry(), limited=list,
                     limits_of=lambda name: None)
    open_key, limited = Caller("open", "agent"), Caller("bench", "agent", LIMITS)
    rows = [
        row("key without limits", await timed(lambda: memory.admit(open_key, "gpt-4.1"), n)),
        row("8 counters, in process", await timed(lambda: memory.admit(limited, "gpt-4.1"), n)),
        row("8 counters, Redis (one EVALSHA)", await timed(lambda: shared.admit(limited, "gpt-4.1"), n)),
    ]
    client = shared._counters._client  # type: ignore[attr-defined]  # the same connection pool, for the floor
    rows.append(row("bare Redis INCR round trip (floor)", await timed(lambda: client.incr("bench:floor"), n)))

    batches = n // 32
    started = time.perf_counter()
    for _ in range(batches):
        await asyncio.gather(*(shared.admit(limited, "gpt-4.1") for _ in range(32)))
    elapsed = time.perf_counter() - started
    rows.append({"case": "Redis, 32 at once (per admission)", "n": batches * 32,
                 "mean_us": elapsed / (batches * 32) * 1e6, "p50_us": None, "p99_us": None})
    await shared.close()
    return rows


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench/limits needs redis-server (scripts/setup test installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.01)
    return process, f"redis://127.0.0.1:{port}/0"


def unchecked(base_url: str) -> float:
    """Admissions a replica let through unchecked (Redis slower than limits.timeout_s): they overshoot a limit."""
    text = httpx.get(f"{base_url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("minigate_limits_unchecked_total{"))


def accuracy(redis_url: str, limits: list[int], workdir: Path) -> list[dict[str, object]]:
    """Admitted requests out of 2L sent through two replicas, for each limit L."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack

    rows = []
    with ExitStack() as stack, ScriptedUpstream() as upstream:
        keys = [{"name": f"rpm-{limit}", "key": f"sk-rpm-{limit}", "role": "agent", "limits": {"rpm": limit}}
                for limit in limits]
        config = {
            "server": {"host": "127.0.0.1", "port": 0}, "auth": {"keys": keys},
            "limits": {"redis_url": redis_url},
            "upstreams": {"up": {"kind": "openai", "base_url": upstream.base_url}},
            "models": {"gpt-4.1": {"upstream": "up", "model": "gpt-4.1", "tier": "frontier"}},
            "routes": {"gpt-4.1": {"default": "gpt-4.1"}},
            "logging": {"store": "sqlite:///${STORE}"},
        }
        path = write_config(workdir / "minigate.yaml", config)
        replicas = [stack.enter_context(start_gateway_process(
            "--config", str(path), "--port", "0", env={"STORE": str(workdir / f"calls-{i}.db")})) for i in range(2)]
        backends = [("127.0.0.1", int(r.base_url.rsplit(":", 1)[1])) for r in replicas]
        proxy = stack.enter_context(round_robin(backends))
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}

        def status(key: str) -> int:
            with httpx.Client(base_url=proxy.base_url, timeout=30) as client:
                return client.post("/v1/chat/completions", json=body,
                                   headers={"authorization": f"Bearer {key}"}).status_code

        for limit in limits:
            if time.time() % 60 > 2:  # all 2L requests within one clock minute: start as one begins
                time.sleep(60 - time.time() % 60 + 0.1)
            started = time.perf_counter()
            with ThreadPoolExecutor(32) as pool:
                statuses = list(pool.map(lambda _: status(f"sk-rpm-{limit}"), range(2 * limit)))
            admitted = statuses.count(200)
            rows.append({"rpm": limit, "sent": len(statuses), "admitted": admitted, "refused_429": statuses.count(429),
                         "error_pct": 100 * (admitted - limit) / limit, "seconds": time.perf_counter() - started,
                         "unchecked_so_far": sum(unchecked(r.base_url) for r in replicas)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rpm", default="100,1000", help="limits to test across two replicas ('' skips)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import tempfile

    import uvloop

    process, url = start_redis()
    try:
        rows = uvloop.run(measure(args.n, url))
        limits = [int(x) for x in args.rpm.split(",") if x]
        spread = accuracy(url, limits, Path(tempfile.mkdtemp(prefix="bench-limits-"))) if limits else []
    finally:
        process.kill()
    table = Table("case", "n", "mean µs", "p50 µs", "p99 µs", title="Limiter.admit per request (one event loop)")
    for r in rows:
        table.add_row(str(r["case"]), str(r["n"]), *(f"{r[k]:.1f}" if r[k] is not None else "-"
                                                     for k in ("mean_us", "p50_us", "p99_us")))
    Console().print(table)
    if spread:
        table = Table("rpm limit", "sent", "admitted", "429", "error", "seconds", "unchecked (so far)",
                      title="One limit across two replicas (Redis, round-robin, 32 clients)")
        for r in spread:
            table.add_row(str(r["rpm"]), str(r["sent"]), str(r["admitted"]), str(r["refused_429"]),
                          f"{r['error_pct']:+.1f}%", f"{r['seconds']:.1f}", f"{r['unchecked_so_far']:g}")
        Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"admit": rows, "replicas": spread}, indent=2))


if __name__ == "__main__":
    main()
