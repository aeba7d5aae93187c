"""bench/soak: does a gateway under minutes of mixed, misbehaving traffic stay flat and record every call once?

A leak (memory, file descriptors, a call-log queue that only grows) or a lost record shows only after
thousands of calls of every shape, so this drives a real `minigate serve` process (call log on, sealed
in its worker process) through the scripted upstream (tests/support/upstream.py, a thread of this
process) at ~R req/s for N minutes from one asyncio httpx client, at most CAP requests in flight. The mix:
plain calls and streams, upstream 500s and 503s, slow calls (3 s before the upstream's headers), slow
streams, an upstream that cuts its stream, clients that leave before the reply or mid-stream, and
invalid bodies (400).

Every 10 s it prints a row: RSS of the gateway's process tree, the gateway's open fds, and the call
log's queue depth and written/spooled/dropped counters from /metrics. At the end it stops the gateway
with SIGTERM and reads the store: every request id a client saw in an `x-minigate-request-id` header
must be stored exactly once. 400s refused before routing are not recorded (no routing decision was
made), so they are counted apart; so are clients that left before any header (the gateway records
those as 499 under an id the client never saw).

    .venv/bin/python bench/soak.py --minutes 10 [--rate 50] [--store sqlite|postgresql] [--out bench/soak]

Writes <out>/results-<store>-<minutes>min.txt (what it printed), .json (the series and counts), .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from overhead_proc import rss_bytes  # noqa: E402
from tests.stores import fetch  # noqa: E402
from tests.support.servers import GatewayProcess, start_gateway_process, write_config  # noqa: E402
from tests.support.upstream import Script, ScriptedUpstream  # noqa: E402

from minigate.logger.crypto import generate_key  # noqa: E402

AGENT, ADMIN = "sk-soak-agent", "sk-soak-admin"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
SAMPLE_S = 10
SETTLE_S = 2.0  # after the load, before the last sample: a few writer flush intervals
CAP = 128  # requests in flight at most: the scheduler waits for a free slot beyond it
SEED = 13
# How the upstream answers each route: the gateway maps route NAME to the upstream model NAME.
BEHAVIOURS = {
    "plain": Script(latency_s=0.02),
    "slow": Script(latency_s=3.0),
    "drip": Script(reply=" ".join(f"word{i}" for i in range(20)), chunk_delay_s=0.1),
    "fail500": Script(status=500),
    "fail503": Script(status=503),
    "cut": Script(reply="one two three four five six", cut_after_chunks=3),
}


@dataclass(frozen=True)
class Kind:
    """One shape of request in the mix, drawn with probability weight / sum of weights."""

    name: str
    weight: int
    route: str
    stream: bool = False
    leave_after_s: float | None = None  # non-stream: the client cancels the call after this long
    leave_after_chunks: int | None = None  # stream: the client closes after this many body chunks
    invalid: bool = False  # a truncated JSON body: 400 before routing


MIX = [
    Kind("plain", 38, "plain"),
    Kind("stream", 25, "plain", stream=True),
    Kind("upstream 500", 5, "fail500"),
    Kind("upstream 503", 5, "fail503"),
    Kind("slow (3 s)", 5, "slow"),
    Kind("slow stream", 4, "drip", stream=True),
    Kind("leaves before reply", 5, "slow", leave_after_s=0.5),
    Kind("leaves mid-stream", 5, "drip", stream=True, leave_after_chunks=2),
    Kind("upstream cuts stream", 3, "cut", stream=True),
    Kind("invalid body", 5, "plain", invalid=True),
]


@dataclass(frozen=True)
class Outcome:
    kind: str
    request_id: str | None  # the x-minigate-request-id header, when response headers arrived
    status: int | None  # None: no headers (the client left first, or a transport error)
    error: str | None = None  # the transport error's type


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class Sample:
    t_s: float
    sent: int
    in_flight: int
    rss_mib: float
    fds: int
    queue: float
    written: float
    spooled: float
    dropped: float


class Transcript:
    """Prints, and keeps what it printed for the .txt results file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


