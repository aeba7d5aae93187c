"""Conversion candidates (S4): which tasks to hand to a miniature first, and what each would save.

A task is worth converting when it is frequent and costly (savings), and when a small model can
plausibly learn it: structured outputs (short labels, then JSON, then tool calls) before free text,
outputs that vary little in length, short prompts, and calls the current miniatures rarely escalate.
The ranking is transparent: fit in [0, 1] is a product of those factors, each reported, and the
order is projected monthly savings times fit. Prices come from the config's models.

>>> rates = CandidatePrices(frontier=Rate(2.0, 8.0), miniature=Rate(0.1, 0.4))
>>> rates.saving(prompt_tokens=1000, output_tokens=10)
0.001976
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from minigate.pricing import Rate
from minigate.router.catalogue import Catalogue, Task
from minigate.router.prices import PriceBook

if TYPE_CHECKING:
    from minigate.config import Config

__all__ = ["Candidate", "CandidatePrices", "TaskStats", "default_models", "rank_candidates"]

_DAYS_PER_MONTH = 30.0
# How readily a small model learns each kind of output: a closed label set is the easiest conversion,
# free text the hardest (its quality is also the hardest to check).
_STRUCTURE_FIT = {"label": 1.0, "json": 0.85, "tool_call": 0.8, "free_text": 0.45}
_UNKNOWN_STRUCTURE_FIT = 0.6
_SHORT_PROMPT = 1000  # tokens; longer prompts lower the fit, halving it by `_LONG_PROMPT`
_LONG_PROMPT = 8000


@dataclass(frozen=True, slots=True)
class CandidatePrices:
    frontier: Rate
    miniature: Rate

    def saving(self, prompt_tokens: int, output_tokens: int) -> float:
        """USD saved per call served by the miniature instead of the frontier model."""
        return round(self.frontier.cost(prompt_tokens, output_tokens) - self.miniature.cost(prompt_tokens, output_tokens), 9)


@dataclass(frozen=True, slots=True)
class TaskStats:
    """What the call log says about a task over a window (all optional: a catalogue alone also ranks)."""

    calls: int
    days: float
    escalated: int = 0
    miniature_calls: int = 0
    output_tokens: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class Candidate:
    task: Task
    monthly_calls: float
    monthly_savings: float | None  # None: a price is missing
    fit: float
    structure: float
    variability: float | None  # coefficient of variation of output tokens; None: unknown
    escalation_rate: float | None
    reason: str

    @property
    def value(self) -> float:
        return (self.monthly_savings or 0.0) * self.fit


def default_models(config: Config, catalogue: Catalogue, book: PriceBook) -> tuple[str | None, str | None]:
    """The models a conversion is priced between when none is named: the priced frontier model that served
    most of the catalogue's calls, and the cheapest priced miniature; None where the config prices none."""
    served = {model: calls for task in catalogue.tasks for model, calls in task.served_by.items()}
    priced = [(name, entry.tier) for name, entry in config.models.items() if name in book.models]
    frontiers = sorted((name for name, tier in priced if tier == "frontier"), key=lambda name: -served.get(name, 0))
    minis = sorted((name for name, tier in priced if tier == "miniature"),
                   key=lambda name: book.models[name].cost(1000, 100))
    return next(iter(frontiers), None), next(iter(minis), None)


def rank_candidates(catalogue: Catalogue, prices: CandidatePrices | None, *, period_days: float,
                    stats: Mapping[str, TaskStats] | None = None) -> list[Candidate]:
    """Every task, most valuable conversion first. `period_days`: the span the catalogue's counts cover."""
    found = [_candidate(task, prices, period_days, (stats or {}).get(task.id)) for task in catalogue.tasks]
    return sorted(found, key=lambda c: (c.value, c.monthly_calls), reverse=True)


def _candidate(task: Task, prices: CandidatePrices | None, period_days: float, stats: TaskStats | None) -> Candidate:
    calls, days = (stats.calls, stats.days) if stats and stats.days > 0 else (task.size, period_days)
    monthly = calls * _DAYS_PER_MONTH / max(days, 1e-9)
    prompt, output = task.prompt_tokens or 0, task.output_tokens or 0
    savings = monthly * prices.saving(prompt, output) if prices else None
    structure = _STRUCTURE_FIT.get(task.output_kind or "", _UNKNOWN_STRUCTURE_FIT)
    length = 1.0 if prompt <= _SHORT_PROMPT else max(0.5, 1.0 - 0.5 * (prompt - _SHORT_PROMPT) / (_LONG_PROMPT - _SHORT_PROMPT))
    variability = _variation(stats.output_tokens) if stats else None
    steady = 1.0 if variability is None else 1.0 / (1.0 + variability)
    escalation = stats.escalated / stats.miniature_calls if stats and stats.miniature_calls else None
    fit = structure * length * steady * (1.0 - (escalation or 0.0))
    return Candidate(task, monthly, savings, round(fit, 3), structure, variability, escalation,
                     _reason(task, monthly, savings, prompt, variability, escalation))


def _variation(values: Sequence[int]) -> float | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if mean else None


def _reason(task: Task, monthly: float, savings: float | None, prompt: int, variability: float | None,
            escalation: float | None) -> str:
    kind = {"label": "short labels", "json": "JSON output", "tool_call": "tool calls",
            "free_text": "free text"}.get(task.output_kind or "", "output kind unknown")
    parts = [f"{monthly:,.0f} calls/month", kind, f"{prompt:,} prompt tokens"]
    if variability is not None:
        parts.append("steady output length" if variability < 0.5 else "output length varies")
    if escalation is not None:
        parts.append(f"{escalation:.0%} of miniature calls escalated")
    saves = "unpriced" if savings is None else f"saves ${savings:,.2f}/month"
    return f"{', '.join(parts)}: {saves}"


async def read_task_stats(store_url: str, *, since: float, until: float) -> dict[str, TaskStats]:
    """Per task id, what the call log holds between `since` and `until` (metadata only: no payload is read)."""
    from minigate.logger.reader import CallReader
    from minigate.logger.stores import CallQuery, decode_cursor, open_store

    store = await open_store(store_url)
    counts: dict[str, list[int]] = {}  # task -> [calls, escalated, miniature calls]
    outputs: dict[str, list[int]] = {}
    try:
        reader, query = CallReader(store, None), CallQuery(since=since, until=until, limit=1000)
        while True:
            rows, cursor = await reader.page(query, payloads=False, actor="tasks candidates")
            for row in rows:
                tally = counts.setdefault(row["task"], [0, 0, 0])
                tally[0] += 1
                tally[1] += row["escalated"] is not None
                tally[2] += row["tier"] == "miniature" or row["escalated"] is not None
                if row["output_tokens"] is not None:
                    outputs.setdefault(row["task"], []).append(row["output_tokens"])
            if cursor is None:
                break
            query = CallQuery(since=since, until=until, after=decode_cursor(cursor), limit=1000)
    finally:
        await store.close()
    days = (until - since) / 86400
    return {task: TaskStats(calls, days, escalated, miniature, outputs.get(task, []))
            for task, (calls, escalated, miniature) in counts.items()}
