"""bench/failover: what clients see when one of two replicas of an upstream fails or slows down.

A real gateway (in process, on a loopback port) fronts two scripted OpenAI-protocol replicas listed as
one upstream's `base_urls`, with `breaker: {failures: 5, open_s: 30}` and `retry: {attempts: 2,
max_wait_s: 2}`. Each scenario sends the same requests from async httpx clients at a fixed concurrency:
both replicas healthy; one refusing connections (a closed port); one answering 503; one slow (0.5 s
before its headers). Reported: the client error rate (target 0) and p50/p99 latency, and the p99 added
over both healthy. Writes bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.support.servers import run_gateway, write_config  # noqa: E402
from tests.support.upstream import ScriptedUpstream  # noqa: E402

KEY = "sk-bench"
UPSTREAM_LATENCY_S = 0.01  # every healthy reply: a fast model server
SLOW_LATENCY_S = 0.5


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def config(urls: list[str], store: str) -> dict[str, Any]:
    upstream = {"kind": "openai", "base_urls": urls, "api_key": "sk-upstream",
                "breaker": {"failures": 5, "open_s": 30}, "retry": {"attempts": 2, "max_wait_s": 2}}
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"keys": [{"name": "bench", "key": KEY, "role": "agent"}]},
        "upstreams": {"replicated": upstream},
        "models": {"m": {"upstream": "replicated", "model": "m", "tier": "frontier"}},
        "routes": {"m": {"default": "m"}},
        "logging": {"store": store},
    }


async def load(base_url: str, requests: int, concurrency: int) -> tuple[list[float], int]:
    """Latencies of the successful requests, and the count of failed ones."""
    latencies: list[float] = []
    errors = 0
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    queue = iter(range(requests))
    async with httpx.AsyncClient(base_url=base_url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as client:
        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                started = time.perf_counter()
                try:
                    ok = (await client.post("/v1/chat/completions", json=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def scenario(name: str, second: Callable[[ScriptedUpstream], str], requests: int, concurrency: int,
             workdir: Path) -> dict[str, Any]:
    with ScriptedUpstream() as healthy, ScriptedUpstream() as other:
        healthy.script(latency_s=UPSTREAM_LATENCY_S)
        other.script(latency_s=UPSTREAM_LATENCY_S)
        slug = "".join(c if c.isalnum() else "-" for c in name)
        path = write_config(workdir / f"{slug}.yaml", config([healthy.base_url, second(other)],
                                                             f"sqlite:///{workdir}/{slug}.db"))
        with run_gateway(path) as gateway:
            asyncio.run(load(gateway.base_url, 20, concurrency))  # warm up: connections, breaker state
            latencies, errors = asyncio.run(load(gateway.base_url, requests, concurrency))
        return {"scenario": name, "requests": requests, "errors": errors, "error_rate": errors / requests,
                "p50_ms": percentile(latencies, 0.5) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
                "to_healthy": len(healthy.requests), "to_other": len(other.requests)}


def slow(up: ScriptedUpstream) -> str:
    up.script(latency_s=SLOW_LATENCY_S)
    return up.base_url


def failing_503(up: ScriptedUpstream) -> str:
    up.script(status=503)
    return up.base_url


SCENARIOS: dict[str, Callable[[ScriptedUpstream], str]] = {
    "both healthy": lambda up: up.base_url,
    "one down (closed port)": lambda up: closed_port_url(),
    "one failing (503)": failing_503,
    "one slow (+0.5 s)": slow,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per scenario (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "failover.json", help="results file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [scenario(name, second, args.requests, args.concurrency, Path(tmp)) for name, second in SCENARIOS.items()]
    base_p99 = rows[0]["p99_ms"]
    for row in rows:
        row["added_p99_ms"] = row["p99_ms"] - base_p99
    print(f"{'scenario':<24} {'errors':>6} {'error rate':>10} {'p50 ms':>8} {'p99 ms':>8} {'+p99 ms':>8} "
          f"{'healthy/other':>14}")
    for r in rows:
        print(f"{r['scenario']:<24} {r['errors']:>6} {r['error_rate']:>10.4f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['added_p99_ms']:>8.1f} {r['to_healthy']:>7}/{r['to_other']:<6}")
    args.out.write_text(json.dumps({"requests": args.requests, "concurrency": args.concurrency,
                                    "upstream_latency_s": UPSTREAM_LATENCY_S, "slow_latency_s": SLOW_LATENCY_S,
                                    "breaker": {"failures": 5, "open_s": 30}, "retry": {"attempts": 2, "max_wait_s": 2},
                                    "scenarios": rows}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
