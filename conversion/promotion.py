"""`minigate tasks scorecard` / `promote` / `demote`: the S6 decisions, made from the call log's measurements.

The figures come from router/scorecard.py over the call log's calls and shadow calls; the decisions
from router/promotions.py; the result is the promotions file the gateway reloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from minigate.logger.reader import CallReader
from minigate.logger.stores import open_store
from minigate.router.promotions import Promotion, Promotions, load_promotions, plan_promotion, save_promotions
from minigate.router.scorecard import Measured, measure
from minigate.router.settings import Policy, RouteEntry

__all__ = ["demote", "promote", "read_measured"]


async def read_measured(store_url: str, *, since: float, until: float) -> Measured:
    """Scorecards and routes over `since`..`until`, from metadata and feedback only (no payload is read)."""
    if store_url.startswith("sqlite:///") and not Path(store_url.removeprefix("sqlite:///")).exists():
        return measure([], {}, window_s=1.0)
    store = await open_store(store_url)
    try:
        rows, scores = await CallReader(store, None).outcomes(since, until)
    finally:
        await store.close()
    return measure(rows, scores, window_s=max(until - since, 1.0))


def promote(path: Path, *, task: str, task_id: str, model: str, measured: Measured, policy: Policy,
            routes: Mapping[str, RouteEntry], tiers: Mapping[str, str], route: str | None, by: str) -> Promotion:
    """Write the promotion to the file at `path`, or raise PromotionError saying what is missing."""
    promotion, reason = plan_promotion(task, task_id, model, measured, policy, routes=routes, tiers=tiers, route=route)
    save_promotions(load_promotions(path).promote(promotion, by, reason), path)
    return promotion


def demote(path: Path, *, task: str, by: str, reason: str) -> Promotions:
    promotions = load_promotions(path).demote(task, by, reason)
    save_promotions(promotions, path)
    return promotions
