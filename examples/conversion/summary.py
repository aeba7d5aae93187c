"""The run's figures: what the agent got on fresh traffic, judged against the teacher, and where time went.

Agreement is judged with the gateway's own judge (`minigate.router.agreement`), by the task's output kind:
labels exactly, JSON leaf by leaf, tool calls by name and arguments, free text by MiniLM cosine ≥ 0.8.
A task's `agreement` covers every fresh call of it, as the agent got it (escalations included);
`miniature_agreement` only the calls a miniature answered.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from traffic import Outcome

from minigate.router.agreement import Kind, as_kind, infer_kind, judge, wilson
from minigate.router.cascade import ReplyView

__all__ = ["Stage", "judge_outcomes", "write_summary"]


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    seconds: float


def judge_outcomes(fresh: list[Outcome], catalogue: dict[str, Any], adapters: dict[str, str], promoted: set[str],
                   shadow: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per task the fresh calls were matched to (DESIGN.md's `tasks` of summary.json), with the
    tuned miniature's shadow scorecard (`tasks scorecard --json`) where it had one."""
    kinds = {task["name"]: as_kind(task.get("output_kind")) for task in catalogue["tasks"]}
    by_task: dict[str, list[Outcome]] = {}
    for outcome in fresh:
        by_task.setdefault(outcome.task or "unknown", []).append(outcome)
    similarity = _similarity(fresh, kinds)
    rows = []
    for task, outcomes in sorted(by_task.items(), key=lambda item: -len(item[1])):
        verdicts = [_agrees(o, kinds.get(task), similarity) for o in outcomes]
        on_mini = [agree for o, agree in zip(outcomes, verdicts) if o.on_miniature]
        low, high = wilson(sum(verdicts), len(verdicts))
        kind = kinds.get(task) or _kind(outcomes[0])
        rows.append({
            "task": task, "step": Counter(o.turn.step for o in outcomes).most_common(1)[0][0], "output_kind": kind,
            "served_by": Counter(o.model for o in outcomes).most_common(1)[0][0], "promoted": task in promoted,
            "agreement": round(sum(verdicts) / len(verdicts), 4), "agreement_low": round(low, 4),
            "agreement_high": round(high, 4), "n": len(verdicts), "tuned": adapters.get(task),
            "miniature_calls": len(on_mini),
            "miniature_agreement": round(sum(on_mini) / len(on_mini), 4) if on_mini else None,
            "shadow": _shadow(shadow.get(task))})
    return rows


