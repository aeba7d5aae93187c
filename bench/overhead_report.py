"""Figures, ratios and pass/fail targets of the overhead benchmark, as tables and JSON-ready data.

Rounds are reduced per figure: the lowest latency, CPU/request and start-up and the highest
req/s (interference on a shared machine only ever adds to them), but the highest RSS. The ratios
and pass/fail targets read the chat rows; minigate's Responses and Messages rows are set beside
its chat rows in a table of their own, and so are its rows with each count of workers (`--workers`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from overhead_fixtures import APIS, MODES
from overhead_load import Measurement, TargetRun

__all__ = ["AGGREGATION", "SummaryRow", "TargetSummary", "Ratio", "Check", "ApiRow", "WorkerRow", "summarise_rows",
           "summarise_targets", "ratios", "checks", "api_rows", "worker_rows", "print_report"]

AGGREGATION = ("best of the rounds per figure: lowest latency percentiles, CPU/request and start-up, "
               "highest req/s; highest RSS. Every round is kept under 'runs'.")
MIB = 1024 * 1024
_WORKERS_TARGET = re.compile(r"^minigate-(\d+)w$")


@dataclass
class SummaryRow:
    target: str
    api: str
    mode: str
    concurrency: int
    rounds: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests_per_s: float
    cpu_ms_per_request: float
    rss_after_mib: float
    errors: int
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None


@dataclass
class TargetSummary:
    target: str
    runs: int
    startup_s: float
    idle_rss_mib: float
    rss_after_load_mib: float


@dataclass
class Ratio:
    figure: str
    minigate_over_minimal: float | None
    minigate_over_litellm: float | None


@dataclass
class Check:
    name: str
    value: float | None
    limit: str
    passed: bool | None


@dataclass
class ApiRow:
    """One of minigate's APIs beside its chat row at the same mode and concurrency."""

    api: str
    mode: str
    concurrency: int
    added_p50_ms: float | None
    added_p99_ms: float | None
    cpu_ms_per_request: float
    cpu_over_chat: float | None
    added_p50_over_chat_ms: float | None


def _best(group: list[Measurement]) -> SummaryRow:
    first = group[0]
    return SummaryRow(
        target=first.target, api=first.api, mode=first.mode, concurrency=first.concurrency, rounds=len(group),
        p50_ms=min(m.latency_ms["p50"] for m in group), p90_ms=min(m.latency_ms["p90"] for m in group),
        p99_ms=min(m.latency_ms["p99"] for m in group),
        requests_per_s=max(m.requests_per_s for m in group),
        cpu_ms_per_request=min(m.cpu_ms_per_request for m in group),
        rss_after_mib=max(m.rss_after_bytes for m in group) / MIB, errors=sum(m.errors for m in group),
    )


def summarise_rows(runs: list[TargetRun]) -> list[SummaryRow]:
    """One row per target, API, mode and concurrency, with the latency added over `direct` (chat).

    Per target, rows go by concurrency, then mode, then API, so each API sits beside chat.
    """
    groups: dict[tuple[str, str, str, int], list[Measurement]] = {}
    for measurement in (m for run in runs for m in run.measurements):
        key = (measurement.target, measurement.api, measurement.mode, measurement.concurrency)
        groups.setdefault(key, []).append(measurement)
    names = list(dict.fromkeys(key[0] for key in groups))
    rows = sorted((_best(group) for group in groups.values()),
                  key=lambda r: (names.index(r.target), r.concurrency, MODES.index(r.mode), APIS.index(r.api)))
    direct = {(row.mode, row.concurrency): row for row in rows if row.target == "direct" and row.api == "chat"}
    for row in rows:
        base = direct.get((row.mode, row.concurrency))
        if base is not None:
            row.added_p50_ms = row.p50_ms - base.p50_ms
            row.added_p99_ms = row.p99_ms - base.p99_ms
    return rows


def summarise_targets(runs: list[TargetRun]) -> list[TargetSummary]:
    names = list(dict.fromkeys(run.target for run in runs))
    summaries = []
    for name in names:
        mine = [run for run in runs if run.target == name]
        summaries.append(TargetSummary(
            target=name, runs=len(mine), startup_s=min(run.startup_s for run in mine),
            idle_rss_mib=max(run.idle_rss_bytes for run in mine) / MIB,
            rss_after_load_mib=max(run.rss_after_load_bytes for run in mine) / MIB,
        ))
    return summaries


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or abs(denominator) < 1e-9:
        return None
    return numerator / denominator


def _row(rows: list[SummaryRow], target: str, mode: str, concurrency: int, api: str = "chat") -> SummaryRow | None:
    wanted = (target, api, mode, concurrency)
    return next((r for r in rows if (r.target, r.api, r.mode, r.concurrency) == wanted), None)


