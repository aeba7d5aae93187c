"""What a trial of bench/shadow's second half left behind, read back: verdicts, decisions, and when.

The autopilot's decisions are in the promotions file's history (`at`, and a reason that states the
agree/n it acted on); the shadow verdicts are in the call log, read through `GET /v1/minigate/calls`
with an analyst key. Replaying the policy's own `gate` / `review` over the verdicts in order says when
the statistics first allowed a change, apart from when the autopilot's next review made it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx

from minigate.router.agreement import wilson
from minigate.router.promotions import Change, Judgement
from minigate.router.scorecard import Scorecard
from shadow_fixtures import ANALYST_KEY, MINIATURE, TASK

__all__ = ["first_change", "first_crossing", "reaction_s", "shadow_verdicts", "stated_verdicts"]

_AGREEMENT = re.compile(r"agreement (\d+)/(\d+)")


def first_change(history: list[Change], action: str) -> Change | None:
    return next((change for change in history if change.action == action), None)


def stated_verdicts(change: Change | None) -> tuple[int, int] | None:
    found = _AGREEMENT.search(change.reason) if change is not None else None
    return (int(found.group(1)), int(found.group(2))) if found else None


def shadow_verdicts(base_url: str) -> list[tuple[float, str]]:
    """(started_at, verdict) of every shadow call that judged the miniature, oldest first."""
    found: list[tuple[float, str]] = []
    params: dict[str, Any] = {"kind": "shadows", "limit": 1000}
    headers = {"authorization": f"Bearer {ANALYST_KEY}"}
    while True:
        response = httpx.get(f"{base_url}/v1/minigate/calls", params=params, headers=headers, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"GET /v1/minigate/calls answered {response.status_code}: {response.text[:500]}")
        page = response.json()
        found += [(row["started_at"], row["verdict"]) for row in page["data"] if row["candidate"] == MINIATURE]
        if not page["next_cursor"]:
            return sorted(found)
        params["cursor"] = page["next_cursor"]


def first_crossing(verdicts: list[tuple[float, str]], since: float, until: float,
                   judged: Callable[[Scorecard], Judgement]) -> tuple[int, float] | None:
    """How many verdicts in [since, until) the policy had seen when `judged` first allowed the change, and
    when the shadow that gave the last of them started."""
    agree = n = 0
    for started_at, verdict in verdicts:
        if since <= started_at < until and verdict in ("agree", "disagree"):
            agree, n = agree + (verdict == "agree"), n + 1
            if judged(Scorecard(TASK, MINIATURE, agree, n, wilson(agree, n))).allowed:
                return n, started_at
    return None


def reaction_s(crossing: tuple[int, float] | None, change: Change | None) -> float | None:
    """Seconds from the shadow that let the change be made to the review that made it."""
    return round(change.at - crossing[1], 2) if crossing is not None and change is not None else None
