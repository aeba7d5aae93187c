"""bench/logging: what the call log costs the gateway, and how fast its writer drains into each store.

1. Gateway throughput at c=32 (wrk on CPU 0 with the nginx upstream, minigate pinned to CPU 1) with
   the call log off, then on with SQLite, then on with PostgreSQL; redaction and encryption on, and a
   request that carries PII (a different user turn each time) so the redactor has work. Target:
   logging on >= 0.9x logging off. The call log seals (redacts, encrypts) in a worker process, as
   deployed: its rows move that worker to CPU 0, beside wrk and nginx, so it competes with the load
   generator rather than the event loop; the `one core` row leaves it on the gateway's core, to show
   what the work costs where no spare core exists. CPU ms/req counts the whole process tree.
2. Sustained writer throughput (bench/log_writer.py, pinned to one core): records/s sealed
   (redacted, encrypted) and stored per store. Target: >= 2,000 records/s.

Writes bench/results/logging.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from overhead import start_upstream
from overhead_fixtures import JSON_PATH, wrk_varying_script
from overhead_load import measure
from overhead_proc import descendants, start_server, stop_server
from overhead_setup import ensure_tools, free_port, log, machine_info, minigate_command

BENCH = Path(__file__).resolve().parent
KEY = "bench-key"
# Every request carries PII so the redactor has work; `{n}` differs per request (bench/overhead_fixtures
# `wrk_varying_script`), as users' turns do, while the system prompt repeats, as agents' prompts do.
PII_TEMPLATE = json.dumps({
    "model": "gpt-4.1",
    "messages": [
        {"role": "system", "content": "You are a support agent for ACME. Answer in one paragraph."},
        {"role": "user", "content": "Hi, I'm Jane (jane.doe{n}@example.com, +1 415 555 {n}). My card 4111 1111 1111 "
                                    "1111 was charged twice for order {n}; please refund to IBAN "
                                    "GB82 WEST 1234 5698 7654 32. My server 10.20.30.40 got the receipt."},
    ],
    "temperature": 0.2,
})


def pii_body(n: int) -> str:
    """The template as wrk fills it for request number `n`."""
    return PII_TEMPLATE.replace("{n}", f"{n % 10000:04d}")


PII_BODY = pii_body(8123)
_CONFIG = """server: {{host: 127.0.0.1, port: {port}}}
auth: {{keys: [{{name: bench, key: {key}, role: agent}}]}}
upstreams: {{nginx: {{kind: openai, base_url: "http://127.0.0.1:{upstream}/v1", api_key: dummy}}}}
models: {{gpt-4.1: {{upstream: nginx, model: gpt-4.1, tier: frontier}}}}
routes: {{gpt-4.1: {{default: gpt-4.1}}}}
logging: {logging}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per variant and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, the variants interleaved in each; each variant reports its median round")
    parser.add_argument("--records", type=int, default=20000, help="records per writer-throughput run")
    parser.add_argument("--postgres", default=os.environ.get("MINIGATE_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/test"))
    return parser.parse_args(argv)


def log_key() -> str:
    sys.path.insert(0, str(BENCH.parent))
    from minigate.logger.crypto import generate_key

    return generate_key()


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def fresh_database(admin_url: str) -> str | None:
    name = f"minigate_bench_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server: the PostgreSQL rows are left out, and said so
        log(f"PostgreSQL unavailable ({type(exc).__name__}: {exc}); its rows are skipped")
        return None
    return admin_url.rsplit("/", 1)[0] + "/" + name


def variants(workdir: Path, key: str, postgres: str | None) -> dict[str, tuple[str, int | None]]:
    """Variant name -> the YAML of its logging section, and the CPU its sealing worker moves to."""
    sqlite = f'{{store: "sqlite:///{workdir}/calls.db", encryption_key: "{key}"}}'
    found: dict[str, tuple[str, int | None]] = {
        "off": ("{enabled: false}", None),
        "sqlite": (sqlite, 0),
        "sqlite, one core": (sqlite.replace("calls.db", "calls-one-core.db"), None),
    }
    if postgres:
        found["postgresql"] = (f'{{store: "{postgres}", spool: "{workdir}/pg.spool", encryption_key: "{key}"}}', 0)
    return found