# -- the gateway and its store --


def gateway_config(upstream_url: str, store: str, workdir: Path) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"keys": [{"name": "agents", "key": AGENT, "role": "agent"},
                          {"name": "platform", "key": ADMIN, "role": "admin"}]},
        "upstreams": {"scripted": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-upstream"}},
        "models": {name: {"upstream": "scripted", "model": name, "tier": "frontier"} for name in BEHAVIOURS},
        "routes": {name: {"default": name} for name in BEHAVIOURS},
        "logging": {"store": store, "spool": str(workdir / "spool"), "encryption_key": generate_key()},
    }


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def create_store(kind: str, workdir: Path, postgres: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'calls.db'}"
    name = f"minigate_soak_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(postgres, f'CREATE DATABASE "{name}"'))
    return postgres.rsplit("/", 1)[0] + "/" + name


def stored_rows(store: str) -> list[tuple[Any, ...]]:
    """(request_id, status) of every row; none when the gateway never created the table (store down throughout)."""
    try:
        return fetch(store, "SELECT request_id, status FROM calls")
    except (sqlite3.OperationalError, asyncpg.UndefinedTableError):
        return []


def drop_store(store: str, postgres: str) -> None:
    if store.startswith("postgresql://"):
        asyncio.run(_admin(postgres, f'DROP DATABASE IF EXISTS "{store.rsplit("/", 1)[1]}" WITH (FORCE)'))


# -- the load --


def body(kind: Kind, n: int) -> bytes:
    if kind.invalid:
        return b'{"model": "plain", "messages": [{"role": "user", "content": "cut off'
    text = f"Soak call {n}: where is order {n}? Write to jane.doe{n}@example.com or call +1 415 555 {n % 10000:04d}."
    payload: dict[str, Any] = {"model": kind.route, "messages": [{"role": "user", "content": text}]}
    if kind.stream:
        payload |= {"stream": True, "stream_options": {"include_usage": n % 2 == 0}}
    return json.dumps(payload).encode()


async def send(client: httpx.AsyncClient, kind: Kind, n: int) -> Outcome:
    """One request as its kind says; a transport error is an outcome, not a failure of the benchmark."""
    try:
        if kind.stream:
            return await _stream(client, kind, body(kind, n))
        call = client.post("/v1/chat/completions", content=body(kind, n))
        response = await (asyncio.wait_for(call, kind.leave_after_s) if kind.leave_after_s else call)
        return Outcome(kind.name, response.headers.get("x-minigate-request-id"), response.status_code)
    except TimeoutError:
        return Outcome(kind.name, None, None)
    except httpx.HTTPError as exc:
        return Outcome(kind.name, None, None, type(exc).__name__)


async def _stream(client: httpx.AsyncClient, kind: Kind, content: bytes) -> Outcome:
    request_id, status = None, None
    try:
        async with client.stream("POST", "/v1/chat/completions", content=content) as response:
            request_id, status = response.headers.get("x-minigate-request-id"), response.status_code
            chunks = 0
            async for _ in response.aiter_raw():
                chunks += 1
                if kind.leave_after_chunks is not None and chunks >= kind.leave_after_chunks:
                    break  # leaving the block closes the connection mid-body
    except httpx.HTTPError as exc:
        return Outcome(kind.name, request_id, status, type(exc).__name__)
    return Outcome(kind.name, request_id, status)


