"""bench/clustering, agent steps: does discovery give every agent step exactly one task?

The workload is tests/support/agent_workload.py at 300 calls a step (1,800 `logs export` rows): a
10-label classifier, an urgency rater over the same kind of messages, a tool step offering 5 BFCL
tools, a summariser, a JSON extractor, and a generic assistant over 4 BANKING77 intents (the one
open-ended step, which discovery may split by content). `minigate tasks discover` runs on the rows
end to end; the figures:
- step purity: for each step, the share of its calls in its largest task, and how many calls of other
  steps that task holds (targets: >= 95% and none, for every step but the open-ended one);
- ARI against steps, over every call (target >= 0.9), and over the calls of the specific steps;
- the open-ended step: how many tasks it became, whether they hold anything else, NMI against intents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.agent_workload import STEPS, Call, agent_workload, missing_data  # noqa: E402

__all__ = ["PER_STEP", "Run", "agent_steps", "discover_cli"]

PER_STEP = 300
OPEN = "open"
PURITY_TARGET = 0.95
ARI_TARGET = 0.9


@dataclass(frozen=True)
class Run:
    """One `minigate tasks discover` run: each input id's task, wall seconds, the child's peak RSS."""

    task_of: dict[str, str]
    seconds: float
    peak_rss_mib: int


def discover_cli(lines: list[str], out: Path, cache: Path) -> Run:
    """`minigate tasks discover --input` on JSONL lines, into `out`; timed with wait4."""
    source, assigned = out / "calls.jsonl", out / "assignments.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(line + "\n" for line in lines))
    command = [sys.executable, "-m", "minigate.cli", "tasks", "discover", "--input", str(source), "--out", str(out),
               "--assignments", str(assigned), "--cache", str(cache), "--json"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status:
        raise SystemExit(f"tasks discover failed: {process.stderr.read().decode() if process.stderr else ''}")
    rows = [json.loads(line) for line in assigned.read_text().splitlines()]
    return Run({row["id"]: row["task"] for row in rows}, round(seconds, 1), round(usage.ru_maxrss / 1024))


def agent_steps(cache: Path) -> dict[str, Any] | None:
    """The agent-steps figures, or None when the shared data is absent (the reason is printed)."""
    reason = missing_data()
    if reason:
        print(f"agent steps: {reason}: not measured")
        return None
    calls = agent_workload(PER_STEP)
    with tempfile.TemporaryDirectory() as tmp:
        run = discover_cli([json.dumps(call.row) for call in calls], Path(tmp), cache)
    found = [run.task_of[call.row["request_id"]] for call in calls]
    steps = [call.step for call in calls]
    purity = {step: _purity(step, steps, found) for step in STEPS}
    specific = [row for row, step in enumerate(steps) if step != OPEN]
    return {
        "calls": len(calls), "tasks": len(set(found)), "seconds": run.seconds, "peak_rss_mib": run.peak_rss_mib,
        "steps": purity,
        "ari_vs_steps": round(float(adjusted_rand_score(steps, found)), 4),
        "ari_vs_steps_specific_calls": round(float(adjusted_rand_score(
            [steps[row] for row in specific], [found[row] for row in specific])), 4),
        "open_step": _open_step(calls, found),
    }


def verdicts(figures: dict[str, Any]) -> list[tuple[str, bool]]:
    """(what, passed) for each target."""
    specific = {step: row for step, row in figures["steps"].items() if step != OPEN}
    return [
        (f"every specific step's largest task holds >= {PURITY_TARGET:.0%} of its calls",
         all(row["largest_share"] >= PURITY_TARGET for row in specific.values())),
        ("no specific step's task holds calls of another step", all(not row["foreign"] for row in specific.values())),
        ("no task of the open-ended step holds calls of another step", figures["open_step"]["foreign"] == 0),
        (f"ARI against steps >= {ARI_TARGET}", figures["ari_vs_steps"] >= ARI_TARGET),
    ]


def report(figures: dict[str, Any]) -> list[str]:
    """Lines for the terminal."""
    lines = [f"agent steps: {figures['calls']} logged calls of {len(figures['steps'])} steps -> {figures['tasks']} "
             f"tasks in {figures['seconds']:.0f} s (peak RSS {figures['peak_rss_mib']} MiB)"]
    for step, row in figures["steps"].items():
        lines.append(f"  {step:<10} {row['calls']:>4} calls in {row['tasks']:>2} task(s); largest holds "
                     f"{row['largest_share']:.1%} of them and {row['foreign']} call(s) of other steps")
    opened = figures["open_step"]
    lines.append(f"  ARI against steps {figures['ari_vs_steps']:.3f} (specific steps' calls only: "
                 f"{figures['ari_vs_steps_specific_calls']:.3f}); open-ended step: {opened['tasks']} tasks, NMI "
                 f"against its {opened['intents']} intents {opened['nmi_vs_intents']:.3f}")
    lines += [f"{what}: {'PASS' if passed else 'FAIL'}" for what, passed in verdicts(figures)]
    return lines


def _purity(step: str, steps: list[str], found: list[str]) -> dict[str, Any]:
    tasks = Counter(task for task, owner in zip(found, steps) if owner == step)
    largest, count = tasks.most_common(1)[0]
    foreign = sum(task == largest and owner != step for task, owner in zip(found, steps))
    return {"calls": sum(tasks.values()), "tasks": len(tasks), "largest_share": round(count / sum(tasks.values()), 4),
            "foreign": foreign}


def _open_step(calls: list[Call], found: list[str]) -> dict[str, Any]:
    rows = [row for row, call in enumerate(calls) if call.step == OPEN]
    tasks = {found[row] for row in rows}
    foreign = sum(task in tasks and call.step != OPEN for task, call in zip(found, calls))
    intents = [calls[row].topic for row in rows]
    labels = np.array([found[row] for row in rows])
    return {"tasks": len(tasks), "foreign": foreign, "intents": len(set(intents)),
            "nmi_vs_intents": round(float(normalized_mutual_info_score(intents, labels)), 4)}
