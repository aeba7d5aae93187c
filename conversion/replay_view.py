"""How `minigate replay` shows its report to people: rich tables, and a PNG of cost against escalated share.

Kept apart from `replay.py` so the replay itself stays plain values; matplotlib is imported only
when a plot is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.table import Table

from minigate.conversion.replay import ReplayReport, Split

__all__ = ["PlotUnavailable", "report_notes", "report_tables", "write_plot"]


class PlotUnavailable(Exception):
    """The plot can't be drawn: a cost it needs is unpriced, or matplotlib is not installed."""


def report_tables(report: ReplayReport) -> list[Table]:
    """The split by tier, by rule and by task, then the cost of each scenario."""
    tiers = _split_table("calls by tier", report, report.tiers, ("tier",), logged=report.actual_tiers)
    rules = _split_table("calls by rule", report, report.rules, ("route", "rule"), escalated=True)
    tasks = _split_table("calls by task", report, report.tasks, ("task",), escalated=True)
    return [tiers, rules, tasks, _cost_table(report), *([_promotion_table(report)] if report.promotions else [])]


def report_notes(report: ReplayReport) -> list[str]:
    """What the figures rest on: estimated and assumed tokens, unpriced models, skipped lines."""
    notes = [
        f"{report.calls} calls replayed ({report.logged} from the call log); "
        f"prompt tokens estimated for {report.estimated_input}, reply tokens assumed for {report.assumed_output} "
        f"({report.assumed_output_tokens}, or the request's max_tokens if lower)",
    ]
    notes += [f"unpriced: {note}" for note in report.notes]
    if report.skipped:
        reasons = "; ".join(f"{skip.id}: {skip.reason}" for skip in report.skipped[:3])
        notes.append(f"skipped {len(report.skipped)} lines ({reasons}{'; ...' if len(report.skipped) > 3 else ''})")
    return notes


def _split_table(title: str, report: ReplayReport, splits: list[Split], keys: tuple[str, ...], *,
                 escalated: bool = False, logged: Mapping[str, int] | None = None) -> Table:
    """One row per split. `keys`: its key columns; `escalated`: add the share each sends to the frontier;
    `logged`: add how many calls each had in the log."""
    table = Table(title=title)
    for column in keys:
        table.add_column(column)
    optional = (("to frontier",) if escalated else ()) + (("as logged",) if logged else ())
    for column in ("calls", "share", *optional, "projected cost"):
        table.add_column(column, justify="right")
    for split in splits:
        cells = [split.route or "", split.name] if len(keys) == 2 else [split.name]
        cells += [str(split.calls), f"{split.calls / report.calls:.1%}"]
        cells += [f"{split.frontier / split.calls:.1%}"] if escalated else []
        cells += [str(logged.get(split.name, 0))] if logged else []
        table.add_row(*cells, _money(split.cost))
    return table


def _cost_table(report: ReplayReport) -> Table:
    table = Table(title="projected cost")
    table.add_column("scenario")
    for column in ("frontier share", "cost", "candidate saves"):
        table.add_column(column, justify="right")
    table.add_row("candidate config", f"{report.frontier_share:.1%}", _money(report.candidate_cost), "")
    if report.logged:
        table.add_row("as logged", f"{report.logged_frontier_share:.1%}", _money(report.actual_cost),
                      _share(report.savings(report.actual_cost)))
    table.add_row("all frontier", "100.0%", _money(report.all_frontier_cost),
                  _share(report.savings(report.all_frontier_cost)))
    table.add_row("all miniature", "0.0%", _money(report.all_miniature_cost), "")  # the floor, not a baseline
    return table


def _promotion_table(report: ReplayReport) -> Table:
    """Each measured task promoted to its miniature, at its agreement and at the interval's lower bound."""
    table = Table(title="if promoted (shadow-measured agreement; the miniature's misses paid at the frontier)")
    table.add_column("task")
    table.add_column("miniature")
    for column in ("agreement (95%)", "calls", "as routed", "promoted", "promoted, low bound"):
        table.add_column(column, justify="right")
    for p in report.promotions:
        table.add_row(p.task, p.model, f"{p.agreement:.1%} ({p.interval[0]:.1%}-{p.interval[1]:.1%})", str(p.calls),
                      _money(p.candidate_cost), _money(p.promoted_cost), _money(p.promoted_cost_low))
    return table


def _money(cost: float | None) -> str:
    return "unpriced" if cost is None else f"{cost:,.6f}"  # per-call costs are fractions of a cent


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def write_plot(report: ReplayReport, path: Path) -> None:
    """Cost against the share of calls escalated by score, with the candidate, the log and both ends marked."""
    if not report.sweep:
        raise PlotUnavailable("no cost curve: " + ("; ".join(report.notes) or "no call was replayed"))
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("the plot needs matplotlib: pip install 'minigate[bench]'") from exc
    figure, axes = plt.subplots(figsize=(8, 5))
    axes.plot([p.frontier_share * 100 for p in report.sweep], [p.cost for p in report.sweep],
              label="escalate the highest scores first")
    ends = report.sweep[0], report.sweep[-1]
    axes.scatter([0, 100], [ends[0].cost, ends[1].cost], color="grey", zorder=3, label="all miniature / all frontier")
    if report.candidate_cost is not None:
        axes.scatter([report.frontier_share * 100], [report.candidate_cost], marker="*", s=200, color="red",
                     zorder=4, label="candidate config")
    if report.actual_cost is not None:
        axes.scatter([report.logged_frontier_share * 100], [report.actual_cost], marker="D", color="black",
                     zorder=4, label="as logged")
    axes.set(xlabel="calls sent to the frontier model (%)", ylabel="projected cost",
             title=f"Replay of {report.calls} calls: cost vs share escalated")
    axes.legend()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
