"""The whole conversion loop on one machine, with the product's own commands (`examples/conversion/run`).

A scripted teacher plays the frontier model; a support platform's agent (agent.py) sends its traffic
through `minigate serve`; then, as a platform team would:

    tasks discover → tasks candidates → dataset export → finetune (the top candidates, in a time budget)
    → shadow the tuned miniatures on live traffic → tasks promote (only those that clear the bar)
    → fresh traffic → minigate report

and writes `DIR/summary.json` (DESIGN.md), `DIR/summary.png` and the report under `DIR/report/`.
`--fast` runs a tiny workload with a few training steps and a bar of 0: it shows the loop connects, not
what the miniatures are worth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import FAST, FULL, MODEL, Mix, Teacher, Turn, missing_data, workload
from gateway_process import Gateway, GatewayError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from summary import Stage, judge_outcomes, write_summary
from traffic import Outcome, send

from tests.support.upstream import ScriptedUpstream

console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

# The local miniature's price, as examples/minigate.yaml sets it (a 2-vCPU VM's hour over the tokens it serves).
LOCAL_PRICE = {"gpu_hour_usd": 0.08925, "tokens_per_s": 73.4}


@dataclass(frozen=True, slots=True)
class Settings:
    """What differs between the full run and `--fast`."""

    mixes: dict[str, Mix]
    convert: int  # candidates to fine-tune, in rank order
    train_minutes: float  # the fine-tuning budget, shared by the candidates
    epochs: float
    min_agreement: float  # the promotion bar (conversion.min_agreement)
    min_samples: int  # shadow verdicts needed (conversion.min_samples)


# The least fine-tuning time worth starting a candidate with (on the 2-core machine, under an epoch of a
# tool-using step), and the time its evaluation and parity check take (1.5 min for 60 labels).
_LEAST_MINUTES = 5
_CHECK_MINUTES = 1.5
FULL_RUN = Settings(FULL, convert=4, train_minutes=30, epochs=3, min_agreement=0.9, min_samples=50)
FAST_RUN = Settings(FAST, convert=1, train_minutes=6, epochs=0.3, min_agreement=0.0, min_samples=3)


@dataclass
class Run:
    """The run's folder, its gateway, and the stages it has timed."""

    out: Path
    gateway: Gateway
    settings: Settings
    stages: list[Stage] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    shadow: dict[str, dict[str, Any]] = field(default_factory=dict)  # each tuned miniature's scorecard, by task

    def timed(self, name: str) -> _Timer:
        return _Timer(self, name)

    def minigate(self, *args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A product command in the run's folder, as a person would type it; `capture`: its stdout (JSON) is
        read, not shown. Its progress and messages (stderr) are always shown."""
        command = [sys.executable, "-m", "minigate.cli", *args]
        done = subprocess.run(command, cwd=self.out, stdout=subprocess.PIPE if capture else None, text=True,
                              check=False)
        if check and done.returncode != 0:
            raise SystemExit(f"`minigate {' '.join(args)}` failed with exit code {done.returncode}")
        return done


class _Timer:
    def __init__(self, run: Run, name: str) -> None:
        self.run, self.name = run, name

    def __enter__(self) -> _Timer:
        self.started = time.monotonic()
        console.print(f"[bold]▸ {self.name}[/]")
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.monotonic() - self.started
        self.run.stages.append(Stage(self.name, seconds))
        console.print(f"  [dim]{self.name}: {seconds:.1f} s[/]")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="a tiny workload and a few training steps (CI)")
    parser.add_argument("--out", type=Path, default=Path("conversion-run"), help="the run's folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload")
    args = parser.parse_args(argv)
    if (why := missing_data()) is not None:
        raise SystemExit(f"can't build the workload: {why}")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} holds an earlier run: remove it or pass another --out")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = FAST_RUN if args.fast else FULL_RUN
    started = time.monotonic()
    phases = workload(settings.mixes, seed=args.seed)
    with ScriptedUpstream(models=[MODEL], responder=Teacher(phases)) as teacher:
        run = Run(out, Gateway(out, env={"HF_HUB_OFFLINE": "1"}), settings)
        try:
            summary = _loop(run, teacher.base_url, phases)
        except GatewayError as exc:
            raise SystemExit(str(exc)) from exc
        finally:
            run.gateway.stop()
    summary["wall_s"] = round(time.monotonic() - started, 1)
    write_summary(out, summary, run.stages, console)
    return 0


def _loop(run: Run, teacher_url: str, phases: dict[str, list[Turn]]) -> dict[str, Any]:
    settings = run.settings
    with run.timed("start the gateway"):
        run.config = _base_config(teacher_url, settings)
        run.gateway.start(run.config)
    with run.timed(f"logged traffic: {len(phases['logged'])} calls to {MODEL}"):
        t_logged = time.time()
        logged = _send(run, phases["logged"], "logged traffic")
        t_logged_end = time.time()
    _write_lines(run.out / "calls-logged.jsonl", logged)
    with run.timed("tasks discover"):
        run.minigate("tasks", "discover", "--config", "minigate.yaml", "--out", ".")
        catalogue = json.loads(run.minigate("tasks", "list", "--config", "minigate.yaml", "--catalogue", "tasks.yaml",
                                            "--json", capture=True).stdout)
    with run.timed("tasks candidates"):
        run.config["tasks"] = {"catalogue": "tasks.yaml", "embedding": True}  # embeddings judge free-text shadows
        run.gateway.reconfigure(run.config)
        ranked = json.loads(run.minigate("tasks", "candidates", "--config", "minigate.yaml", "--json",
                                         capture=True).stdout)
        (run.out / "candidates.json").write_text(json.dumps(ranked, indent=2))
        run.minigate("tasks", "candidates", "--config", "minigate.yaml")  # the table, for the person watching
    chosen = ranked[:settings.convert]
    adapters = _finetune(run, chosen)
    with run.timed("shadow the tuned miniatures"):
        for task, adapter in adapters.items():
            _rule(run.config, task, shadow={"model": adapter, "sample": 1.0, "max_concurrency": 2})
        run.gateway.reconfigure(run.config)
        _shadow_traffic(run, phases["shadow"], adapters)
    promoted = _promote(run, adapters)
    with run.timed(f"fresh traffic: {len(phases['fresh'])} calls"):
        for task, adapter in adapters.items():
            if task not in promoted:  # keep measuring it, on a tenth of its calls
                _rule(run.config, task, shadow={"model": adapter, "sample": 0.1, "max_concurrency": 1})
        run.gateway.reconfigure(run.config)
        t_fresh = time.time()
        fresh = _send(run, phases["fresh"], "fresh traffic")
    _write_lines(run.out / "calls-fresh.jsonl", fresh)
    with run.timed("minigate report"):
        before = _report(run, t_logged, t_logged_end, None)
        after = _report(run, t_fresh, None, run.out / "report")
    tasks = judge_outcomes(fresh, catalogue, adapters, promoted, run.shadow)
    return {"calls_before": len(logged), "calls_after": len(fresh),
            "miniature_share_before": before["headline"]["miniature_share"],
            "miniature_share_after": sum(o.on_miniature for o in fresh) / len(fresh),
            "miniature_token_share_before": before["headline"]["miniature_token_share"],
            "miniature_token_share_after": after["headline"]["miniature_token_share"],
            "spend_usd": after["headline"]["cost_usd"], "counterfactual_usd": after["headline"]["counterfactual_usd"],
            "savings_usd": after["headline"]["savings_usd"], "bar": settings.min_agreement,
            "tasks": tasks}


def _base_config(teacher_url: str, settings: Settings) -> dict[str, Any]:
    return {
        "upstreams": {"local": {"kind": "llamacpp", "model": "smollm2-135m-instruct"},
                      "teacher": {"kind": "openai", "base_url": teacher_url, "api_key": "teacher"}},
        "models": {"smollm2-135m": {"upstream": "local", "model": "smollm2-135m-instruct", "tier": "miniature",
                                    "price": LOCAL_PRICE},
                   MODEL: {"upstream": "teacher", "model": MODEL, "tier": "frontier"}},
        "routes": {MODEL: {"default": MODEL, "escalate_to": MODEL, "rules": []}},
        # Contacts and secrets are redacted; names are kept: the concierge's tool calls name actors and artists.
        "logging": {"store": "sqlite:///minigate.db",
                    "redact": ["email", "phone", "credit_card", "iban", "ssn", "ip", "secret"]},
        # The bar the autopilot would hold a promoted task to; `tasks promote` is given the run's own.
        "conversion": {"min_agreement": max(settings.min_agreement, 0.5), "min_samples": settings.min_samples},
    }


def _rule(config: dict[str, Any], task: str, **fields: Any) -> None:
    """The route's rule for `task` (made on first use): the frontier answers, `fields` add to it."""
    rules = config["routes"][MODEL]["rules"]
    rule = next((r for r in rules if r["name"] == task), None)
    if rule is None:
        rule = {"name": task, "when": {"task": task}, "use": MODEL}
        rules.append(rule)
    rule.update(fields)


def _send(run: Run, turns: list[Turn], what: str) -> list[Outcome]:
    """Send `turns` to the gateway; return once every call is in its store, for the commands that read it."""
    stored = run.gateway.stored()
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=not console.is_terminal) as bar:
        progress = bar.add_task(what, total=len(turns))
        outcomes = send(run.gateway.url, turns, lambda n: bar.advance(progress, n))
    failed = [o for o in outcomes if o.error]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(turns)} calls failed, e.g. {failed[0].error}")
    run.gateway.await_stored(stored + len(turns))
    return outcomes