async def drive(client: httpx.AsyncClient, load: Load, seconds: float, rate: float, gateway: GatewayProcess) -> None:
    """Start a request every 1/rate s (catching up at most 1 s after a stall) until the deadline."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(CAP)
    draw = random.Random(SEED)
    deadline = next_at = loop.time()
    deadline += seconds

    async def one(kind: Kind, n: int) -> None:
        load.in_flight += 1
        try:
            load.outcomes.append(await send(client, kind, n))
        finally:
            load.in_flight -= 1
            slots.release()

    async with asyncio.TaskGroup() as group:
        while loop.time() < deadline and gateway.process.poll() is None:
            await slots.acquire()
            group.create_task(one(draw.choices(MIX, [k.weight for k in MIX])[0], load.sent))
            load.sent += 1
            next_at = max(next_at + 1 / rate, loop.time() - 1.0)
            await asyncio.sleep(max(0.0, next_at - loop.time()))


# -- the series --


def open_fds(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:  # the gateway has exited
        return 0


async def log_counters(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("minigate_log_")}


async def sample(client: httpx.AsyncClient, load: Load, gateway: GatewayProcess, t0: float) -> Sample:
    try:
        metrics = await log_counters(client)
    except httpx.HTTPError:
        metrics = {}
    pid = gateway.process.pid
    return Sample(round(time.monotonic() - t0, 1), load.sent, load.in_flight, rss_bytes(pid) / 2**20, open_fds(pid),
                  metrics.get("minigate_log_queue_depth", float("nan")),
                  metrics.get("minigate_log_records_written_total", float("nan")),
                  metrics.get("minigate_log_records_spooled_total", float("nan")),
                  metrics.get("minigate_log_records_dropped_total", float("nan")))


SERIES_HEADER = (f"{'t s':>6} {'sent':>7} {'flight':>6} {'RSS MiB':>8} {'fds':>5} {'queue':>6} {'written':>8} "
                 f"{'spooled':>8} {'dropped':>8}")


def row(s: Sample) -> str:
    return (f"{s.t_s:>6.0f} {s.sent:>7} {s.in_flight:>6} {s.rss_mib:>8.1f} {s.fds:>5} {s.queue:>6.0f} "
            f"{s.written:>8.0f} {s.spooled:>8.0f} {s.dropped:>8.0f}")


async def watch(client: httpx.AsyncClient, load: Load, gateway: GatewayProcess, series: list[Sample],
                out: Transcript, t0: float) -> None:
    """A row every SAMPLE_S seconds until cancelled."""
    while True:
        series.append(await sample(client, load, gateway, t0))
        out.say(row(series[-1]))
        await asyncio.sleep(SAMPLE_S - (time.monotonic() - t0) % SAMPLE_S)


async def soak(gateway: GatewayProcess, seconds: float, rate: float, out: Transcript) -> tuple[Load, list[Sample]]:
    """The load and the series beside it; a last sample once every request has finished."""
    load, series = Load(), list[Sample]()
    limits = httpx.Limits(max_connections=CAP, max_keepalive_connections=CAP)
    headers = {"authorization": f"Bearer {AGENT}", "content-type": "application/json"}
    async with (httpx.AsyncClient(base_url=gateway.base_url, headers=headers, limits=limits, timeout=60) as client,
                httpx.AsyncClient(base_url=gateway.base_url, headers={"authorization": f"Bearer {ADMIN}"},
                                  timeout=10) as metrics):
        out.say(SERIES_HEADER)
        t0 = time.monotonic()
        watcher = asyncio.create_task(watch(metrics, load, gateway, series, out, t0))
        await drive(client, load, seconds, rate, gateway)
        await asyncio.sleep(SETTLE_S)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        series.append(await sample(metrics, load, gateway, t0))
        out.say(row(series[-1]) + "   <- load finished, before SIGTERM")
    return load, series


# -- exactly once --


@dataclass(frozen=True)
class Count:
    """The ids clients saw against the store's rows."""

    answered: int  # ids seen in a response header, but the 400s refused before routing
    stored_once: int
    missing: int
    duplicated: int
    refused: int  # invalid bodies answered 400 before routing: not recorded, by design
    refused_stored: int  # of those, rows found anyway
    left_before_headers: int  # clients gone before any header: no id to look for
    rows: int
    rows_unseen: int  # rows under an id no client saw (the 499s of clients that left first)
    rows_499: int
    missing_ids: list[str]


