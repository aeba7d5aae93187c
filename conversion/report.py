"""The savings report's figures, from call-log metadata rows: plain values, no IO.

`ReportBuilder` takes rows page by page (as `metadata_pages.read_metadata` hands them over) and keeps
running tallies, so a report over millions of calls holds per-group sums, one time series of at most
`_MAX_BUCKETS` buckets and the latency samples, never the rows themselves.

Money follows the call record: `cost_usd` is what a call cost at the served model's price, and
`counterfactual_cost_usd` what it would have cost without minigate (the route's frontier model, or the
model name asked for on a miniature-only route; a miniature's reply at the task's median frontier length;
docs/observability.md). An escalated call's cost includes the miniature's discarded reply. Savings
are Σ counterfactual − Σ cost; calls missing either price count as zero in that sum and are named in
the notes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from minigate.router.scorecard import Scorecard

__all__ = ["Bucket", "Count", "Group", "Headline", "Latency", "Report", "ReportBuilder", "headline_rows",
           "money", "percent", "report_document"]

_MONTH_S = 30 * 86400
_MIN_PROJECTED_S = 3600  # a month extrapolated from minutes of traffic says more about noise than spend
# Time-series steps, each a multiple of the one before, so finer buckets merge exactly into coarser ones.
_STEPS = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
_MAX_BUCKETS = 2000  # while reading; the report itself shows at most _SHOWN_BUCKETS
_SHOWN_BUCKETS = 60


@dataclass(frozen=True, slots=True)
class Group:
    """One row of a per-task, per-model, per-tier or per-rule table; `detail` is the task's name, the
    model's tier or the rule's route."""

    name: str
    detail: str
    calls: int
    share: float  # of all calls
    input_tokens: int
    output_tokens: int
    cost_usd: float
    counterfactual_usd: float
    savings_usd: float
    savings_rate: float | None  # savings / counterfactual; None when nothing was priced
    escalated: int
    errors: int  # status >= 400, as the client saw it
    error_rate: float
    # Tasks only: the shadow-measured agreement of the miniature judged most on the task (router/scorecard.py).
    judged: str | None = None
    agreement: float | None = None
    agreement_interval: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Bucket:
    start: float  # unix seconds
    calls: int
    cost_usd: float
    counterfactual_usd: float
    savings_usd: float
    errors: int


@dataclass(frozen=True, slots=True)
class Count:
    name: str
    count: int
    share: float


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of one served model; TTFT only over the calls that have one (streamed replies)."""

    model: str
    tier: str
    calls: int
    p50_s: float
    p95_s: float
    p99_s: float
    ttft_calls: int
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None


@dataclass(frozen=True, slots=True)
class Headline:
    calls: int
    start: float  # the window: --since/--until when given, else the first and last call
    end: float
    cost_usd: float
    counterfactual_usd: float
    savings_usd: float
    savings_rate: float | None
    miniature_share: float  # of calls served by a miniature
    miniature_token_share: float  # of input + output tokens
    escalation_rate: float | None  # escalated / calls routed to a miniature
    error_rate: float
    projected_monthly_cost_usd: float | None  # at this window's rate, over 30 days; None for a window under an hour
    projected_monthly_savings_usd: float | None
    unpriced_calls: int  # no cost_usd
    no_counterfactual_calls: int  # no counterfactual_cost_usd


@dataclass(frozen=True, slots=True)
class Report:
    headline: Headline
    bucket_s: int
    timeline: list[Bucket]
    tasks: list[Group]
    models: list[Group]
    tiers: list[Group]
    rules: list[Group]
    escalations: list[Count]  # share: of escalated calls
    statuses: list[Count]  # share: of all calls
    latency: list[Latency]
    quality: list[Scorecard] = field(default_factory=list)  # per task and miniature, from shadow calls


@dataclass(slots=True)
class _Tally:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    counterfactual: float = 0.0
    escalated: int = 0
    errors: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        self.calls += 1
        self.input_tokens += row["input_tokens"] or 0
        self.output_tokens += row["output_tokens"] or 0
        self.cost += row["cost_usd"] or 0.0
        self.counterfactual += row["counterfactual_cost_usd"] or 0.0
        self.escalated += row["escalated"] is not None
        self.errors += row["status"] >= 400

    def merge(self, other: _Tally) -> None:
        for name in _Tally.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class _Samples:
    latency: array[float] = field(default_factory=lambda: array("d"))
    ttft: array[float] = field(default_factory=lambda: array("d"))