def _shadow(card: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the promotion was decided on: the tuned miniature's verdicts beside the teacher."""
    if card is None or not card["n"]:
        return None
    return {"agree": card["agree"], "n": card["n"], "agreement": card["agreement"],
            "low": round(card["interval"][0], 4), "high": round(card["interval"][1], 4)}


def _kind(outcome: Outcome) -> Kind:
    return infer_kind(outcome.turn.request, _reference(outcome))


def _reference(outcome: Outcome) -> ReplyView:
    return ReplyView(outcome.turn.reply.get("content"), tuple(outcome.turn.reply.get("tool_calls") or ()))


def _agrees(outcome: Outcome, kind: Kind | None, similarity: Any) -> bool:
    candidate = ReplyView(outcome.content, tuple(outcome.tool_calls))
    comparison = judge(_reference(outcome), candidate, kind or _kind(outcome), request=outcome.turn.request,
                       similarity=similarity)
    return comparison.verdict == "agree"


def _similarity(fresh: Iterable[Outcome], kinds: dict[str, Kind | None]) -> Any:
    """MiniLM cosine, loaded only when some fresh call's task answers in free text."""
    if not any((kinds.get(o.task or "") or _kind(o)) == "free_text" for o in fresh):
        return None
    from minigate.router.embedding import Embedder

    embedder = Embedder()

    def cosine(a: str, b: str) -> float:
        vectors = embedder.embed([a, b])
        return float(vectors[0] @ vectors[1])

    return cosine


def write_summary(out: Path, summary: dict[str, Any], stages: list[Stage], console: Console) -> None:
    """summary.json, the tables on the terminal, and summary.png."""
    summary["stages"] = [{"stage": s.name, "seconds": round(s.seconds, 1)} for s in stages]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tasks = Table("task", "step", "kind", "tuned", "in shadow (95%)", "promoted", "served by", "fresh calls",
                  "on miniature", "agreement with the teacher", "95% interval", title="fresh traffic, by task")
    for t in summary["tasks"]:
        shadow = t["shadow"]
        measured = "-" if shadow is None else (f"{shadow['agree']}/{shadow['n']} = {shadow['agreement']:.1%} "
                                                f"({shadow['low']:.1%}–{shadow['high']:.1%})")
        tasks.add_row(t["task"], t["step"], t["output_kind"], t["tuned"] or "-", measured,
                      "yes" if t["promoted"] else "no", t["served_by"], str(t["n"]), str(t["miniature_calls"]),
                      f"{t['agreement']:.1%}", f"{t['agreement_low']:.1%}–{t['agreement_high']:.1%}")
    console.print(tasks)
    head = Table("figure", "before (logged traffic)", "after (fresh traffic)", title="the loop's result")
    head.add_row("calls", str(summary["calls_before"]), str(summary["calls_after"]))
    head.add_row("served by miniatures", f"{summary['miniature_share_before']:.1%}",
                 f"{summary['miniature_share_after']:.1%}")
    head.add_row("tokens on miniatures", f"{summary['miniature_token_share_before']:.1%}",
                 f"{summary['miniature_token_share_after']:.1%}")
    head.add_row("spent / would have spent", "", f"${summary['spend_usd']:.4f} / ${summary['counterfactual_usd']:.4f}")
    console.print(head)
    times = Table("stage", "seconds", title=f"wall time: {summary['wall_s'] / 60:.1f} min")
    for s in stages:
        times.add_row(s.name, f"{s.seconds:.1f}")
    console.print(times)
    _plot(out / "summary.png", summary)
    console.print(f"wrote {out / 'summary.json'}, {out / 'summary.png'}, {out / 'report' / 'index.html'}")


def _plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (shares, quality, clock) = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1, 1.6, 1.6]})
    labels = ["calls", "tokens"]
    before = [summary["miniature_share_before"], summary["miniature_token_share_before"]]
    after = [summary["miniature_share_after"], summary["miniature_token_share_after"]]
    xs = range(len(labels))
    shares.bar([x - 0.2 for x in xs], [100 * v for v in before], 0.4, label="logged traffic", color="#9e9e9e")
    shares.bar([x + 0.2 for x in xs], [100 * v for v in after], 0.4, label="fresh traffic", color="#2e7d32")
    shares.set_xticks(list(xs), labels)
    shares.set_ylim(0, 100)
    shares.set_ylabel("% on miniatures")
    shares.set_title("share served by miniatures")
    shares.legend(loc="upper left")
    rows = [t for t in summary["tasks"] if t["tuned"] or t["n"] >= 10]  # a handful of calls says little
    names = [f"{t['step']} ({'miniature' if t['promoted'] else 'frontier'})" for t in rows]
    values = [100 * t["agreement"] for t in rows]
    errors = [[100 * (t["agreement"] - t["agreement_low"]) for t in rows],
              [100 * (t["agreement_high"] - t["agreement"]) for t in rows]]
    colours = ["#2e7d32" if t["promoted"] else "#9e9e9e" for t in rows]
    quality.bar(range(len(rows)), values, yerr=errors, color=colours, capsize=4, label="fresh traffic, as served")
    tuned = [(x, t["shadow"]) for x, t in enumerate(rows) if t["shadow"]]
    if tuned:  # what each tuned miniature scored beside the teacher, promoted or not
        quality.errorbar([x for x, _ in tuned], [100 * s["agreement"] for _, s in tuned],
                         yerr=[[100 * (s["agreement"] - s["low"]) for _, s in tuned],
                               [100 * (s["high"] - s["agreement"]) for _, s in tuned]],
                         fmt="D", color="#ef6c00", capsize=4, label="tuned miniature in shadow")
    quality.axhline(100 * summary["bar"], color="#c62828", linestyle="--", linewidth=1,
                    label="promotion bar (on the shadow interval's low end)")
    quality.set_xticks(range(len(rows)), names, fontsize=8, rotation=30, ha="right")
    quality.set_ylim(0, 105)
    quality.set_ylabel("% agreeing with the teacher (95% CI)")
    quality.set_title("quality on fresh traffic, by task")
    quality.legend(loc="lower left", fontsize=7, framealpha=0.95)
    stages = summary["stages"]
    clock.barh(range(len(stages)), [s["seconds"] / 60 for s in stages], color="#1565c0")
    clock.set_yticks(range(len(stages)), [s["stage"] for s in stages], fontsize=7)
    clock.invert_yaxis()
    clock.set_xlabel("minutes")
    clock.set_title(f"wall time: {summary['wall_s'] / 60:.1f} min")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