REFUSED_KINDS = {kind.name for kind in MIX if kind.invalid}


def exactly_once(outcomes: list[Outcome], rows: list[tuple[Any, ...]]) -> Count:
    stored = Counter(str(request_id) for request_id, _ in rows)
    refused = {o.request_id for o in outcomes if o.request_id and o.kind in REFUSED_KINDS and o.status == 400}
    answered = {o.request_id for o in outcomes if o.request_id} - refused
    seen = answered | refused
    missing = sorted(i for i in answered if stored[i] == 0)
    return Count(
        answered=len(answered), stored_once=sum(stored[i] == 1 for i in answered), missing=len(missing),
        duplicated=sum(stored[i] > 1 for i in answered),
        refused=len(refused), refused_stored=sum(stored[i] > 0 for i in refused),
        left_before_headers=sum(o.status is None and o.error is None for o in outcomes),
        rows=len(rows), rows_unseen=sum(n for i, n in stored.items() if i not in seen),
        rows_499=sum(status == 499 for _, status in rows), missing_ids=missing[:10],
    )


def stop(gateway: GatewayProcess) -> tuple[int | None, float]:
    """SIGTERM, then wait for the drain; the exit code (None: killed after 120 s) and the seconds it took."""
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    try:
        code: int | None = gateway.wait(timeout=120)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - started


# -- the report --


