"""Promotions: which tasks a miniature serves, decided from measured agreement (S6), kept in a file.

`promotions.yaml` sits beside the config (minigate.config.promotions_path). `minigate tasks promote` / `tasks demote` and the gateway's
autopilot (`conversion.auto_promote`) write it, atomically (a new file renamed over the old); the
config loader reads it and puts one first-match rule per promotion at the head of its route:

    when: {task: NAME}  ->  use: MODEL, escalate_on: [...], escalate_to: the route's frontier,
                            shadow: the frontier, on a sample (the reverse shadow that keeps measuring it)

so a reload applies a promotion like any config edit, and deleting the file reverts them all. The
file also keeps the history of every change (who, when, why, on what evidence).

Decisions are pure functions over scorecards (router/scorecard.py): `gate` promotes only when the
Wilson lower bound of agreement clears the bar on enough verdicts; `review` demotes when the upper
bound falls under it, when the live escalation rate passes its limit, or when feedback drops. The gap
between the two bounds is the hysteresis: a task near the bar is neither promoted nor demoted, and a
demoted task waits `cooldown_s` before it may be promoted again.

>>> gate(Scorecard("t001", "mini", agree=198, n=200, interval=(0.964, 0.997)), Policy()).allowed
True
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from minigate.router.cascade import EscalationReason
from minigate.router.scorecard import Measured, Scorecard
from minigate.router.settings import Policy, RouteEntry, Rule, ShadowSpec

__all__ = ["Change", "Judgement", "Promotion", "PromotionError",
           "Promotions", "apply_promotions", "frontier_of", "gate", "load_promotions", "plan_promotion", "review",
           "save_promotions"]

_CHECKS: list[EscalationReason] = ["error", "timeout", "invalid_json", "invalid_tool_call", "empty"]


class PromotionError(ValueError):
    """A promotions file that can't be read, or a change that can't be made."""


class Promotion(BaseModel):
    """One task served by a miniature on one route."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str  # the task's name, as rules test it
    task_id: str
    model: str
    route: str
    escalate_to: str
    escalate_on: list[EscalationReason] = Field(default_factory=lambda: list(_CHECKS))
    shadow_sample: float = Field(0.1, gt=0, le=1)
    promoted_at: float
    agreement: float
    interval: tuple[float, float]
    n: int


