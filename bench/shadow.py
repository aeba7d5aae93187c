"""bench/shadow: what shadow evaluation (S6) costs the request path, and how fast the autopilot acts on it.

    bench/shadow                       # both parts: about 4 minutes on 2 cores
    bench/shadow --quick               # a look in under a minute (1 round of 3 s, 1 seed, min_samples 100)
    bench/shadow --parts promotion --seeds 1,2,3,4,5,6,7,8

1. Throughput (bench/shadow_throughput.py): `minigate serve` (CPU 1) in front of a fixed-response
   nginx, loaded by wrk at c=32 (both on CPU 0), with the serving rule's shadow `off`, `on` (`{model:
   mini, sample: 0.1, max_concurrency: 2}`, the shadow model the same nginx under another name) and
   `all` (every call shadowed), each started afresh every round in rotating order. Reported per variant:
   median requests/s and proxy CPU ms per client request, their change from `off` and each round's
   paired change (the spread), the share of calls shadowed and dropped; from `all`, what one shadow
   costs, the cost that implies at the configured sample, and the largest sample within the target
   (throughput down by at most 2%).
2. Promotion and demotion (bench/shadow_promotion.py): the autopilot on, a scripted frontier always
   right on a BANKING77 label task and a miniature right 97% of the time; once it is promoted it drifts
   to 80%. Per seed: the verdicts and client calls until promotion, and after the drift until demotion.

The policy, and why: `min_samples` 200 and `min_agreement` 0.93. The gate promotes on the Wilson 95%
lower bound, and a 97% miniature measured at its true rate on 200 verdicts (194/200) has a lower bound
of ~0.936: it clears 0.93 at the minimum sample when it shows its rate, and needs more verdicts when
the draw runs below it. The default bar, 0.95, would need several hundred verdicts of a 97% model.
Demotion needs `demote_samples` (50) verdicts since the promotion and an upper bound under the same
bar: 80% on 50 verdicts (40/50) has an upper bound of ~0.89. Verdicts come from shadows only, so calls
are verdicts divided by the shadow sample: at 0.1 before and after promotion, promotion needs at
least 2,000 calls and demotion about 500 calls served by the drifted miniature; the autopilot's
interval adds the verdicts that arrive between two reviews. The run prints these bounds as computed.
The drift here starts as soon as the bench sees the promotion; demotion counts every verdict since the
promotion, so a miniature that served well for long before drifting takes longer to demote.

Prints tables and writes bench/results/shadow.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from minigate.router.agreement import wilson  # noqa: E402
from overhead_setup import (ROOT, SetupFailed, ensure_tools, free_port, log, machine_info,  # noqa: E402
                            minigate_command, package_versions, tool_versions)
from shadow_promotion import PromotionSettings, Trial, run_trial, summarise_trials, trials_document  # noqa: E402
from shadow_throughput import (ThroughputRun, ThroughputSettings, run_throughput, runs_document,  # noqa: E402
                               summarise_throughput)
from tests.support.agent_workload import missing_data  # noqa: E402

PARTS = ("throughput", "promotion")
RESULTS = ROOT / "bench" / "results" / "shadow.json"
TARGETS = {"throughput_cost_pct": 2.0}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/shadow", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="under a minute: 1 round of 3 s, 1 seed, min_samples 100")
    parser.add_argument("--parts", type=lambda text: [p for p in text.split(",") if p], default=",".join(PARTS),
                        help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=4, help="throughput: rounds (each starts every variant afresh)")
    parser.add_argument("--duration", type=int, default=8, help="throughput: seconds of load per run")
    parser.add_argument("--warmup", type=int, default=2, help="throughput: seconds of unmeasured load before each run")
    parser.add_argument("--concurrency", type=int, default=32, help="throughput: wrk connections")
    parser.add_argument("--throughput-sample", type=float, default=0.1,
                        help="throughput: the `on` rule's shadow sample")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default="1,2,3,4,5",
                        help="promotion: one trial per seed")
    parser.add_argument("--sample", type=float, default=0.1, help="promotion: the rule's shadow sample")
    parser.add_argument("--reverse-sample", type=float, default=0.1,
                        help="promotion: conversion.shadow_sample, the frontier's shadow of a promoted task")
    parser.add_argument("--before", type=float, default=0.97, help="promotion: the miniature's accuracy at first")
    parser.add_argument("--after", type=float, default=0.80, help="promotion: its accuracy after the drift")
    parser.add_argument("--min-samples", type=int, default=200, help="promotion: conversion.min_samples")
    parser.add_argument("--min-agreement", type=float, default=0.93, help="promotion: conversion.min_agreement")
    parser.add_argument("--demote-samples", type=int, default=50, help="promotion: conversion.demote_samples")
    parser.add_argument("--interval", type=float, default=1.0, help="promotion: conversion.interval_s")
    parser.add_argument("--clients", type=int, default=8, help="promotion: concurrent clients")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown parts: {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    if args.quick:
        args.rounds, args.duration, args.warmup, args.seeds = 1, 3, 1, [1]
        args.min_samples = 100
    return args


def _policy_bounds(args: argparse.Namespace) -> dict[str, Any]:
    """What the policy implies, computed: the bounds a miniature at its true rate shows at the minimum samples."""
    agree = round(args.before * args.min_samples)
    drifted = round(args.after * args.demote_samples)
    return {"promote_lower_bound_at_min_samples": {"agree": agree, "n": args.min_samples,
                                                   "low": wilson(agree, args.min_samples)[0]},
            "demote_upper_bound_at_demote_samples": {"agree": drifted, "n": args.demote_samples,
                                                     "high": wilson(drifted, args.demote_samples)[1]},
            "min_calls_to_promotion": round(args.min_samples / args.sample),
            "expected_calls_to_demotion": round(args.demote_samples / args.reverse_sample)}


def throughput(args: argparse.Namespace, workdir: Path, problems: dict[str, str],
               versions: dict[str, str]) -> list[ThroughputRun]:
    minigate = minigate_command()
    try:
        tools = ensure_tools()
    except SetupFailed as exc:
        problems["throughput"] = f"cannot run without nginx and wrk: {exc}"
        return []
    if minigate is None or len(tools) < 2:
        problems["throughput"] = "needs the project's .venv with minigate installed, nginx and wrk"
        return []
    versions.update(tool_versions(tools))
    log(f"throughput: c={args.concurrency}, {args.rounds} rounds of {args.duration} s per variant")
    settings = ThroughputSettings(tools["nginx"], tools["wrk"], minigate, workdir, args.rounds, args.duration,
                                  args.warmup, args.concurrency,
                                  {"model": "mini", "sample": args.throughput_sample, "max_concurrency": 2})
    return run_throughput(settings, free_port, log)


def promotion(args: argparse.Namespace, workdir: Path, problems: dict[str, str]) -> list[Trial]:
    minigate, missing = minigate_command(), missing_data()
    if minigate is None or missing is not None:
        problems["promotion"] = missing or "needs the project's .venv with minigate installed"
        return []
    settings = PromotionSettings(minigate, workdir, args.before, args.after, args.sample, args.reverse_sample,
                                 args.min_samples, args.min_agreement, args.demote_samples, args.interval,
                                 args.clients, per_intent=80, max_calls=max(20_000, 5 * round(
                                     args.min_samples / args.sample)))
    trials = []
    for seed in args.seeds:
        log(f"promotion: seed {seed}")
        trial = run_trial(settings, seed, free_port)
        log(f"  promoted on {trial.promote_verdicts}, demoted on {trial.demote_verdicts}, {trial.wall_s} s")
        trials.append(trial)
    return trials


def print_throughput(summary: dict[str, Any], sample: float) -> None:
    medians, changes = summary["medians"], summary["changes_from_off"]
    print(f"\n{'shadow':<8}{'req/s':>9}{'change':>9}{'CPU ms/req':>12}{'change':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'shadowed':>10}{'dropped':>9}   (medians over rounds)")
    for variant, row in medians.items():
        change = changes.get(variant)
        print(f"{variant:<8}{row['requests_per_s']:>9.1f}{_percent(change, 'throughput_pct'):>9}"
              f"{row['cpu_ms_per_request']:>12.3f}{_percent(change, 'cpu_per_request_pct'):>9}{row['p50_ms']:>9.2f}"
              f"{row['p99_ms']:>9.2f}{row['shadowed_share']:>10.1%}{row['shadow_dropped']:>9}")
    for variant, change in changes.items():
        throughput = ", ".join(f"{p:+.1f}%" for p in change["paired_throughput_pct"])
        cpu = ", ".join(f"{p:+.1f}%" for p in change["paired_cpu_per_request_pct"])
        print(f"{variant}: throughput change per round {throughput}; CPU per request {cpu}")
    per_shadow = summary["per_shadow"]
    if per_shadow is not None:
        print(f"one shadow costs {per_shadow['cpu_ms_per_shadow']:.3f} CPU ms, "
              f"{per_shadow['per_shadow_vs_request']:.2f}x "
              f"a client request: at sample {sample} every sampled call shadowed costs "
              f"{per_shadow['projected_cpu_change_pct']:+.1f}% CPU, "
              f"{per_shadow['projected_throughput_change_pct']:+.1f}% "
              f"throughput; {TARGETS['throughput_cost_pct']}% holds up to sample {per_shadow['sample_for_target']}")
    if "on" in changes:
        bar = TARGETS["throughput_cost_pct"]
        direct = changes["on"]["throughput_pct"]
        projected = per_shadow["projected_throughput_change_pct"] if per_shadow is not None else None
        print(f"target: shadowing at sample {sample} costs <= {bar}% throughput: direct (median of off/on) "
              f"{direct:+.2f}%, {_judged(direct, bar)}"
              + ("" if projected is None else f"; projected from the cost per shadow {projected:+.2f}%, "
                                              f"{_judged(projected, bar)}"))
    print(f"log records dropped {summary['log_records_dropped']}; client errors {summary['errors']}")


def _judged(change_pct: float, bar_pct: float) -> str:
    return "met" if -change_pct <= bar_pct else "MISSED"


def _percent(change: dict[str, Any] | None, key: str) -> str:
    return "" if change is None else f"{change[key]:+.1f}%"


def _pair(verdicts: tuple[int, int] | None) -> str:
    return f"{verdicts[0]}/{verdicts[1]}" if verdicts else "-"


def print_promotion(trials: list[Trial], bounds: dict[str, Any]) -> None:
    print(f"\n{'':>4}{'promotion':^46}{'demotion':^63}")
    print(f"{'':>4}{'verdicts':^23}{'calls':^23}{'verdicts':^33}{'miniature calls':^30}")
    print(f"{'seed':>4}{'bar':>6}{'decided':>10}{'lag s':>7}{'decided':>9}{'switched':>11}   {'bar':>6}{'decided':>10}"
          f"{'lag s':>7}{'old rate':>10}{'decided':>10}{'until frontier':>16}{'wall s':>8}")
    for t in trials:
        print(f"{t.seed:>4}{_count(t.promote_bar_verdicts):>6}{_pair(t.promote_verdicts):>10}"
              f"{_count(t.promote_lag_s):>7}"
              f"{_count(t.calls_to_promotion):>9}{_count(t.calls_to_first_miniature_reply):>11}   "
              f"{_count(t.demote_bar_verdicts):>6}{_pair(t.demote_verdicts):>10}{_count(t.demote_lag_s):>7}"
              f"{_count(t.old_rate_verdicts):>10}{_count(t.miniature_calls_to_demotion):>10}{t.miniature_calls:>16}"
              f"{t.wall_s:>8}")
    promote, demote = bounds["promote_lower_bound_at_min_samples"], bounds["demote_upper_bound_at_demote_samples"]
    print("bar: verdicts when the policy first allowed the change; decided: what the autopilot acted on (its reason) "
          "and the calls answered by then; lag: seconds from the shadow that crossed the bar to the review that acted; "
          "old rate: shadows made after the promotion's timestamp but before the drift")
    print(f"policy: {promote['agree']}/{promote['n']} has Wilson lower bound {promote['low']:.3f}; "
          f"{demote['agree']}/{demote['n']} has upper bound {demote['high']:.3f}; at least "
          f"{bounds['min_calls_to_promotion']} calls to promote, ~{bounds['expected_calls_to_demotion']} miniature "
          f"calls to demote")


def _count(value: float | None) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    problems: dict[str, str] = {}
    minigate = minigate_command()
    versions = package_versions(minigate.parent / "python", ["minigate", "uvicorn", "httpx"]) if minigate else {}
    runs: list[ThroughputRun] = []
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="minigate-shadow-bench-") as tmp:
        if "throughput" in args.parts:
            (Path(tmp) / "throughput").mkdir()
            runs = throughput(args, Path(tmp) / "throughput", problems, versions)
        if "promotion" in args.parts:
            (Path(tmp) / "promotion").mkdir()
            trials = promotion(args, Path(tmp) / "promotion", problems)
    document: dict[str, Any] = {
        "benchmark": "shadow", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "settings": {key: str(value) if isinstance(value, Path) else value
                                                for key, value in vars(args).items()},
        "targets": TARGETS, "problems": problems,
    }
    if runs:
        summary = summarise_throughput(runs, args.throughput_sample, TARGETS["throughput_cost_pct"])
        print_throughput(summary, args.throughput_sample)
        document["throughput"] = {"summary": summary, "runs": runs_document(runs)}
    if trials:
        bounds = _policy_bounds(args)
        print_promotion(trials, bounds)
        document["promotion"] = {"policy": bounds, "summary": summarise_trials(trials),
                                 "trials": trials_document(trials)}
    for part, why in problems.items():
        print(f"{part}: not measured: {why}")
    document["versions"] = versions
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