def _finetune(run: Run, chosen: list[dict[str, Any]]) -> dict[str, str]:
    """Export the chosen tasks, then fine-tune them within the budget; each adapter's model entry, by task name.

    A half-trained miniature is worth nothing, so the budget finishes as many as it can: the cheapest data
    trains first, each given what is left of the budget and stopping at its epochs; a candidate left less
    than `_LEAST_MINUTES` is not tuned. `--max-minutes` counts training only: `_CHECK_MINUTES` of each
    share are kept for the evaluation and the llama.cpp parity check.
    """
    for candidate in chosen:
        with run.timed(f"dataset export {candidate['name']}"):
            run.minigate("dataset", "export", "--config", "minigate.yaml", "--task", candidate["task"], "--out",
                         f"datasets/{candidate['name']}")
    cheapest_first = sorted(chosen, key=lambda c: (run.out / "datasets" / c["name"] / "train.jsonl").stat().st_size)
    adapters: dict[str, str] = {}
    deadline = time.monotonic() + run.settings.train_minutes * 60
    for candidate in cheapest_first:
        name = candidate["name"]
        share = (deadline - time.monotonic()) / 60
        if share < _LEAST_MINUTES:
            console.print(f"[yellow]{share:.1f} min of fine-tuning left for {name}, under {_LEAST_MINUTES} min: "
                          "not tuned[/]")
            continue
        with run.timed(f"finetune {name} ({share:.1f} min budget)"):
            run.minigate("finetune", "--data", f"datasets/{name}", "--out", f"adapters/{name}", "--epochs",
                         str(run.settings.epochs), "--max-minutes", f"{share - _CHECK_MINUTES:.2f}")
        adapters[name] = f"mini-{name}"
        run.config["models"][adapters[name]] = {"upstream": "local", "adapter": adapters[name],
                                                "path": str(run.out / "adapters" / name), "tier": "miniature",
                                                "price": LOCAL_PRICE}
    return adapters