def by_kind(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {k.name: dict.fromkeys(["sent", "2xx", "4xx", "5xx", "no headers", "errors"], 0)
                                        for k in MIX}
    for o in outcomes:
        counts = table[o.kind]
        counts["sent"] += 1
        counts["no headers" if o.status is None else f"{o.status // 100}xx"] += 1
        counts["errors"] += o.error is not None
    return table


def summary(kinds: dict[str, dict[str, int]], count: Count, series: list[Sample], stopped: tuple[int | None, float],
            error_lines: list[str], out: Transcript) -> None:
    out.say(f"\n{'kind':<22}" + "".join(f"{c:>11}" for c in next(iter(kinds.values()))))
    for name, counts in kinds.items():
        out.say(f"{name:<22}" + "".join(f"{v:>11}" for v in counts.values()))
    rss, fds = [s.rss_mib for s in series], [s.fds for s in series]
    lines = [
        ("answered (an id seen; 400s refused before routing apart)", count.answered),
        ("  stored exactly once", count.stored_once),
        ("  missing", count.missing),
        ("  duplicated", count.duplicated),
        ("400s refused before routing (not recorded by design)", count.refused),
        ("  stored anyway", count.refused_stored),
        ("clients that left before any header (no id)", count.left_before_headers),
        ("store rows / under ids no client saw / status 499", f"{count.rows} / {count.rows_unseen} / {count.rows_499}"),
        ("log_records_dropped_total at the end", f"{series[-1].dropped:.0f}"),
        ("RSS MiB start / max / end", f"{rss[0]:.1f} / {max(rss):.1f} / {rss[-1]:.1f}"),
        ("open fds start / max / end", f"{fds[0]} / {max(fds)} / {fds[-1]}"),
        ("log queue depth max", f"{max(s.queue for s in series):.0f}"),
        ("SIGTERM: exit code / seconds", f"{stopped[0]} / {stopped[1]:.1f}"),
        ("ERROR or Traceback lines in the gateway's log", len(error_lines)),
    ]
    out.say()
    for label, value in lines:
        out.say(f"{label:<60}{value:>20}")
    if count.missing_ids:
        out.say(f"first missing ids: {', '.join(count.missing_ids)}")
    for line in error_lines[:10]:
        out.say("gateway: " + line.rstrip())


def plot(series: list[Sample], title: str, path: Path) -> bool:
    """RSS, fds and queue depth over time; False when matplotlib is not installed (the `report` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    minutes = [s.t_s / 60 for s in series]
    figure, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    panels: list[tuple[str, list[float]]] = [("RSS MiB (process tree)", [s.rss_mib for s in series]),
                                             ("open fds (gateway)", [float(s.fds) for s in series]),
                                             ("log queue depth", [s.queue for s in series])]
    for axis, (label, values) in zip(axes, panels):
        axis.plot(minutes, values, marker=".")
        axis.set_ylabel(label)
        axis.set_ylim(0, max([1.0, *(v for v in values if v == v)]) * 1.1)  # NaN: /metrics did not answer
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    axes[0].set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _finite(value: Any) -> Any:
    """JSON has no NaN: a counter /metrics did not answer becomes null."""
    return None if isinstance(value, float) and value != value else value


def write_results(args: argparse.Namespace, run: dict[str, Any], series: list[Sample], out: Transcript) -> None:
    stem = f"results-{args.store}-{args.minutes:g}min"  # not Path.with_suffix: "0.5min" has a dot
    args.out.mkdir(parents=True, exist_ok=True)
    run["series"] = [{k: _finite(v) for k, v in asdict(s).items()} for s in series]
    (args.out / f"{stem}.json").write_text(json.dumps(run, indent=2) + "\n")
    title = f"minigate soak: {args.store}, {args.rate:g} req/s, {args.minutes:g} min"
    if plot(series, title, args.out / f"{stem}.png"):
        out.say(f"\nwrote {args.out / stem}.txt, .json, .png")
    else:
        out.say(f"\nwrote {args.out / stem}.txt, .json (no .png: matplotlib is missing; it is in the `report` extra)")
    (args.out / f"{stem}.txt").write_text("\n".join(out.lines) + "\n")


# -- the run --


def run(upstream: ScriptedUpstream, store: str, workdir: Path, args: argparse.Namespace,
        out: Transcript) -> tuple[dict[str, Any], list[Sample]]:
    config = write_config(workdir / "minigate.yaml", gateway_config(upstream.base_url, store, workdir))
    with start_gateway_process("--config", str(config), cwd=workdir) as gateway:
        out.say(f"soak: {args.minutes:g} min at ~{args.rate:g} req/s (at most {CAP} in flight), store {args.store}, "
                f"gateway pid {gateway.process.pid}, a row every {SAMPLE_S} s\n")
        load, series = asyncio.run(soak(gateway, args.minutes * 60, args.rate, out))
        stopped = stop(gateway)
        error_lines = [line for line in gateway.log if " ERROR " in line or line.startswith("Traceback")]
    count = exactly_once(load.outcomes, stored_rows(store))
    kinds = by_kind(load.outcomes)
    summary(kinds, count, series, stopped, error_lines, out)
    results = {"store": args.store, "minutes": args.minutes, "rate": args.rate, "cap": CAP,
               "mix": [asdict(k) for k in MIX], "kinds": kinds, "exactly_once": asdict(count),
               "sigterm": {"exit_code": stopped[0], "seconds": round(stopped[1], 1)},
               "gateway_error_lines": error_lines[:50]}
    return results, series


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10, help="minutes of load (default 10)")
    parser.add_argument("--rate", type=float, default=50, help="requests started per second (default 50)")
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite",
                        help="the call log's store (default sqlite, a file in a temporary folder)")
    parser.add_argument("--postgres", default=POSTGRES, help=f"server for --store postgresql (default {POSTGRES}); "
                        "the soak creates a database there and drops it after")
    parser.add_argument("--out", type=Path, default=HERE / "soak", help="results folder (default bench/soak)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    out = Transcript()
    with tempfile.TemporaryDirectory(prefix="minigate-soak-") as tmp, ScriptedUpstream(list(BEHAVIOURS)) as upstream:
        for name, script in BEHAVIOURS.items():
            upstream.script(script, model=name)
        store = create_store(args.store, Path(tmp), args.postgres)
        try:
            results, series = run(upstream, store, Path(tmp), args, out)
        finally:
            drop_store(store, args.postgres)
    write_results(args, results, series, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
