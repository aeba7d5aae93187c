"""Scorecards: how good each miniature is on each task, measured from the call log (S6).

Pure code over call-log rows (clients' calls and shadow calls, as `CallQuery(kind="all")` reads them)
and feedback; the gateway's `GET /v1/minigate/scorecards`, `minigate tasks scorecard`, promotion and
demotion all read the same figures:

- agreement: shadow verdicts on (task, miniature), `agree / (agree + disagree)`, with its Wilson 95%
  interval; `unjudged` (free text with no embedding model) and `error` (the shadow call failed) are
  counted apart, never as either;
- latency p50/p95 and cost per call of the miniature's own calls (served or shadow) on the task;
- feedback: the mean score clients gave the task's calls the miniature served;
- projected monthly savings at that quality: the task's monthly calls (from the window's volume) times
  `agreement x frontier cost per call - miniature cost per call`. The calls a miniature would get wrong
  are priced as still going to the frontier: a 60% miniature saves little however cheap it is.

>>> rows = [{"request_id": "a", "task": "t1", "model": "gpt-4.1", "tier": "frontier", "shadow_of": None,
...          "verdict": None, "candidate": None, "latency_s": 1.0, "cost_usd": 0.002},
...         {"request_id": "b", "task": "t1", "model": "mini", "tier": "miniature", "shadow_of": "a",
...          "verdict": "agree", "candidate": "mini", "latency_s": 0.1, "cost_usd": 0.0001}]
>>> [card] = scorecards(rows, {}, window_s=86400.0)
>>> card.model, card.agree, card.n, card.interval
('mini', 1, 1, (0.207, 1.0))
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from minigate.router.agreement import wilson

__all__ = ["MONTH_S", "Measured", "Scorecard", "measure", "scorecards"]

MONTH_S = 30 * 86400.0


@dataclass(frozen=True)
class Scorecard:
    task: str
    model: str  # the miniature judged
    agree: int
    n: int  # verdicts that judged it: agree + disagree
    interval: tuple[float, float]  # Wilson 95% of the agreement
    unjudged: int = 0
    errors: int = 0
    feedback_n: int = 0
    feedback_mean: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    cost_per_call_usd: float | None = None
    frontier_cost_per_call_usd: float | None = None
    calls_per_month: float = 0.0
    monthly_savings_usd: float | None = None

    @property
    def agreement(self) -> float | None:
        return self.agree / self.n if self.n else None

    def document(self) -> dict[str, Any]:
        """The JSON shape (`--json`, the HTTP API)."""
        return {**asdict(self), "agreement": None if self.agreement is None else round(self.agreement, 4),
                "interval": list(self.interval)}


@dataclass
class _Tally:
    verdicts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    feedback: list[float] = field(default_factory=list)


def scorecards(rows: Iterable[Mapping[str, Any]], feedback: Mapping[str, Sequence[float]], *,
               window_s: float) -> list[Scorecard]:
    """One scorecard per (task, miniature) with a verdict or feedback, most judged first.

    `feedback` maps request ids to the scores given; `window_s` is the span the rows cover, what the
    monthly volume is projected from.
    """
    tallies: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    frontier_costs: dict[str, list[float]] = defaultdict(list)
    volume: dict[str, int] = defaultdict(int)
    miniature_rows: list[Mapping[str, Any]] = []
    for row in rows:
        task = row["task"]
        if row.get("shadow_of") is None:
            volume[task] += 1
        if row.get("verdict") is not None and row.get("candidate") is not None:
            tallies[(task, row["candidate"])].verdicts[row["verdict"]] += 1
        if row["tier"] == "frontier" and row.get("cost_usd") is not None:  # an escalation's discarded reply aside
            frontier_costs[task].append(row["cost_usd"] - (row.get("wasted_cost_usd") or 0.0))
        elif row["tier"] == "miniature":
            miniature_rows.append(row)
    for row in miniature_rows:
        tally = tallies[(row["task"], row["model"])]
        tally.latencies.append(row["latency_s"])
        if row.get("cost_usd") is not None:
            tally.costs.append(row["cost_usd"])
        if row.get("shadow_of") is None:
            tally.feedback += feedback.get(row["request_id"], ())
    cards = [_card(task, model, tally, frontier_costs.get(task), volume[task] * MONTH_S / window_s)
             for (task, model), tally in tallies.items() if sum(tally.verdicts.values()) or tally.feedback]
    return sorted(cards, key=lambda card: (-card.n, card.task, card.model))


@dataclass(frozen=True)
class Measured:
    """What the log says over a window: the scorecards, and each task's routes by client calls (where a
    promotion goes) and, per rule, its calls and escalations (what demotion watches)."""

    cards: list[Scorecard]
    routes: dict[str, Counter[str]]  # task id -> route -> client calls
    rules: dict[str, tuple[int, int]]  # rule name -> (client calls, escalated)

    def card(self, task_id: str, model: str) -> Scorecard | None:
        return next((c for c in self.cards if c.task == task_id and c.model == model), None)


def measure(rows: Sequence[Mapping[str, Any]], feedback: Mapping[str, Sequence[float]], *,
            window_s: float) -> Measured:
    """Scorecards, routes and rules' escalations of call-log rows (calls and shadows) over `window_s`."""
    routes: dict[str, Counter[str]] = defaultdict(Counter)
    rules: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        if row.get("shadow_of") is None:
            routes[row["task"]][row["route"]] += 1
            tally = rules[row["rule"]]
            tally[0] += 1
            tally[1] += row.get("escalated") is not None
    return Measured(scorecards(rows, feedback, window_s=window_s), dict(routes),
                    {rule: (calls, escalated) for rule, (calls, escalated) in rules.items()})


def _card(task: str, model: str, tally: _Tally, frontier_costs: list[float] | None, per_month: float) -> Scorecard:
    agree, disagree = tally.verdicts.get("agree", 0), tally.verdicts.get("disagree", 0)
    n = agree + disagree
    cost = statistics.fmean(tally.costs) if tally.costs else None
    frontier = statistics.fmean(frontier_costs) if frontier_costs else None
    savings = None
    if n and cost is not None and frontier is not None:
        savings = round(per_month * (agree / n * frontier - cost), 2)
    return Scorecard(
        task, model, agree, n, wilson(agree, n), tally.verdicts.get("unjudged", 0), tally.verdicts.get("error", 0),
        len(tally.feedback), round(statistics.fmean(tally.feedback), 4) if tally.feedback else None,
        _quantile(tally.latencies, 0.5), _quantile(tally.latencies, 0.95),
        None if cost is None else round(cost, 8), None if frontier is None else round(frontier, 8),
        round(per_month, 1), savings,
    )


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)
