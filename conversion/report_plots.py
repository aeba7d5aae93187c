"""The savings report's PNG plots, drawn with matplotlib's Agg canvas.

matplotlib is imported only here and only when a plot is drawn, so neither the gateway nor any other
command loads it. Figures are built on `matplotlib.figure.Figure` directly rather than through pyplot:
no global figure registry, nothing to close.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from minigate.conversion.report import Group, Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOTS", "PlotUnavailable", "write_plots"]

ACTUAL, COUNTERFACTUAL, SAVED, ERROR = "#1f6fb4", "#a8adb3", "#2e9e4f", "#c0392b"
TIERS = {"miniature": "#2e9e4f", "frontier": "#e07b24"}
_OTHER = "#7f7f7f"
_TOP = 12  # rows per bar chart; the tables hold the rest
# File name -> what the plot shows (its alt text on the page).
PLOTS = {
    "spend.png": "Spend and savings over time: actual spend against what the frontier default would have cost",
    "breakdown.png": "Actual and would-have-spent by model and by task",
    "routing.png": "Calls by tier and by routing rule",
    "escalations.png": "Escalations to the frontier model by reason",
    "latency.png": "Latency and time to first token percentiles by model",
    "errors.png": "Error rate by model and calls by status",
}


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def write_plots(report: Report, directory: Path) -> list[str]:
    """Draw every plot the report has data for into `directory`; returns their file names."""
    Figure = _figure_class()
    drawn = []
    for name, (draw, rows) in _DRAWERS.items():
        height = 4.0 if rows is None else 1.3 + 0.42 * min(_TOP, max(3, rows(report)))  # bar charts grow with bars
        figure = Figure(figsize=(10.4, height), layout="constrained")
        if draw(report, figure):
            figure.savefig(directory / name, dpi=100)
            drawn.append(name)
    return drawn


def _figure_class() -> type[Figure]:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable("the report's plots need matplotlib: pip install 'minigate[report]'") from exc
    return Figure


def _spend(report: Report, figure: Figure) -> bool:
    cumulative, per_bucket = figure.subplots(1, 2)
    times = [datetime.fromtimestamp(b.start, timezone.utc) for b in report.timeline]
    # Running totals at each bucket's end, from zero at the first one's start.
    ends = times[:1] + [_shift(b.start, report.bucket_s / 86400) for b in report.timeline]
    actual = _running([b.cost_usd for b in report.timeline])
    counterfactual = _running([b.counterfactual_usd for b in report.timeline])
    cumulative.plot(ends, counterfactual, color=COUNTERFACTUAL, label="would have spent")
    cumulative.plot(ends, actual, color=ACTUAL, label="spent")
    cumulative.fill_between(ends, actual, counterfactual, color=SAVED, alpha=0.25, label="saved")
    cumulative.set(title="Cumulative spend (USD)", ylim=(0, None))
    cumulative.legend(loc="upper left")
    width = report.bucket_s / 86400 * 0.4  # bar widths on a date axis are in days
    offset = [t.timestamp() for t in times]
    per_bucket.bar([_shift(t, -width / 2) for t in offset], [b.counterfactual_usd for b in report.timeline],
                   width=width, color=COUNTERFACTUAL, label="would have spent")
    per_bucket.bar([_shift(t, width / 2) for t in offset], [b.cost_usd for b in report.timeline], width=width,
                   color=ACTUAL, label="spent")
    per_bucket.set(title=f"Spend per {_duration(report.bucket_s)} (USD)")
    per_bucket.legend(loc="upper left")
    for axes in (cumulative, per_bucket):
        _date_axis(axes)
    return True


def _breakdown(report: Report, figure: Figure) -> bool:
    models, tasks = figure.subplots(1, 2)
    _money_bars(models, "By model", [f"{g.name} ({g.detail})" for g in report.models[:_TOP]], report.models[:_TOP])
    _money_bars(tasks, "By task", [f"{g.name} {g.detail}".strip() for g in report.tasks[:_TOP]], report.tasks[:_TOP])
    return True


def _routing(report: Report, figure: Figure) -> bool:
    tiers, rules = figure.subplots(1, 2, width_ratios=(1, 2))
    tiers.bar([g.name for g in report.tiers], [g.calls for g in report.tiers],
              color=[TIERS.get(g.name, _OTHER) for g in report.tiers])
    for index, group in enumerate(report.tiers):
        tiers.annotate(f"{group.share:.0%}", (index, group.calls), ha="center", va="bottom")
    tiers.margins(y=0.12)
    tiers.set(title="Calls by tier", ylabel="calls")
    shown = report.rules[:_TOP]
    _barh(rules, [f"{g.detail}: {g.name}" for g in shown], [g.calls for g in shown], "Calls by rule (route: rule)")
    return True


def _escalations(report: Report, figure: Figure) -> bool:
    if not report.escalations:
        return False
    axes = figure.subplots()
    shown = report.escalations[:_TOP]
    _barh(axes, [c.name for c in shown], [c.count for c in shown], "Escalations by reason", color=TIERS["frontier"])
    return True


def _latency(report: Report, figure: Figure) -> bool:
    has_ttft = any(row.ttft_calls for row in report.latency)
    panels = figure.subplots(1, 2 if has_ttft else 1, squeeze=False)[0]
    labels = [f"{row.model} ({row.tier})" for row in report.latency]
    _percentile_bars(panels[0], "Latency (s)", labels,
                     [(row.p50_s, row.p95_s, row.p99_s) for row in report.latency])
    if has_ttft:
        _percentile_bars(panels[1], "Time to first byte of the reply (s)", labels,
                         [(row.ttft_p50_s or 0.0, row.ttft_p95_s or 0.0, row.ttft_p99_s or 0.0)
                          for row in report.latency])
    return True


def _errors(report: Report, figure: Figure) -> bool:
    by_model, over_time = figure.subplots(1, 2)
    shown = report.models[:_TOP]
    _barh(by_model, [f"{g.name} ({g.detail})" for g in shown], [g.error_rate * 100 for g in shown],
          "Error rate by model (status >= 400)", color=ERROR, unit="%")
    over_time.bar([datetime.fromtimestamp(b.start + report.bucket_s / 2, timezone.utc) for b in report.timeline],
                  [b.errors / b.calls * 100 for b in report.timeline], width=report.bucket_s / 86400 * 0.8, color=ERROR)
    over_time.set(title=f"Error rate per {_duration(report.bucket_s)} (%)", ylim=(0, None))
    _date_axis(over_time)
    return True


# File name -> how to draw it, and how many bars it stacks (None: a time series, fixed height).
_DRAWERS: dict[str, tuple[Callable[[Report, Figure], bool], Callable[[Report], int] | None]] = {
    "spend.png": (_spend, None),
    "breakdown.png": (_breakdown, lambda r: max(len(r.models), len(r.tasks))),
    "routing.png": (_routing, lambda r: len(r.rules) + 1),
    "escalations.png": (_escalations, lambda r: len(r.escalations)),
    "latency.png": (_latency, lambda r: len(r.latency) * 2),
    "errors.png": (_errors, lambda r: max(len(r.models), 6)),
}


def _money_bars(axes: Axes, title: str, labels: list[str], groups: Sequence[Group]) -> None:
    positions = range(len(groups))
    axes.barh([p - 0.2 for p in positions], [g.counterfactual_usd for g in groups], height=0.4, color=COUNTERFACTUAL,
              label="would have spent")
    axes.barh([p + 0.2 for p in positions], [g.cost_usd for g in groups], height=0.4, color=ACTUAL, label="spent")
    axes.set_yticks(list(positions), labels)
    axes.invert_yaxis()
    axes.set(title=f"{title} (USD)")
    _legend_below(axes)


def _barh(axes: Axes, labels: list[str], values: list[float], title: str, *, color: str | list[str] = ACTUAL,
          unit: str = "") -> None:
    positions = list(range(len(labels)))
    axes.barh(positions, values, color=color)
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()
    axes.set(title=title)
    for position, value in zip(positions, values, strict=True):
        label = f"{value:,.0f}{unit}" if value == int(value) else f"{value:,.2f}{unit}"
        axes.annotate(label, (value, position), xytext=(3, 0), textcoords="offset points", va="center")
    axes.margins(x=0.15)


def _percentile_bars(axes: Axes, title: str, labels: list[str], values: list[tuple[float, float, float]]) -> None:
    positions = range(len(labels))
    for index, (name, shade) in enumerate((("p50", "#9ecae1"), ("p95", "#4292c6"), ("p99", "#08519c"))):
        axes.barh([p + (index - 1) * 0.27 for p in positions], [v[index] for v in values], height=0.27, color=shade,
                  label=name)
    axes.set_yticks(list(positions), labels)
    axes.invert_yaxis()
    axes.set(title=title)
    _legend_below(axes)


def _legend_below(axes: Axes) -> None:
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3, frameon=False)


def _date_axis(axes: Axes) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(tz=timezone.utc)  # type: ignore[no-untyped-call]  # matplotlib leaves these untyped
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=timezone.utc))  # type: ignore[no-untyped-call]


def _running(values: list[float]) -> list[float]:
    total, found = 0.0, [0.0]
    for value in values:
        total += value
        found.append(total)
    return found


def _shift(timestamp: float, days: float) -> datetime:
    return datetime.fromtimestamp(timestamp + days * 86400, timezone.utc)


def _duration(seconds: int) -> str:
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return "second" if seconds == 1 else f"{seconds} seconds"
