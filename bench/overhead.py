"""What minigate adds to a request, against a bare upstream, a minimal proxy and LiteLLM.

    bench/overhead                           # full run: 4 targets, c=1 and c=32, 10 s, 2 rounds
    bench/overhead --duration 3 --rounds 1   # quick look
    bench/overhead --targets direct,minimal
    bench/overhead --targets direct,minigate --apis chat,responses   # minigate's ingresses side by side
    bench/overhead --targets minigate --workers 1,2 --apis chat      # server.workers 1 against 2

A fixed-response nginx (CPU 0) is the upstream; wrk (CPU 0) loads each target in turn; the
proxy under test runs alone on CPU 1. Each round starts every target afresh, so rounds are
interleaved across targets and any drift of the machine touches all of them alike. minigate is
loaded through chat completions and, in the same start, through its Responses and Messages
ingresses (translated to the same chat request upstream), so the three are measured side by
side. The CPU time the proxy's process tree spends per request is the figure that stays stable
on a noisy machine; latencies are reported beside it. Prints tables and writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from overhead_fixtures import APIS, JSON_PATH, MODES, Api, Mode, request_body, wrk_script
from overhead_load import Measurement, TargetRun, WrkFailed, measure, run_wrk
from overhead_proc import Server, StartFailed, post_ok, rss_bytes, start_server, stop_server
from overhead_report import (AGGREGATION, api_rows, checks, print_report, ratios, summarise_rows, summarise_targets,
                             worker_rows)
from overhead_setup import (ROOT, SetupFailed, ensure_litellm, ensure_tools, free_port, log, machine_info,
                            minigate_command, minimal_python, package_versions, tool_versions)
from overhead_targets import (DIRECT, PROXY_CPU, UPSTREAM_CPU, WORKERS_CPUS, Target, litellm_target,
                              minigate_target, minimal_target, upstream_launch)

TARGETS = ("direct", "minimal", "litellm", "minigate")
RESULTS = ROOT / "bench" / "results" / "overhead.json"


@dataclass
class Plan:
    """What one invocation measures, and where its scratch files go."""

    wrk: str
    workdir: Path
    upstream: Server
    duration_s: int
    warmup_s: int
    concurrency: list[int]
    modes: list[Mode]
    apis: list[Api]


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)} (choose from {', '.join(choices)})")
        return names

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/overhead", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--targets", type=_csv(TARGETS), default=",".join(TARGETS), help="comma-separated targets")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run (wrk takes whole seconds)")
    parser.add_argument("--rounds", type=int, default=2, help="times each target is started and loaded")
    parser.add_argument("--concurrency", type=lambda t: [int(c) for c in t.split(",")], default="1,32",
                        help="comma-separated wrk connection counts")
    parser.add_argument("--modes", type=_csv(MODES), default=",".join(MODES),
                        help="json (non-streamed, the main figure) and/or sse (streamed)")
    parser.add_argument("--apis", type=_csv(APIS), default=",".join(APIS),
                        help="client APIs, for the targets that serve them (responses and messages: minigate)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    parser.add_argument("--workers", type=lambda t: [int(n) for n in t.split(",")], default=None,
                        help="comma-separated server.workers counts: minigate runs once per count (minigate-<N>w), "
                             "on every CPU, instead of once pinned to CPU 1")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    return parser.parse_args(argv)


def _resolve(name: str, workers: list[int] | None) -> tuple[list[Target], dict[str, str]] | None:
    if name == "direct":
        return [DIRECT], {}
    if name == "minimal":
        python = minimal_python()
        libraries = ["starlette", "httpx", "uvicorn", "uvloop", "httptools"]
        return [minimal_target(python)], {**package_versions(python, libraries), "interpreter": str(python)}
    if name == "litellm":
        command = ensure_litellm()
        libraries = ["litellm", "fastapi", "uvicorn", "httpx", "openai", "uvloop", "httptools"]
        return [litellm_target(command)], package_versions(command.parent / "python", libraries)
    minigate = minigate_command()
    if minigate is None:
        return None
    libraries = ["minigate", "fastapi", "starlette", "uvicorn", "httpx", "orjson", "pydantic"]
    found = [minigate_target(minigate)] if workers is None else [minigate_target(minigate, n) for n in workers]
    return found, package_versions(minigate.parent / "python", libraries)


def resolve_targets(names: list[str], problems: dict[str, str],
                    workers: list[int] | None = None) -> tuple[list[Target], dict[str, dict[str, str]]]:
    """The targets that can run and their library versions; why the others cannot goes to `problems`."""
    targets, versions = [], {}
    for name in names:
        try:
            found = _resolve(name, workers)
        except SetupFailed as exc:
            found, problems[name] = None, f"set-up failed: {exc}"
        if found is None:
            problems.setdefault(name, "not available")
            print(f"{name}: {problems[name]}", flush=True)
            continue
        targets += found[0]
        versions[name] = found[1]
    return targets, versions


def start_upstream(nginx: str, workdir: Path) -> Server:
    port = free_port()
    launch = upstream_launch(nginx, workdir, port)
    probe = (JSON_PATH, request_body("json"), DIRECT.api_key)
    return start_server("direct", launch.command, port, probe, workdir / "nginx.log", launch.env, 10.0)


def start_target(target: Target, plan: Plan, round_: int) -> Server:
    """A fresh server for `target` (the shared upstream for `direct`)."""
    if target.launch is None:
        return plan.upstream
    workdir = plan.workdir / f"{target.name}-{round_}"
    workdir.mkdir()
    port = free_port()
    launch = target.launch(workdir, plan.upstream.port, port)
    probe = (target.paths["json"], request_body("json"), target.api_key)
    return start_server(target.name, launch.command, port, probe, workdir / "server.log", launch.env,
                        target.startup_timeout_s)


def _order(apis: list[Api], round_: int) -> list[Api]:
    # Each round starts from the next API, so no API is always the first one a fresh start meets.
    shift = (round_ - 1) % len(apis) if apis else 0
    return apis[shift:] + apis[:shift]


def _scripts(target: Target, server: Server, plan: Plan, round_: int,
             problems: dict[str, str]) -> dict[tuple[Api, Mode], Path]:
    """A wrk script per API and mode that `target` answers; one it fails once is reported and left out."""
    scripts: dict[tuple[Api, Mode], Path] = {}
    for api in (api for api in _order(plan.apis, round_) if api in target.apis):
        for mode in plan.modes:
            body, what = request_body(mode, api), f"{api} {mode}"
            if not post_ok(server.port, target.path(api, mode), body, target.api_key):
                problems[f"{target.name} {what} round {round_}"] = f"a single {what} request failed; skipped"
                log(f"  {target.name}: a single {what} request failed; skipped")
                continue
            scripts[api, mode] = plan.workdir / f"{target.name}-{api}-{mode}.lua"
            scripts[api, mode].write_text(wrk_script(body, target.api_key))
    return scripts


def load(target: Target, server: Server, plan: Plan, round_: int, problems: dict[str, str]) -> list[Measurement]:
    """Per concurrency (lowest first), per API and mode: warm up at that concurrency, then measure.

    Lowest concurrency first, because an httpx pool's per-request cost grows with its idle
    connections: every target meets c=1 with the few connections its start-up left it.
    """
    scripts, found = _scripts(target, server, plan, round_, problems), []
    for concurrency in sorted(plan.concurrency):
        for (api, mode), script in scripts.items():
            url = f"http://127.0.0.1:{server.port}{target.path(api, mode)}"
            try:
                if plan.warmup_s > 0:
                    run_wrk(plan.wrk, url, script, concurrency, plan.warmup_s)
                m = measure(server, plan.wrk, url, script, mode, concurrency, plan.duration_s, round_, api)
            except WrkFailed as exc:
                problems[f"{target.name} {api} {mode} c={concurrency} round {round_}"] = str(exc)
                log(f"  {target.name} {api} {mode} c={concurrency}: {exc}")
                continue
            log(f"  {target.name:8} {api:9} {mode:4} c={concurrency:<3} p50 {m.latency_ms['p50']:7.2f} ms  "
                f"{m.requests_per_s:8.0f} req/s  {m.cpu_ms_per_request:.3f} CPU ms/req  errors {m.errors}")
            found.append(m)
    return found


def run_target(target: Target, plan: Plan, round_: int, problems: dict[str, str]) -> TargetRun | None:
    """Start `target`, read its idle RSS, load it in every mode, read its RSS again, stop it."""
    try:
        server = start_target(target, plan, round_)
    except StartFailed as exc:
        problems[f"{target.name} round {round_}"] = str(exc)
        log(f"{target.name}: failed to start: {exc}")
        return None
    try:
        log(f"  {target.name:8} started in {server.startup_s:.2f} s")
        idle = rss_bytes(server.process.pid)
        found = load(target, server, plan, round_, problems)
        return TargetRun(target.name, round_, server.startup_s, idle, rss_bytes(server.process.pid), found)
    finally:
        if server is not plan.upstream:
            stop_server(server)


def run_rounds(targets: list[Target], plan: Plan, rounds: int, problems: dict[str, str]) -> list[TargetRun]:
    runs = []
    for round_ in range(1, rounds + 1):
        log(f"round {round_}/{rounds}")
        for target in targets:
            run = run_target(target, plan, round_, problems)
            if run is not None:
                runs.append(run)
    return runs


def _settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        "duration_s": args.duration, "rounds": args.rounds, "warmup_s": args.warmup,
        "concurrency": args.concurrency, "modes": args.modes, "apis": args.apis, "targets": args.targets,
        "cpus": {"upstream_and_load": UPSTREAM_CPU, "proxy": PROXY_CPU, "minigate_workers": WORKERS_CPUS},
        "workers": args.workers,
        "aggregation": AGGREGATION,
        "order": "per round, each target started afresh; per start, lowest concurrency first, each API "
                 "(the first one rotating by round) and mode warmed up at the run's concurrency for warmup_s, "
                 "then measured for duration_s",
        "cpu_per_request": "utime+stime (+cutime+cstime) of the process tree, before vs after wrk, / requests",
        "upstream": "nginx, one worker: /v1/chat/completions fixed JSON, /sse/v1/chat/completions fixed SSE",
        "api_requests": "chat at /v1/chat/completions; minigate also responses at /v1/responses (instructions, "
                        "input string, store left on as clients' default) and messages at /v1/messages (system, "
                        "messages, max_tokens); all translate to the same chat request upstream; + is over "
                        "direct chat",
    }


def write_results(path: Path, args: argparse.Namespace, runs: list[TargetRun], versions: dict[str, object],
                  problems: dict[str, str]) -> None:
    """Print the tables and write every round plus the summary to `path`."""
    rows, targets = summarise_rows(runs), summarise_targets(runs)
    found_ratios, found_checks, found_apis = ratios(rows, targets), checks(rows, targets), api_rows(rows)
    found_workers = worker_rows(rows)
    print_report(rows, targets, found_ratios, found_checks, found_apis, found_workers)
    document = {
        "benchmark": "overhead", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": versions, "settings": _settings(args), "problems": problems,
        "summary": {"rows": [asdict(r) for r in rows], "targets": [asdict(t) for t in targets],
                    "ratios": [asdict(r) for r in found_ratios], "checks": [asdict(c) for c in found_checks],
                    "apis": [asdict(a) for a in found_apis], "workers": [asdict(w) for w in found_workers]},
        "runs": [asdict(run) for run in runs],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {path}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        tools = ensure_tools()
    except SetupFailed as exc:
        log(f"cannot run without nginx and wrk: {exc}")
        return 1
    problems: dict[str, str] = {}
    targets, versions = resolve_targets(args.targets, problems, args.workers)
    with tempfile.TemporaryDirectory(prefix="minigate-overhead-") as tmp:
        upstream = start_upstream(tools["nginx"], Path(tmp))
        plan = Plan(tools["wrk"], Path(tmp), upstream, args.duration, args.warmup, args.concurrency, args.modes,
                    args.apis)
        try:
            runs = run_rounds(targets, plan, args.rounds, problems)
        finally:
            stop_server(upstream)
    write_results(args.output, args, runs, {**tool_versions(tools), **versions}, problems)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
