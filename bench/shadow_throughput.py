"""The first half of bench/shadow: what shadowing costs the request path, shadow off against on.

The set-up is bench/overhead's: a fixed-response nginx (CPU 0) is the upstream, wrk (CPU 0) loads
`minigate serve` (alone on CPU 1) at one concurrency. The only difference between the variants is the
rule that serves the bench's requests: `off` routes them to `frontier`; `on` adds the configured
`shadow: {model: mini, sample, max_concurrency}`, where `mini` is the same nginx under another model
name; `all` shadows every call (sample 1.0, max_concurrency 64). Each round starts every variant
afresh, the order rotating from round to round, so drift of a noisy machine touches all alike.

Why `all`: on a shared 2-core machine one run's throughput moves by 10% or more, so off against on
cannot resolve a 2% cost by itself. Shadowing every call makes the cost large enough to measure
through that noise: the extra CPU time per client request divided by the share of calls shadowed is
what one shadow costs, and that times the configured sample is the cost to expect from `on`. The
direct off/on figure is reported beside it, with its spread.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from overhead_fixtures import JSON_PATH, request_body, wrk_varying_script
from overhead_load import measure, run_wrk
from overhead_proc import Server, start_server, stop_server
from overhead_targets import PROXY_CPU, upstream_launch
from shadow_fixtures import AGENT_KEY, TASK, gateway_config, metric_totals, write_catalogue, write_config

__all__ = ["EVERY_CALL", "ThroughputRun", "ThroughputSettings", "VARIANTS", "run_throughput", "runs_document",
           "summarise_throughput"]

Variant = Literal["off", "on", "all"]
VARIANTS: tuple[Variant, ...] = ("off", "on", "all")
EVERY_CALL = {"model": "mini", "sample": 1.0, "max_concurrency": 64}  # `all`: enough slots that none is dropped
_COUNTERS = ("minigate_shadow_comparisons_total", "minigate_shadow_dropped_total",
             "minigate_log_records_dropped_total")


@dataclass(frozen=True)
class ThroughputSettings:
    nginx: str
    wrk: str
    minigate: Path
    workdir: Path
    rounds: int
    duration_s: int
    warmup_s: int
    concurrency: int
    shadow: Mapping[str, Any]  # the ShadowSpec of the `on` variant


@dataclass
class ThroughputRun:
    """One start of one variant, loaded once."""

    variant: Variant
    round: int
    startup_s: float
    requests: int
    errors: int
    requests_per_s: float
    cpu_ms_per_request: float
    latency_ms: dict[str, float]
    shadowed: int  # shadow verdicts reached while wrk ran
    shadow_dropped: int  # shadow jobs dropped because the queue was full, while wrk ran
    log_records_dropped: int  # must stay 0


def _body() -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(request_body("json"))
    return body


def _template() -> str:
    """The bench's request with a number in the user's words that changes on every request."""
    return request_body("json").replace("INV-2291", "INV-{n}")


def _environment() -> dict[str, str]:
    return dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")


def _start_gateway(settings: ThroughputSettings, upstream: Server, variant: Variant, round_: int,
                   port: int) -> Server:
    workdir = settings.workdir / f"{variant}-{round_}"
    workdir.mkdir()
    rule: dict[str, Any] = {"name": "serve", "when": {"task": TASK}, "use": "frontier"}
    if variant != "off":
        rule["shadow"] = dict(settings.shadow if variant == "on" else EVERY_CALL)
    config = gateway_config(port=port, upstream_url=f"http://127.0.0.1:{upstream.port}/v1", frontier_model="gpt-4.1",
                            mini_model="mini", catalogue=settings.workdir / "tasks.yaml",
                            store=f"sqlite:///{workdir}/calls.db", rule=rule)
    path = write_config(workdir / "minigate.yaml", config)
    command = ["taskset", "-c", PROXY_CPU, str(settings.minigate), "serve", "--config", str(path),
               "--host", "127.0.0.1", "--port", str(port)]
    return start_server(f"shadow-{variant}", command, port, (JSON_PATH, request_body("json"), AGENT_KEY),
                        workdir / "server.log", _environment(), 60.0)


def _load(settings: ThroughputSettings, server: Server, script: Path, variant: Variant, round_: int) -> ThroughputRun:
    url = f"http://127.0.0.1:{server.port}{JSON_PATH}"
    base_url = f"http://127.0.0.1:{server.port}"
    if settings.warmup_s > 0:
        run_wrk(settings.wrk, url, script, settings.concurrency, settings.warmup_s)
    before = metric_totals(base_url, _COUNTERS)
    found = measure(server, settings.wrk, url, script, "json", settings.concurrency, settings.duration_s, round_)
    after = metric_totals(base_url, _COUNTERS)
    delta = {name: int(after[name] - before[name]) for name in _COUNTERS}
    return ThroughputRun(variant, round_, round(server.startup_s, 2), found.requests, found.errors,
                         round(found.requests_per_s, 1), round(found.cpu_ms_per_request, 4), found.latency_ms,
                         delta["minigate_shadow_comparisons_total"], delta["minigate_shadow_dropped_total"],
                         delta["minigate_log_records_dropped_total"])


def _order(round_: int) -> tuple[Variant, ...]:
    """off, on, all; then on, all, off; ...: each variant takes each place in turn."""
    shift = (round_ - 1) % len(VARIANTS)
    return VARIANTS[shift:] + VARIANTS[:shift]


def run_throughput(settings: ThroughputSettings, free_port: Callable[[], int],
                   log: Callable[[str], None]) -> list[ThroughputRun]:
    """Every round, both variants, each started afresh and loaded once; `log` reports progress."""
    write_catalogue(settings.workdir / "tasks.yaml", _body())
    script = settings.workdir / "load.lua"
    script.write_text(wrk_varying_script(_template(), AGENT_KEY))
    upstream_port = free_port()
    launch = upstream_launch(settings.nginx, settings.workdir, upstream_port)
    upstream = start_server("nginx", launch.command, upstream_port, (JSON_PATH, request_body("json"), "unused"),
                            settings.workdir / "nginx.log", launch.env, 10.0)
    runs = []
    try:
        for round_ in range(1, settings.rounds + 1):
            for variant in _order(round_):
                server = _start_gateway(settings, upstream, variant, round_, free_port())
                try:
                    run = _load(settings, server, script, variant, round_)
                finally:
                    stop_server(server)
                log(f"  round {round_} shadow {variant:3}: {run.requests_per_s:8.1f} req/s  "
                    f"{run.cpu_ms_per_request:.3f} CPU ms/req  p50 {run.latency_ms['p50']:6.2f} ms  "
                    f"shadowed {run.shadowed} (dropped {run.shadow_dropped})  errors {run.errors}")
                runs.append(run)
    finally:
        stop_server(upstream)
    return runs


def _change(new: float, old: float) -> float:
    return round(100 * (new - old) / old, 2) if old else float("nan")


def _medians(rows: list[ThroughputRun]) -> dict[str, float]:
    requests = sum(run.requests for run in rows)
    return {"requests_per_s": statistics.median(run.requests_per_s for run in rows),
            "cpu_ms_per_request": statistics.median(run.cpu_ms_per_request for run in rows),
            "p50_ms": statistics.median(run.latency_ms["p50"] for run in rows),
            "p99_ms": statistics.median(run.latency_ms["p99"] for run in rows),
            "shadowed_share": round(sum(run.shadowed for run in rows) / requests, 4) if requests else 0.0,
            "shadow_dropped": sum(run.shadow_dropped for run in rows)}


def _paired(by: Mapping[Variant, list[ThroughputRun]], variant: Variant, field: str) -> list[float]:
    """Each round's change of `field` from `off` to `variant`: the spread the medians hide."""
    return [_change(getattr(new, field), getattr(old, field))
            for old in by["off"] for new in by[variant] if old.round == new.round]