def gateway_run(name: str, logging: str, upstream: int, workdir: Path, wrk: str, duration: int,
                worker_cpu: int | None) -> dict[str, object]:
    minigate = minigate_command()
    assert minigate is not None, "run scripts/setup first: .venv/bin/minigate is missing"
    port = free_port()
    slug = name.replace(", ", "-").replace(" ", "-")
    config = workdir / f"{slug}.yaml"
    config.write_text(_CONFIG.format(port=port, key=KEY, upstream=upstream, logging=logging))
    command = ["taskset", "-c", "1", str(minigate), "serve", "--config", str(config), "--log-level", "warning"]
    server = start_server(name, command, port, (JSON_PATH, PII_BODY, KEY), workdir / f"{slug}.log", dict(os.environ), 60)
    try:
        script = workdir / "pii.lua"
        script.write_text(wrk_varying_script(PII_TEMPLATE, KEY))
        url = f"http://127.0.0.1:{port}{JSON_PATH}"
        measure(server, wrk, url, script, "json", 32, 2, 0)  # warm-up; starts the sealing worker
        if worker_cpu is not None:
            for pid in descendants(server.process.pid)[1:]:
                subprocess.run(["taskset", "-a", "-p", "-c", str(worker_cpu), str(pid)], check=True,
                               capture_output=True)
        result = measure(server, wrk, url, script, "json", 32, duration, 1)
    finally:
        stop_server(server)
    log(f"  {name:<10} {result.requests_per_s:8.0f} req/s  {result.cpu_ms_per_request:.3f} CPU ms/req  errors {result.errors}")
    return {"requests_per_s": result.requests_per_s, "cpu_ms_per_request": result.cpu_ms_per_request,
            "p50_ms": result.latency_ms.get("p50"), "p99_ms": result.latency_ms.get("p99"), "errors": result.errors}


def median_round(runs: list[dict[str, object]]) -> dict[str, object]:
    """The round with the median requests/s, with every round's requests/s beside it."""
    ordered = sorted(runs, key=lambda run: float(str(run["requests_per_s"])))
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds_requests_per_s"] = [round(float(str(run["requests_per_s"])), 1) for run in runs]
    return chosen


def writer_run(store: str, spool: Path, key: str, records: int) -> dict[str, object]:
    command = ["taskset", "-c", "1", sys.executable, str(BENCH / "log_writer.py"), "--store", store,
               "--spool", str(spool), "--key", key, "--records", str(records)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    figures: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    log(f"  writer -> {store.split('://')[0]:<10} {figures['records_per_s']:8.0f} records/s")
    return figures


def report(gateway: dict[str, dict[str, object]], writer: dict[str, dict[str, object]]) -> None:
    off = float(str(gateway["off"]["requests_per_s"]))
    print("\ngateway at c=32 (PII request; redaction + encryption on)")
    print(f"{'logging':<18}{'req/s':>10}{'vs off':>9}{'CPU ms/req':>12}{'p99 ms':>9}  target >= 0.90x"
          "  (median round; every round's req/s)")
    for name, row in gateway.items():
        ratio = float(str(row["requests_per_s"])) / off
        verdict = "" if name == "off" or "one core" in name else ("PASS" if ratio >= 0.9 else "FAIL")
        print(f"{name:<18}{float(str(row['requests_per_s'])):>10.0f}{ratio:>8.2f}x"
              f"{float(str(row['cpu_ms_per_request'])):>12.3f}{float(str(row['p99_ms'])):>9.2f}  {verdict:<6}"
              f"{row['rounds_requests_per_s']}")
    print("\nwriter, one core (seal = usage + redact + encrypt, then store)")
    print(f"{'store':<12}{'records':>9}{'records/s':>11}  target >= 2000")
    for name, row in writer.items():
        rate = float(str(row["records_per_s"]))
        print(f"{name:<12}{row['records']:>9}{rate:>11.0f}  {'PASS' if rate >= 2000 else 'FAIL'}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    tools = ensure_tools()
    key = log_key()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        postgres = fresh_database(args.postgres)
        upstream = start_upstream(tools["nginx"], workdir)
        try:
            log("gateway throughput, c=32")
            # Interleaved rounds: a shared VM's speed drifts by tens of percent over minutes, and
            # interleaving spreads that drift over every variant instead of charging it to one.
            rounds: dict[str, list[dict[str, object]]] = {}
            for round_ in range(args.rounds):
                log(f"round {round_ + 1} of {args.rounds}")
                for name, (logging, cpu) in variants(workdir, key, postgres).items():
                    rounds.setdefault(name, []).append(
                        gateway_run(name, logging, upstream.port, workdir, tools["wrk"], args.duration, cpu))
            gateway = {name: median_round(runs) for name, runs in rounds.items()}
        finally:
            stop_server(upstream)
        log("writer throughput")
        stores = {"sqlite": f"sqlite:///{workdir}/writer.db"}
        writer_db = fresh_database(args.postgres)
        if writer_db:
            stores["postgresql"] = writer_db
        writer = {name: writer_run(url, workdir / f"{name}-writer.spool", key, args.records)
                  for name, url in stores.items()}
        for url in (postgres, writer_db):
            if url:
                asyncio.run(_admin(args.postgres, f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    report(gateway, writer)
    results = {"benchmark": "logging", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
               "duration_s": args.duration, "rounds": args.rounds, "gateway_c32": gateway, "writer": writer}
    out = BENCH / "results" / "logging.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
