"""bench/task_match: what live task matching costs a request.

1. Matching alone, in one process: p50/p99 of `TaskMatcher.match` on a signature hit (target <= 20 us)
   and on a miss matched by embedding (MiniLM on the CPU, every text new so nothing is cached; target
   <= 15 ms p50). The miss needs the `tasks` extra; without it that row says so.
2. The gateway at c=32 (wrk, the fixed-response nginx upstream, gateway pinned to one core, as
   bench/logging), with no catalogue, then with a catalogue that the benchmark's request hits.

    bench/task_match [--duration 10] [--misses 200]

Prints a table and writes bench/results/task_match.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from log_bench import PII_BODY, gateway_run  # noqa: E402
from overhead import start_upstream  # noqa: E402
from overhead_proc import stop_server  # noqa: E402
from overhead_setup import ensure_tools, machine_info  # noqa: E402

from minigate.router.catalogue import Catalogue, Task, save_catalogue  # noqa: E402
from minigate.router.matcher import TaskMatcher  # noqa: E402
from minigate.router.settings import TasksSection  # noqa: E402
from minigate.router.signature import signature  # noqa: E402

BANKING = BENCH.parents[1] / "shared" / "data" / "banking77" / "train.csv"
SYSTEM = "Classify the customer's banking question into one of our intents."


def catalogue(path: Path, hit: dict[str, object]) -> None:
    """Two tasks: one holding the gateway benchmark's request signature, one the banking classifier's."""
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(2, 768)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    banking = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}]}
    tasks = [Task("t001", "support-refunds", 100, 0.5, {signature(hit): 100}),
             Task("t002", "banking-intents", 100, 0.5, {signature(banking): 100})]
    save_catalogue(Catalogue(tasks, {"t001": centroids[0], "t002": centroids[1]}, 200, "2026-11-23T00:00:00Z",
                             "bench", "all-MiniLM-L6-v2", 3), path)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_us": round(statistics.median(ordered) * 1e6, 2),
            "p99_us": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e6, 2), "n": len(ordered)}


async def time_matches(matcher: TaskMatcher, bodies: list[dict[str, object]]) -> list[float]:
    samples = []
    for body in bodies:
        started = time.perf_counter()
        await matcher.match(body)
        samples.append(time.perf_counter() - started)
    return samples


def micro(path: Path, misses: int) -> dict[str, object]:
    hit = json.loads(PII_BODY)
    found: dict[str, object] = {}
    matcher = TaskMatcher.load(TasksSection(catalogue=path))
    bodies = [{**hit, "messages": [hit["messages"][0], {"role": "user", "content": f"refund {i}"}]} for i in range(20000)]
    asyncio.run(time_matches(matcher, bodies[:1000]))  # warm
    found["signature_hit"] = percentiles(asyncio.run(time_matches(matcher, bodies)))
    try:
        embedding = TaskMatcher.load(TasksSection(catalogue=path, embedding=True, budget_ms=10_000))
    except Exception as exc:  # the `tasks` extra is optional
        found["embedding_miss"] = {"skipped": f"{type(exc).__name__}: {exc}"}
        return found
    with BANKING.open(newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][:misses]
    # A signature never seen: its context and the user text are embedded.
    novel = [{"messages": [{"role": "system", "content": f"A prompt never seen #{i}."},
                           {"role": "user", "content": text}]} for i, text in enumerate(texts)]
    # A signature seen before but not in the catalogue (or held by several tasks): its context embedding is
    # cached, each new user text is embedded.
    seen = [{"messages": [{"role": "system", "content": "One uncatalogued step."}, {"role": "user", "content": text}]}
            for text in texts]

    async def run() -> tuple[list[float], list[float]]:
        await embedding.warm_up()
        first = await time_matches(embedding, novel)
        await time_matches(embedding, seen[:1])
        return first, await time_matches(embedding, [{**b, "messages": [b["messages"][0], {
            "role": "user", "content": b["messages"][1]["content"] + " please"}]} for b in seen[1:]])

    new_signature, known_context = asyncio.run(run())
    found["embedding_miss"] = percentiles(new_signature)
    found["embedding_miss_known_context"] = percentiles(known_context)
    embedding.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--misses", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = workdir / "tasks.yaml"
        catalogue(path, json.loads(PII_BODY))
        matching = micro(path, args.misses)
        tools = ensure_tools()
        upstream = start_upstream(tools["nginx"], workdir)
        try:
            gateway = {name: gateway_run(name, logging, upstream.port, workdir, tools["wrk"], args.duration)
                       for name, logging in (("no catalogue", "{enabled: false}"),
                                             ("signature hits", f'{{enabled: false}}\ntasks: {{catalogue: "{path}"}}'))}
        finally:
            stop_server(upstream)
    hit, miss = matching["signature_hit"], matching["embedding_miss"]
    print(f"\n{'matching':<28}{'p50 us':>10}{'p99 us':>10}   target")
    print(f"{'signature hit':<28}{hit['p50_us']:>10}{hit['p99_us']:>10}   p50 <= 20 us: {'PASS' if hit['p50_us'] <= 20 else 'FAIL'}")
    if "skipped" in miss:
        print(f"{'embedding miss':<28}   skipped: {miss['skipped']}")
    else:
        for label, row in (("embedding miss, new step", miss),
                           ("embedding miss, known step", matching["embedding_miss_known_context"])):
            print(f"{label:<28}{row['p50_us']:>10}{row['p99_us']:>10}   p50 <= 15 ms: "
                  f"{'PASS' if row['p50_us'] <= 15_000 else 'FAIL'}")
    base = gateway["no catalogue"]["requests_per_s"]
    print(f"\n{'gateway, c=32':<28}{'req/s':>10}{'vs none':>10}{'p99 ms':>10}")
    for name, row in gateway.items():
        print(f"{name:<28}{row['requests_per_s']:>10.0f}{row['requests_per_s'] / base:>9.2f}x{row['p99_ms']:>10}")
    out = BENCH / "results" / "task_match.json"
    out.write_text(json.dumps({"benchmark": "task_match", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "machine": machine_info(), "matching": matching, "gateway_c32": gateway}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