def _target(targets: list[TargetSummary], name: str) -> TargetSummary | None:
    return next((t for t in targets if t.target == name), None)


def _row_ratios(rows: list[SummaryRow], label: str, figure: Callable[[SummaryRow], float | None]) -> list[Ratio]:
    ratios = []
    for row in (r for r in rows if r.target == "minigate" and r.api == "chat"):
        others = [_row(rows, name, row.mode, row.concurrency) for name in ("minimal", "litellm")]
        values = [figure(other) if other is not None else None for other in others]
        ratios.append(Ratio(f"{label} {row.mode} c={row.concurrency}",
                            _ratio(figure(row), values[0]), _ratio(figure(row), values[1])))
    return ratios


def _target_ratio(targets: list[TargetSummary], label: str, figure: Callable[[TargetSummary], float]) -> Ratio:
    mine, minimal, litellm = (_target(targets, name) for name in ("minigate", "minimal", "litellm"))
    value = figure(mine) if mine else None
    return Ratio(label, _ratio(value, figure(minimal) if minimal else None),
                 _ratio(value, figure(litellm) if litellm else None))


def ratios(rows: list[SummaryRow], targets: list[TargetSummary]) -> list[Ratio]:
    """minigate / minimal and minigate / LiteLLM for CPU/request, added p50 and RSS."""
    found = _row_ratios(rows, "CPU/request", lambda r: r.cpu_ms_per_request)
    found += _row_ratios(rows, "added p50", lambda r: r.added_p50_ms)
    if _target(targets, "minigate") is not None:
        found.append(_target_ratio(targets, "idle RSS", lambda t: t.idle_rss_mib))
        found.append(_target_ratio(targets, "RSS after load", lambda t: t.rss_after_load_mib))
    return found


def _check(name: str, value: float | None, limit: float, label: str) -> Check:
    passed = None if value is None else value <= limit
    return Check(name, value, label, passed)


def _cpu_checks(rows: list[SummaryRow], concurrency: int) -> list[Check]:
    mine, minimal, litellm = (_row(rows, name, "json", concurrency) for name in ("minigate", "minimal", "litellm"))
    cpu = mine.cpu_ms_per_request if mine else None
    return [
        _check(f"CPU/request vs minimal, c={concurrency}",
               _ratio(cpu, minimal.cpu_ms_per_request if minimal else None), 1.5, "<= 1.5x"),
        _check(f"CPU/request vs LiteLLM, c={concurrency}",
               _ratio(cpu, litellm.cpu_ms_per_request if litellm else None), 0.1, "<= 1/10x"),
    ]


def checks(rows: list[SummaryRow], targets: list[TargetSummary]) -> list[Check]:
    """The issue's targets for minigate, on the non-streamed measurement; None = not measured."""
    found = [check for c in sorted({r.concurrency for r in rows if r.mode == "json"}) for check in _cpu_checks(rows, c)]
    at_one = _row(rows, "minigate", "json", 1)
    added = at_one.added_p50_ms if at_one else None
    found.append(Check("added p50 at c=1", added, "< 1 ms", None if added is None else added < 1.0))
    rss = _target_ratio(targets, "RSS after load", lambda t: t.rss_after_load_mib).minigate_over_litellm
    found.append(_check("RSS after load vs LiteLLM", rss, 1 / 3, "<= 1/3x"))
    mine = _target(targets, "minigate")
    startup = mine.startup_s if mine else None
    found.append(Check("start-up", startup, "< 3 s", None if startup is None else startup < 3.0))
    return found


def api_rows(rows: list[SummaryRow]) -> list[ApiRow]:
    """minigate's rows of every API, each but chat with its CPU/request and p50 against the chat row."""
    found = []
    for row in (r for r in rows if r.target == "minigate"):
        chat = None if row.api == "chat" else _row(rows, "minigate", row.mode, row.concurrency)
        found.append(ApiRow(
            api=row.api, mode=row.mode, concurrency=row.concurrency, added_p50_ms=row.added_p50_ms,
            added_p99_ms=row.added_p99_ms, cpu_ms_per_request=row.cpu_ms_per_request,
            cpu_over_chat=_ratio(row.cpu_ms_per_request, chat.cpu_ms_per_request if chat else None),
            added_p50_over_chat_ms=row.p50_ms - chat.p50_ms if chat else None,
        ))
    return found