def _per_shadow(medians: Mapping[Variant, dict[str, float]], sample: float,
                target_pct: float) -> dict[str, float | None] | None:
    """What one shadow costs, from `all` against `off`, and what that makes of `on`'s sample."""
    off, every = medians.get("off"), medians.get("all")
    if off is None or every is None or not every["shadowed_share"]:
        return None
    cost_ms = (every["cpu_ms_per_request"] - off["cpu_ms_per_request"]) / every["shadowed_share"]
    relative = cost_ms / off["cpu_ms_per_request"]
    # A CPU-bound server's throughput is 1 / CPU per request: a CPU share c more per request is 1 - 1/(1+c) less.
    return {"cpu_ms_per_shadow": round(cost_ms, 4), "per_shadow_vs_request": round(relative, 3),
            "projected_cpu_change_pct": round(100 * sample * relative, 2),
            "projected_throughput_change_pct": round(-100 * (1 - 1 / (1 + sample * relative)), 2),
            "sample_for_target": round(target_pct / 100 / (1 - target_pct / 100) / relative, 4) if relative > 0
            else None}


def summarise_throughput(runs: list[ThroughputRun], sample: float, target_pct: float) -> dict[str, Any]:
    """Medians per variant, their changes from `off`, each round's paired changes, the cost per shadow."""
    by = {variant: [run for run in runs if run.variant == variant] for variant in VARIANTS}
    medians = {variant: _medians(rows) for variant, rows in by.items() if rows}
    off = medians.get("off")
    changes = {variant: {"throughput_pct": _change(row["requests_per_s"], off["requests_per_s"]),
                         "cpu_per_request_pct": _change(row["cpu_ms_per_request"], off["cpu_ms_per_request"]),
                         "paired_throughput_pct": _paired(by, variant, "requests_per_s"),
                         "paired_cpu_per_request_pct": _paired(by, variant, "cpu_ms_per_request")}
               for variant, row in medians.items() if variant != "off" and off is not None}
    return {"medians": medians, "changes_from_off": changes, "per_shadow": _per_shadow(medians, sample, target_pct),
            "log_records_dropped": sum(run.log_records_dropped for run in runs),
            "errors": sum(run.errors for run in runs)}


def runs_document(runs: list[ThroughputRun]) -> list[dict[str, Any]]:
    return [asdict(run) for run in runs]
