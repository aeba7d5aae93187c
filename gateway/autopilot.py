"""The conversion autopilot: promotes and demotes tasks by itself (`conversion.auto_promote` / `auto_demote`).

Every `conversion.interval_s` it reads the call log's recent outcomes (router/scorecard.py) and:
- demotes a promoted task whose rolling reverse-shadow agreement (the last `demote_window` verdicts
  since its promotion) has an upper bound under the bar, whose live escalation rate passes the limit,
  or whose feedback drops (router/promotions.py `review`);
- with `auto_promote`, promotes a shadowed miniature whose agreement's lower bound clears the bar on
  enough verdicts, unless the task was demoted less than `cooldown_s` ago.
Each change is written to the promotions file (the gateway then reloads, like for an edit by hand),
logged, counted in `minigate_promotion_changes_total{task,model,action}` and audited in the call log.
The gap between promoting on the lower bound and demoting on the upper bound, and the cooldown, are
what keep a task near the bar from flapping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio

from minigate.config import promotions_path
from minigate.gateway.metrics import GatewayMetrics
from minigate.gateway.runtime import RuntimeHolder
from minigate.logger.pipeline import CallLog
from minigate.router.promotions import (
    PromotionError,
    Promotions,
    load_promotions,
    plan_promotion,
    review,
    save_promotions,
)
from minigate.router.scorecard import Measured, measure

__all__ = ["Autopilot"]

log = logging.getLogger("minigate.gateway")

_ACTOR = "autopilot"


class Autopilot:
    """Runs in the gateway's lifespan when the config names a file to reload from.

    >>> changed = await Autopilot(holder, calls, metrics).step()  # one review, as the loop runs it  # doctest: +SKIP
    """

    def __init__(self, holder: RuntimeHolder, calls: CallLog, metrics: GatewayMetrics) -> None:
        self.holder = holder
        self.calls = calls
        self.metrics = metrics

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.holder.config.conversion.interval_s)
            try:
                await self.step()
            except Exception:  # a fault here must never stop the gateway or the next review
                log.exception("conversion autopilot: the review failed; trying again in %gs",
                              self.holder.config.conversion.interval_s)

    async def step(self) -> bool:
        """One review; True when it changed the promotions (and the gateway reloaded them)."""
        config, path = self.holder.config, self.holder.path
        section = config.conversion
        reader = self.calls.reader()
        if path is None or reader is None:
            return False
        file = promotions_path(path)
        before = after = await anyio.to_thread.run_sync(load_promotions, file)
        reviewed = before.promotions if section.auto_demote else []
        if not reviewed and not section.auto_promote:
            return False  # nothing to review: the call log is not read
        now = time.time()
        earliest = [now - section.window_days * 86400] if section.auto_promote else []
        since = min([*earliest, *(p.promoted_at for p in reviewed)])
        rows, feedback = await reader.outcomes(since)
        for promotion in reviewed:
            recent = _since_promotion(rows, promotion.promoted_at, section.demote_window)
            measured = measure(recent, feedback, window_s=max(now - promotion.promoted_at, 1.0))
            calls, escalated = measured.rules.get(f"promoted:{promotion.task}", (0, 0))
            rate = escalated / calls if calls >= section.demote_samples else None
            verdict = review(measured.card(promotion.task_id, promotion.model), rate, section)
            if verdict.allowed:
                after = after.demote(promotion.task, _ACTOR, verdict.reason, at=now)
                await self._announce("demote", promotion.task, promotion.model, verdict.reason)
        if section.auto_promote:
            window = [row for row in rows if row["started_at"] >= now - section.window_days * 86400]
            after = await self._promote(after, measure(window, feedback, window_s=section.window_days * 86400), now)
        if after == before:
            return False
        await anyio.to_thread.run_sync(save_promotions, after, file)
        await self.holder.reload()
        return True

    async def _promote(self, promotions: Promotions, measured: Measured, now: float) -> Promotions:
        config = self.holder.config
        runtime = self.holder.current
        tiers = {name: entry.tier for name, entry in config.models.items()}
        for card in measured.cards:
            name = runtime.tasks.name_of(card.task) if runtime.tasks is not None else card.task
            demoted = promotions.demoted_at(name)
            if promotions.find(name) or (demoted is not None and now - demoted < config.conversion.cooldown_s):
                continue
            try:
                promotion, reason = plan_promotion(name, card.task, card.model, measured, config.conversion,
                                                   routes=config.routes, tiers=tiers, at=now)
            except PromotionError:
                continue  # not yet: the scorecard says what is missing
            promotions = promotions.promote(promotion, _ACTOR, reason)
            await self._announce("promote", name, card.model, reason)
        return promotions

    async def _announce(self, action: str, task: str, model: str, reason: str) -> None:
        log.warning("conversion autopilot: %s %s -> %s: %s", action, task, model, reason)
        self.metrics.promotion_changes.labels(task, model, action).inc()
        reader = self.calls.reader()
        if reader is not None:
            await reader.store.audit(_ACTOR, action, f"{task} -> {model}: {reason}")


def _since_promotion(rows: list[dict[str, Any]], promoted_at: float, window: int) -> list[dict[str, Any]]:
    """What a promoted task is reviewed on: its calls since the promotion, and the verdicts of its reverse
    shadows only (the frontier checking the miniature that served), the last `window` of them: a rolling
    agreement, so a long good record can't hide a drift. Forward shadows still finishing from before the
    promotion judged a miniature that served nobody, and are left out."""
    recent = [row for row in rows if row["started_at"] >= promoted_at]
    reverse = [row for row in recent if row["shadow_of"] is not None and row["tier"] == "frontier"]
    return [row for row in recent if row["shadow_of"] is None] + reverse[-window:]