@dataclass
class WorkerRow:
    """minigate with each count of workers at one API, mode and concurrency (figures keyed by workers)."""

    api: str
    mode: str
    concurrency: int
    requests_per_s: dict[int, float]
    p50_ms: dict[int, float]
    cpu_ms_per_request: dict[int, float]
    gain: float | None  # req/s with the most workers over req/s with the fewest


def worker_rows(rows: list[SummaryRow]) -> list[WorkerRow]:
    """The `minigate-<N>w` rows, one line per API, mode and concurrency with every N side by side."""
    found: dict[tuple[str, str, int], WorkerRow] = {}
    for row in rows:
        if (match := _WORKERS_TARGET.match(row.target)) is None:
            continue
        workers = int(match[1])
        line = found.setdefault((row.api, row.mode, row.concurrency),
                                WorkerRow(row.api, row.mode, row.concurrency, {}, {}, {}, None))
        line.requests_per_s[workers] = row.requests_per_s
        line.p50_ms[workers] = row.p50_ms
        line.cpu_ms_per_request[workers] = row.cpu_ms_per_request
    for line in found.values():
        fewest, most = min(line.requests_per_s), max(line.requests_per_s)
        line.gain = _ratio(line.requests_per_s[most], line.requests_per_s[fewest]) if most != fewest else None
    return list(found.values())


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def _print_table(title: str, headers: list[str], body: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _print_plain(title, headers, body)
        return
    table = Table(title=title, title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right")
    for line in body:
        table.add_row(*line)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _print_plain(title: str, headers: list[str], body: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]
    print(f"\n{title}")
    for line in [headers, *body]:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))]
        print("  ".join(cells))


def _print_workers(found: list[WorkerRow]) -> None:
    counts = sorted({n for line in found for n in line.requests_per_s})
    headers = ["api", "mode", "c", *(f"req/s {n}w" for n in counts), "gain",
               *(f"p50 ms {n}w" for n in counts), *(f"CPU ms/req {n}w" for n in counts)]
    body = [[line.api, line.mode, str(line.concurrency), *(_num(line.requests_per_s.get(n), 0) for n in counts),
             _times(line.gain), *(_num(line.p50_ms.get(n)) for n in counts),
             *(_num(line.cpu_ms_per_request.get(n), 3) for n in counts)] for line in found]
    _print_table("minigate by server.workers (every CPU; gain = req/s with the most workers / with the fewest)",
                 headers, body)


def print_report(rows: list[SummaryRow], targets: list[TargetSummary], found_ratios: list[Ratio],
                 found_checks: list[Check], found_apis: list[ApiRow], found_workers: list[WorkerRow] | None = None) -> None:
    headers = ["target", "api", "mode", "c", "p50 ms", "p90 ms", "p99 ms", "+p50 ms", "+p99 ms", "req/s",
               "CPU ms/req", "RSS MiB", "errors"]
    body = [[r.target, r.api, r.mode, str(r.concurrency), _num(r.p50_ms), _num(r.p90_ms), _num(r.p99_ms),
             _num(r.added_p50_ms, signed=True), _num(r.added_p99_ms, signed=True), _num(r.requests_per_s, 0),
             _num(r.cpu_ms_per_request, 3), _num(r.rss_after_mib, 1), str(r.errors)] for r in rows]
    _print_table("Latency, throughput and CPU per request (best of rounds; + = added over direct)", headers, body)
    if any(a.api != "chat" for a in found_apis):
        _print_table("minigate by client API (+ = added over direct chat; vs chat = against minigate's chat row)",
                     ["api", "mode", "c", "+p50 ms", "+p99 ms", "CPU ms/req", "CPU vs chat", "+p50 vs chat ms"],
                     [[a.api, a.mode, str(a.concurrency), _num(a.added_p50_ms, signed=True),
                       _num(a.added_p99_ms, signed=True), _num(a.cpu_ms_per_request, 3), _times(a.cpu_over_chat),
                       _num(a.added_p50_over_chat_ms, signed=True)] for a in found_apis])
    if found_workers:
        _print_workers(found_workers)
    _print_table("Start-up and memory", ["target", "runs", "start-up s", "idle RSS MiB", "RSS after load MiB"],
                 [[t.target, str(t.runs), _num(t.startup_s), _num(t.idle_rss_mib, 1), _num(t.rss_after_load_mib, 1)]
                  for t in targets])
    _print_table("minigate ratios", ["figure", "minigate / minimal", "minigate / LiteLLM"],
                 [[r.figure, _num(r.minigate_over_minimal), _num(r.minigate_over_litellm, 3)] for r in found_ratios])
    _print_table("Targets (minigate, non-streamed)", ["check", "value", "limit", "result"],
                 [[c.name, _num(c.value, 3), c.limit, _verdict(c.passed)] for c in found_checks])
