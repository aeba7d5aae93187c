"""*Cost & savings*: what minigate spends, what the routes' frontier models would have cost, and who serves.

Savings are counterfactual minus actual: `minigate_counterfactual_cost_usd_total` prices each call's
tokens at its route's frontier model, `minigate_cost_usd_total` at the model that served it. Only
`task` is on both, so it is the one filter that applies to every panel here.
"""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard
from panels import Query, Row, bars, build_dashboard, stat_panel, time_series, variable
from promql import MONTH_S, by_var, in_range, per_second, selector

__all__ = ["cost_dashboard"]

COST = selector("minigate_cost_usd_total", by_var("task"))
COUNTERFACTUAL = selector("minigate_counterfactual_cost_usd_total", by_var("task"))
CALLS = selector("minigate_requests_total", 'tier!=""', by_var("task"))  # refused calls have no tier
MINIATURE_CALLS = selector("minigate_requests_total", 'tier="miniature"', by_var("task"))
TOKENS = selector("minigate_tokens_total")
SHADOW = selector("minigate_shadow_comparisons_total", by_var("task"))
JUDGED = selector("minigate_shadow_comparisons_total", 'verdict=~"agree|disagree"', by_var("task"))
AGREED = selector("minigate_shadow_comparisons_total", 'verdict="agree"', by_var("task"))
DROPPED = selector("minigate_shadow_dropped_total")
CHANGES = selector("minigate_promotion_changes_total", by_var("task"))
MINIATURE_TOKENS = selector("minigate_tokens_total", 'tier="miniature"')

SPEND = in_range(COST)
WITHOUT = in_range(COUNTERFACTUAL)
SAVINGS = f"{WITHOUT} - {SPEND}"
PER_HOUR = " * 3600"
TO_MONTH = f" / $__range_s * {MONTH_S}"


def _share(part: str, whole: str) -> str:
    """part / whole, 0 (not "no data") while the part has no series yet."""
    return f"({part} or vector(0)) / {whole}"


def _summary() -> Row:
    return Row("Selected range", [
        stat_panel("Spend", "What the calls cost at the prices of the models that served them.", "currencyUSD",
                   Query(SPEND)),
        stat_panel("Without minigate", "What the calls would have cost without minigate: at each route's frontier model price (a "
                   "miniature-only route: the price of the model name asked for), a miniature's reply at the task's "
                   "median frontier length.", "currencyUSD",
                   Query(WITHOUT)),
        stat_panel("Savings", "Without minigate minus spend.", "currencyUSD", Query(SAVINGS)),
        stat_panel("Savings rate", "Savings as a share of what the calls would have cost.", "percentunit",
                   Query(f"({SAVINGS}) / {WITHOUT}")),
        stat_panel("Projected monthly spend", "The range's spend rate over a 30-day month.", "currencyUSD",
                   Query(f"{SPEND}{TO_MONTH}")),
        stat_panel("Projected monthly savings", "The range's savings rate over a 30-day month.", "currencyUSD",
                   Query(f"({SAVINGS}){TO_MONTH}")),
    ])


def _over_time() -> Row:
    return Row("Spend over time (USD per hour)", [
        time_series("Spend vs. without minigate", "Hourly rate of actual and counterfactual spend.", "currencyUSD",
                    Query(per_second(COST) + PER_HOUR, "spend"),
                    Query(per_second(COUNTERFACTUAL) + PER_HOUR, "without minigate"),
                    Query(f"({per_second(COUNTERFACTUAL)} - {per_second(COST)}){PER_HOUR}", "savings")),
        time_series("Spend by model", "Hourly spend rate of each model that served calls.", "currencyUSD",
                    Query(per_second(COST, "model, tier") + PER_HOUR, "{{model}} ({{tier}})")),
    ])


def _breakdown() -> Row:
    return Row("Where the money goes (selected range)", [
        bars("Spend by model", "", "currencyUSD", Query(in_range(COST, "model"), "{{model}}")),
        bars("Spend by tier", "", "currencyUSD", Query(in_range(COST, "tier"), "{{tier}}")),
        bars("Spend by task", "Catalogue task ids; `unknown` for calls that matched none.", "currencyUSD",
             Query(in_range(COST, "task"), "{{task}}")),
        bars("Savings by task", "", "currencyUSD",
             Query(f"{in_range(COUNTERFACTUAL, 'task')} - {in_range(COST, 'task')}", "{{task}}")),
    ])


def _miniatures() -> Row:
    calls, tokens = _share(in_range(MINIATURE_CALLS), in_range(CALLS)), _share(
        in_range(MINIATURE_TOKENS), in_range(TOKENS))
    return Row("Miniatures", [
        stat_panel("Calls on miniatures", "Share of answered calls a miniature served (escalated calls count as "
                   "frontier).", "percentunit", Query(calls), width=6, height=8),
        stat_panel("Tokens on miniatures", "Share of input and output tokens a miniature processed "
                   "(not filtered by task).", "percentunit", Query(tokens), width=6, height=8),
        time_series("Share on miniatures over time", "", "percentunit",
                    Query(_share(per_second(MINIATURE_CALLS), per_second(CALLS)), "calls"),
                    Query(_share(per_second(MINIATURE_TOKENS), per_second(TOKENS)), "tokens")),
        time_series("Tokens per second", "By tier and direction (not filtered by task).", "short",
                    Query(per_second(TOKENS, "tier, direction"), "{{tier}} {{direction}}"), width=24),
    ])


def _quality() -> Row:
    agreement = f"{in_range(AGREED, 'task, model')} / {in_range(JUDGED, 'task, model')}"
    return Row("Quality (shadow calls)", [
        bars("Agreement with the frontier by task and miniature", "Shadow verdicts that agreed, of those that "
             "judged (agree + disagree), in the selected range; `minigate tasks scorecard` gives the 95% interval.",
             "percentunit", Query(agreement, "{{task}} {{model}}"), width=8),
        time_series("Shadow verdicts per second", "By verdict: agree, disagree, unjudged (free text without an "
                    "embedding model), error (the shadow call failed).", "short",
                    Query(per_second(SHADOW, "verdict"), "{{verdict}}"), width=8),
        stat_panel("Shadow calls dropped", "Shadows not made because the shadow queue was full: the sample "
                   "is too large for the shadow model's max_concurrency.", "short",
                   Query(f"{in_range(DROPPED)} or vector(0)"), width=4, height=8),
        stat_panel("Promotions and demotions", "Changes the conversion autopilot made in the selected range.",
                   "short", Query(f"{in_range(CHANGES)} or vector(0)"), width=4, height=8),
    ])


def cost_dashboard() -> Dashboard:
    task = variable("task", "Task", "minigate_cost_usd_total", "Catalogue task ids (`unknown`: no task matched).")
    return build_dashboard(
        "minigate-cost", "minigate: Cost & savings",
        "What minigate spends, what the same calls would have cost on the routes' frontier models, the "
        "share miniatures serve, and how well they agree with the frontier.",
        time_from="now-24h", variables=[task], rows=[_summary(), _over_time(), _breakdown(), _miniatures(), _quality()],
    )
