"""What promoting each measured task would do to a replay's traffic: `minigate replay`'s promotion table.

A task with a scorecard (router/scorecard.py: its miniature's agreement with the frontier, measured by
shadow calls) is projected as promoted: each of its calls costs the miniature's price, and the share the
miniature gets wrong (1 - agreement) is paid again at the frontier, as an escalation or a retry would be.
The lower end of the agreement's interval gives the cautious figure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from minigate.pricing import priced_total
from minigate.router.scorecard import Scorecard

__all__ = ["Projection", "project_promotions"]

Priced = tuple[str, float | None, float | None, tuple[int, int]]  # task name, candidate cost, frontier cost, tokens


@dataclass(frozen=True, slots=True)
class Projection:
    task: str
    model: str
    agreement: float
    interval: tuple[float, float]
    calls: int
    candidate_cost: float | None  # the task's calls as the candidate config routes them
    promoted_cost: float | None  # promoted, at the measured agreement
    promoted_cost_low: float | None  # promoted, at the interval's lower bound


def project_promotions(calls: Sequence[Priced], cards: Sequence[Scorecard], names: Mapping[str, str],
                       cost: Callable[[str, tuple[int, int]], float | None]) -> list[Projection]:
    """One projection per scorecard with verdicts whose task has calls in the replay.

    >>> card = Scorecard("t001", "mini", agree=9, n=10, interval=(0.6, 0.98))
    >>> [p.promoted_cost for p in project_promotions([("intents", 1.0, 1.0, (100, 10))], [card], {"t001": "intents"},
    ...                                              lambda model, tokens: 0.1)]
    [0.2]
    """
    found = []
    for card in cards:
        if not card.n:
            continue
        name = names.get(card.task, card.task)
        mine = [call for call in calls if call[0] == name]
        if not mine:
            continue
        agreement = card.agree / card.n
        found.append(Projection(name, card.model, round(agreement, 4), card.interval, len(mine),
                                _rounded(call[1] for call in mine), _promoted(mine, card.model, agreement, cost),
                                _promoted(mine, card.model, card.interval[0], cost)))
    return found


def _promoted(calls: Sequence[Priced], model: str, agreement: float,
              cost: Callable[[str, tuple[int, int]], float | None]) -> float | None:
    return _rounded(_one(cost(model, tokens), frontier, agreement) for _, _, frontier, tokens in calls)


def _one(miniature: float | None, frontier: float | None, agreement: float) -> float | None:
    return None if miniature is None or frontier is None else miniature + (1 - agreement) * frontier


def _rounded(values: Iterable[float | None]) -> float | None:
    total = priced_total(values)
    return None if total is None else round(total, 8)