def _shadow_traffic(run: Run, turns: list[Turn], adapters: dict[str, str]) -> None:
    """Send the shadow phase in slices, letting the shadows keep up: the queue never overflows."""
    sent_to_shadow = 0
    for start in range(0, len(turns), 40):
        outcomes = _send(run, turns[start:start + 40], f"shadow traffic {start + 1}-{min(start + 40, len(turns))}")
        sent_to_shadow += sum(o.task in adapters for o in outcomes)
        _await_shadows(run, sent_to_shadow, slack=8)
    _await_shadows(run, sent_to_shadow, slack=0)


def _await_shadows(run: Run, expected: int, *, slack: int, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _shadows_done(run) >= expected - slack:
            return
        time.sleep(0.5)
    raise SystemExit(f"shadow calls fell behind: {_shadows_done(run)} of {expected} judged in {timeout_s:.0f} s")


def _shadows_done(run: Run) -> float:
    text = run.gateway.metrics()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("minigate_shadow_comparisons_total{", "minigate_shadow_dropped_total{")))


def _promote(run: Run, adapters: dict[str, str]) -> set[str]:
    promoted: set[str] = set()
    with run.timed("tasks scorecard and promote"):
        run.minigate("tasks", "scorecard", "--config", "minigate.yaml", "--catalogue", "tasks.yaml")
        cards = json.loads(run.minigate("tasks", "scorecard", "--config", "minigate.yaml", "--catalogue", "tasks.yaml",
                                        "--json", capture=True).stdout)
        run.shadow = {card["task_name"]: card for card in cards if card["model"] == adapters.get(card["task_name"])}
        for task, adapter in adapters.items():
            applied, rejected = run.gateway.reloads()
            done = run.minigate("tasks", "promote", task, "--model", adapter, "--config", "minigate.yaml",
                                "--catalogue", "tasks.yaml", "--min-agreement", str(run.settings.min_agreement),
                                "--min-samples", str(run.settings.min_samples), check=False)
            if done.returncode == 0:
                promoted.add(task)
                run.gateway.await_reload(applied, rejected)
    return promoted


def _report(run: Run, since: float, until: float | None, folder: Path | None) -> dict[str, Any]:
    args = ["report", "--config", "minigate.yaml", "--since", f"{since:.3f}", "--json"]
    if until is not None:
        args += ["--until", f"{until:.3f}"]
    args += ["--output", str(folder or run.out / ".report-before")]
    document: dict[str, Any] = json.loads(run.minigate(*args, capture=True).stdout)
    if folder is None:
        shutil.rmtree(run.out / ".report-before", ignore_errors=True)
    return document


def _write_lines(path: Path, outcomes: list[Outcome]) -> None:
    """What the agent got, call by call: the run's evidence."""
    with path.open("w", encoding="utf-8") as handle:
        for o in outcomes:
            handle.write(json.dumps({"step": o.turn.step, "request_id": o.request_id, "model": o.model,
                                     "tier": o.tier, "task": o.task, "content": o.content,
                                     "tool_calls": o.tool_calls, "teacher": o.turn.reply}) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