class Change(BaseModel):
    """One entry of the history: a promotion or a demotion, by whom and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["promote", "demote"]
    task: str
    model: str
    at: float
    by: str
    reason: str


class Promotions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    promotions: list[Promotion] = Field(default_factory=list)
    history: list[Change] = Field(default_factory=list)

    def find(self, task: str) -> Promotion | None:
        return next((p for p in self.promotions if task in (p.task, p.task_id)), None)

    def demoted_at(self, task: str) -> float | None:
        """When the task was last demoted, if it was."""
        return max((c.at for c in self.history if c.action == "demote" and c.task == task), default=None)

    def promote(self, promotion: Promotion, by: str, reason: str) -> Promotions:
        kept = [p for p in self.promotions if p.task != promotion.task]
        change = Change(action="promote", task=promotion.task, model=promotion.model, at=promotion.promoted_at,
                        by=by, reason=reason)
        return Promotions(promotions=[*kept, promotion], history=[*self.history, change])

    def demote(self, task: str, by: str, reason: str, at: float | None = None) -> Promotions:
        current = self.find(task)
        if current is None:
            raise PromotionError(f"task {task!r} is not promoted (promoted: "
                                 f"{', '.join(p.task for p in self.promotions) or 'none'})")
        change = Change(action="demote", task=current.task, model=current.model, at=at or time.time(), by=by,
                        reason=reason)
        return Promotions(promotions=[p for p in self.promotions if p is not current], history=[*self.history, change])


@dataclass(frozen=True)
class Judgement:
    """Whether a change may be made, and the sentence that says why (or what is missing)."""

    allowed: bool
    reason: str


def gate(card: Scorecard | None, policy: Policy) -> Judgement:
    """May this miniature be promoted on this task? Says what is missing when not."""
    if card is None or card.n == 0:
        return Judgement(False, "no shadow verdicts yet: add `shadow: {model: MINIATURE, sample: ...}` to the rule "
                               "that serves the task, and let traffic run")
    low, high = card.interval
    measured = f"agreement {card.agree}/{card.n} = {card.agree / card.n:.1%} (95% interval {low:.1%}-{high:.1%})"
    missing = []
    if card.n < policy.min_samples:
        missing.append(f"{policy.min_samples - card.n} more verdicts (needs {policy.min_samples})")
    if low < policy.min_agreement:
        missing.append(f"a lower bound of at least {policy.min_agreement:.1%}")
    if missing:
        return Judgement(False, f"{measured}: needs {' and '.join(missing)}")
    return Judgement(True, measured)


def review(card: Scorecard | None, escalation_rate: float | None, policy: Policy) -> Judgement:
    """Should a promoted task go back to the frontier? `allowed` here means: demote it."""
    if escalation_rate is not None and escalation_rate > policy.max_escalation_rate:
        return Judgement(True, f"escalation rate {escalation_rate:.1%} is over {policy.max_escalation_rate:.1%}")
    if card is None:
        return Judgement(False, "no verdicts since promotion")
    if card.feedback_mean is not None and policy.min_feedback is not None and card.feedback_mean < policy.min_feedback:
        return Judgement(True, f"mean feedback {card.feedback_mean:.2f} is under {policy.min_feedback:.2f}")
    if card.n >= policy.demote_samples and card.interval[1] < policy.min_agreement:
        return Judgement(True, f"agreement {card.agree}/{card.n}: its upper bound {card.interval[1]:.1%} is under "
                              f"{policy.min_agreement:.1%}")
    return Judgement(False, "holding")


def plan_promotion(task: str, task_id: str, model: str, measured: Measured, policy: Policy, *,
                   routes: Mapping[str, RouteEntry], tiers: Mapping[str, str], route: str | None = None,
                   at: float | None = None) -> tuple[Promotion, str]:
    """The promotion of `task` to `model` and the gate's sentence, or PromotionError saying what is missing.

    The route is `route`, else the one most of the task's calls came through; the promotion escalates to
    that route's frontier model.
    """
    if tiers.get(model) != "miniature":
        raise PromotionError(f"{model!r} is not a miniature model of the config")
    card = measured.card(task_id, model)
    verdict = gate(card, policy)
    if not verdict.allowed or card is None:
        raise PromotionError(f"{task} -> {model} refused: {verdict.reason}")
    counts = measured.routes.get(task_id)
    chosen = route or (counts.most_common(1)[0][0] if counts else next(iter(routes)) if len(routes) == 1 else None)
    if chosen is None or chosen not in routes:
        raise PromotionError(f"no route {chosen!r} for the task: pass one (routes: {', '.join(sorted(routes))})")
    frontier = frontier_of(routes[chosen], tiers)
    if frontier is None:
        raise PromotionError(f"route {chosen!r} has no frontier model to escalate to: set its escalate_to")
    promotion = Promotion(task=task, task_id=task_id, model=model, route=chosen, escalate_to=frontier,
                          shadow_sample=policy.shadow_sample, promoted_at=at or time.time(),
                          agreement=round(card.agree / card.n, 4), interval=card.interval, n=card.n)
    return promotion, verdict.reason


def apply_promotions(routes: Mapping[str, RouteEntry], promotions: Promotions) -> dict[str, RouteEntry]:
    """The routes with each promotion's rule first (a route without `escalate_to` gets the promotion's)."""
    updated = dict(routes)
    for promotion in promotions.promotions:
        route = updated.get(promotion.route)
        if route is None:
            continue  # the route is gone from the config: the promotion waits, harmless, until it returns
        rule = Rule(name=f"promoted:{promotion.task}", when={"task": promotion.task}, use=promotion.model,
                    escalate_on=promotion.escalate_on,
                    shadow=ShadowSpec(model=promotion.escalate_to, sample=promotion.shadow_sample))
        updated[promotion.route] = route.model_copy(update={
            "rules": [rule, *route.rules], "escalate_to": route.escalate_to or promotion.escalate_to})
    return updated


def load_promotions(path: Path) -> Promotions:
    """The file's promotions; an absent file holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Promotions()
    try:
        return Promotions.model_validate(yaml.safe_load(text) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise PromotionError(f"{path}: {exc}") from exc


def save_promotions(promotions: Promotions, path: Path) -> None:
    """Write atomically: a reader (the gateway's reload) sees the old file or the new one, never half."""
    header = ("# Written by `minigate tasks promote` / `tasks demote` and the gateway's autopilot; the config\n"
              "# loader puts each promotion's rule first in its route. Delete an entry (or run `tasks demote`)\n"
              "# to send the task back to the frontier.\n")
    text = header + yaml.safe_dump(promotions.model_dump(mode="json"), sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=".promotions-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def frontier_of(route: RouteEntry, tiers: Mapping[str, str]) -> str | None:
    """The model a promoted task escalates to: the route's escalate_to, else its default when that is a frontier."""
    if route.escalate_to is not None:
        return route.escalate_to
    return route.default if tiers.get(route.default) == "frontier" else None