class ReportBuilder:
    """Running tallies over metadata rows; `finish` turns them into a `Report`.

    >>> builder = ReportBuilder({"t001": "refund-request"})
    >>> builder.add(rows)  # doctest: +SKIP
    >>> report = builder.finish(since=None, until=None)  # doctest: +SKIP
    """

    def __init__(self, task_names: Mapping[str, str] | None = None) -> None:
        self.task_names = dict(task_names or {})
        self.total = _Tally()
        self.groups: dict[str, dict[tuple[str, str], _Tally]] = {k: {} for k in ("tasks", "models", "tiers", "rules")}
        self.escalations: dict[str, int] = {}
        self.statuses: dict[int, int] = {}
        self.samples: dict[tuple[str, str], _Samples] = {}
        self.step_index = 0
        self.buckets: dict[int, _Tally] = {}
        self.first, self.last = math.inf, -math.inf
        self.miniature_calls = self.miniature_tokens = self.routed_to_miniature = 0
        self.unpriced = self.no_counterfactual = 0

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._add(row)
        if len(self.buckets) > _MAX_BUCKETS:
            self._coarsen(self.step_index + 1)

    def _add(self, row: Mapping[str, Any]) -> None:
        self.total.add(row)
        task, tier = row["task"], row["tier"]
        for kind, key in (("tasks", (task, self.task_names.get(task, ""))), ("models", (row["model"], tier)),
                          ("tiers", (tier, "")), ("rules", (row["rule"], row["route"]))):
            self.groups[kind].setdefault(key, _Tally()).add(row)
        started = row["started_at"]
        self.first, self.last = min(self.first, started), max(self.last, started)
        self.buckets.setdefault(int(started // _STEPS[self.step_index]), _Tally()).add(row)
        samples = self.samples.setdefault((row["model"], tier), _Samples())
        samples.latency.append(row["latency_s"])
        if row["ttft_s"] is not None:
            samples.ttft.append(row["ttft_s"])
        self.statuses[row["status"]] = self.statuses.get(row["status"], 0) + 1
        if row["escalated"] is not None:
            self.escalations[row["escalated"]] = self.escalations.get(row["escalated"], 0) + 1
        if tier == "miniature":
            self.miniature_calls += 1
            self.miniature_tokens += (row["input_tokens"] or 0) + (row["output_tokens"] or 0)
        self.routed_to_miniature += tier == "miniature" or row["escalated"] is not None
        self.unpriced += row["cost_usd"] is None
        self.no_counterfactual += row["counterfactual_cost_usd"] is None

    def _coarsen(self, index: int) -> None:
        ratio = _STEPS[index] // _STEPS[self.step_index]
        merged: dict[int, _Tally] = {}
        for key, tally in self.buckets.items():
            merged.setdefault(key // ratio, _Tally()).merge(tally)
        self.buckets, self.step_index = merged, index

    def finish(self, *, since: float | None, until: float | None, quality: list[Scorecard] | None = None) -> Report | None:
        """The report, or None when no call was read; `quality` adds the scorecards and each task's agreement."""
        if not self.total.calls:
            return None
        start = since if since is not None else self.first
        end = until if until is not None else self.last
        index = next((i for i in range(self.step_index, len(_STEPS)) if (end - start) / _STEPS[i] < _SHOWN_BUCKETS),
                     len(_STEPS) - 1)
        self._coarsen(index)
        tasks, models, tiers, rules = self._tables()
        cards = quality or []
        return Report(self._headline(start, end), _STEPS[index], self._timeline(), _with_quality(tasks, cards), models,
                      tiers, rules, self._counts(self.escalations, self.total.escalated), self._statuses(),
                      self._latency(), cards)

    def _headline(self, start: float, end: float) -> Headline:
        total = self.total
        tokens = total.input_tokens + total.output_tokens
        savings = total.counterfactual - total.cost
        scale = _MONTH_S / (end - start) if end - start >= _MIN_PROJECTED_S else None
        return Headline(
            total.calls, start, end, total.cost, total.counterfactual, savings, _rate(savings, total.counterfactual),
            self.miniature_calls / total.calls, self.miniature_tokens / tokens if tokens else 0.0,
            total.escalated / self.routed_to_miniature if self.routed_to_miniature else None,
            total.errors / total.calls, None if scale is None else total.cost * scale,
            None if scale is None else savings * scale, self.unpriced, self.no_counterfactual,
        )  # fmt: skip

    def _timeline(self) -> list[Bucket]:
        step = _STEPS[self.step_index]
        return [Bucket(key * step, t.calls, t.cost, t.counterfactual, t.counterfactual - t.cost, t.errors)
                for key, t in sorted(self.buckets.items())]

    def _tables(self) -> tuple[list[Group], list[Group], list[Group], list[Group]]:
        def rows(kind: str) -> list[Group]:
            calls = self.total.calls
            found = [_group(name, detail, tally, calls) for (name, detail), tally in self.groups[kind].items()]
            return sorted(found, key=lambda g: (-g.counterfactual_usd, -g.calls, g.name))

        return rows("tasks"), rows("models"), rows("tiers"), rows("rules")

    def _statuses(self) -> list[Count]:
        return [Count(str(status), n, n / self.total.calls) for status, n in sorted(self.statuses.items())]

    @staticmethod
    def _counts(counts: Mapping[str, int], total: int) -> list[Count]:
        return [Count(name, n, n / total) for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]

    def _latency(self) -> list[Latency]:
        found = []
        for (model, tier), samples in sorted(self.samples.items(), key=lambda item: (item[0][1], item[0][0])):
            latency, ttft = sorted(samples.latency), sorted(samples.ttft)
            p50, p95, p99 = (_percentile(latency, q) for q in (50, 95, 99))
            t50, t95, t99 = (_percentile(ttft, q) if ttft else None for q in (50, 95, 99))
            found.append(Latency(model, tier, len(latency), p50, p95, p99, len(ttft), t50, t95, t99))
        return found


def _group(name: str, detail: str, tally: _Tally, calls: int) -> Group:
    savings = tally.counterfactual - tally.cost
    return Group(name, detail, tally.calls, tally.calls / calls, tally.input_tokens, tally.output_tokens, tally.cost,
                 tally.counterfactual, savings, _rate(savings, tally.counterfactual), tally.escalated, tally.errors,
                 tally.errors / tally.calls)


def _with_quality(tasks: list[Group], cards: list[Scorecard]) -> list[Group]:
    """Each task's row with the agreement of the miniature judged most often on it."""
    best: dict[str, Scorecard] = {}
    for card in cards:
        if card.n and (card.task not in best or card.n > best[card.task].n):
            best[card.task] = card
    return [replace(group, judged=found.model, agreement=found.agreement, agreement_interval=found.interval)
            if (found := best.get(group.name)) is not None else group for group in tasks]


def _rate(savings: float, counterfactual: float) -> float | None:
    return savings / counterfactual if counterfactual > 0 else None


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on an ascending, non-empty list."""
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def report_document(report: Report) -> dict[str, Any]:
    """The report as JSON-ready values (`--json`)."""
    return asdict(report)


def money(value: float | None) -> str:
    """Dollars as people read them: cents for large sums, six decimals for the fractions of a cent calls cost."""
    if value is None:
        return "-"
    size = abs(value)
    digits = 2 if size >= 1 or size == 0 else 4 if size >= 0.01 else 6
    return f"{'-' if value < 0 else ''}${size:,.{digits}f}"


def headline_rows(report: Report) -> list[tuple[str, str]]:
    """The headline figures, labelled and formatted once for both the page and the terminal."""
    h = report.headline
    period = f"{_when(h.start)} to {_when(h.end)}"
    return [
        ("spent", money(h.cost_usd)),
        ("would have spent (all on the frontier default)", money(h.counterfactual_usd)),
        ("saved", f"{money(h.savings_usd)} ({percent(h.savings_rate)})"),
        ("served by miniatures",
         f"{percent(h.miniature_share)} of calls, {percent(h.miniature_token_share)} of tokens"),
        ("projected spend per 30 days", _projected(h.projected_monthly_cost_usd)),
        ("projected savings per 30 days", _projected(h.projected_monthly_savings_usd)),
        ("calls", f"{h.calls:,} ({period})"),
        ("escalated", f"{percent(h.escalation_rate)} of calls routed to a miniature"),
        ("errors", f"{percent(h.error_rate)} of calls (status 400 or above)"),
    ]


def _projected(value: float | None) -> str:
    return f"{money(value)} at this rate" if value is not None else "- (window under an hour)"


def percent(value: float | None) -> str:
    """A share as people read it; "-" when there is none."""
    return "-" if value is None else f"{value:.1%}"


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
