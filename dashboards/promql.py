"""PromQL shared by the dashboards: selectors bound to the template variables, rates, quantiles, range totals.

Every query comes from these few shapes so the three dashboards agree on what a number means: one
filter for the Prometheus job, one rate window (`$__rate_interval`), one notion of "in the selected
range" (`in_range`).
"""

from __future__ import annotations

__all__ = ["MONTH_S", "by_var", "in_range", "per_second", "quantile", "selector"]

MONTH_S = 30 * 24 * 3600  # projections are per 30-day month


def by_var(label: str) -> str:
    """A matcher that follows the dashboard variable of the same name (`All` is `.*`)."""
    return f'{label}=~"${label}"'


def selector(metric: str, *matchers: str) -> str:
    """`metric{job=~"$job", ...}`: process metrics carry no minigate prefix, so every query is scoped by job."""
    return f"{metric}{{{', '.join([by_var('job'), *matchers])}}}"


def _grouping(by: str) -> str:
    return f" by ({by})" if by else ""


def per_second(series: str, by: str = "") -> str:
    return f"sum{_grouping(by)} (rate({series}[$__rate_interval]))"


def in_range(series: str, by: str = "") -> str:
    """How much a counter grew over the dashboard's time range, counting series born inside it from zero.

    `increase()` alone starts a series at its first sample, so the first calls of a new model, task or
    gateway pod (on a fresh deployment: most of them) would be left out of spend and savings. Series
    that already existed when the range began keep `increase()`, which survives counter resets.
    """
    existing = f"increase({series}[$__range]) and {series} offset $__range"
    born = f"{series} unless {series} offset $__range"
    return f"sum{_grouping(by)} (({existing}) or ({born}))"


def quantile(q: float, buckets: str, by: str, window: str = "$__rate_interval") -> str:
    """The q-quantile of a histogram (its `_bucket` series) per `by` group, over `window`."""
    groups = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({groups}) (rate({buckets}[{window}])))"
