"""*Latency & reliability*: where the time goes, what fails, how often miniatures hand calls to the frontier.

Latency is measured by the gateway from request received to last byte sent; time to first token (streamed
calls) from request received to the first byte relayed, on the same clock, so the two compare directly.
"""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.models.dashboard import Dashboard
from panels import Query, Row, build_dashboard, stat_panel, time_series, variable
from promql import by_var, in_range, per_second, quantile, selector

__all__ = ["latency_dashboard"]

ROUTE, TIER = by_var("route"), by_var("tier")
DURATION = selector("minigate_request_duration_seconds_bucket", ROUTE, TIER)
TTFT = selector("minigate_time_to_first_token_seconds_bucket", TIER)
REQUESTS = selector("minigate_requests_total", ROUTE, TIER)
FAILED = selector("minigate_requests_total", ROUTE, TIER, 'status=~"5.."')
MINIATURE_REQUESTS = selector("minigate_requests_total", ROUTE, 'tier="miniature"')
ESCALATIONS = selector("minigate_escalations_total", ROUTE)
UPSTREAM_ERRORS = selector("minigate_upstream_errors_total")
QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))


def _percentiles(buckets: str) -> list[Query]:
    return [Query(quantile(q, buckets, "model, tier"), f"{name} {{{{model}}}} ({{{{tier}}}})") for q, name in QUANTILES]


def _cascade_rate(count: Callable[[str, str], str], by: str = "") -> str:
    """Escalated share of the calls routed to a miniature (served by it, or escalated away from it).

    `count` is `per_second` for a graph or `in_range` for the range's figure. A route with no
    escalation yet, or whose miniature calls all escalated, lacks one of the two series: `or ... * 0`
    stands in a zero so the share reads 0 or 1 rather than no data.
    """
    escalated, miniature = count(ESCALATIONS, by), count(MINIATURE_REQUESTS, by)
    escalated, miniature = f"({escalated} or {miniature} * 0)", f"({miniature} or {escalated} * 0)"
    return f"{escalated} / ({miniature} + {escalated})"


def _failed_share(count: Callable[[str, str], str], by: str = "") -> str:
    return f"({count(FAILED, by)} or {count(REQUESTS, by)} * 0) / {count(REQUESTS, by)}"


def _summary() -> Row:
    return Row("Selected range", [
        stat_panel("p95 latency", "", "s", Query(quantile(0.95, DURATION, "", "$__range")), width=6),
        stat_panel("p95 time to first token", "", "s", Query(quantile(0.95, TTFT, "", "$__range")), width=6),
        stat_panel("5xx share", "Share of calls answered with a server error.", "percentunit",
                   Query(_failed_share(in_range))),
        stat_panel("Cascade rate", "Escalated share of calls routed to a miniature.", "percentunit",
                   Query(_cascade_rate(in_range))),
        stat_panel("Upstream errors", "Failed upstream calls, including those a cascade recovered.", "short",
                   Query(f"{in_range(UPSTREAM_ERRORS)} or vector(0)")),
    ])


def _latency() -> Row:
    return Row("Latency", [
        time_series("Request latency by model", "From request received to last byte sent.", "s",
                    *_percentiles(DURATION)),
        time_series("Time to first token by model", "Streamed calls: from request received to the first byte relayed.",
                    "s",
                    *_percentiles(TTFT)),
        time_series("Requests per second by route and status", "", "reqps",
                    Query(per_second(REQUESTS, "route, status"), "{{route}} {{status}}"), width=24),
    ])


def _reliability() -> Row:
    return Row("Reliability", [
        time_series("Upstream errors by upstream and kind", "Per second; includes errors a cascade recovered.",
                    "cps", Query(per_second(UPSTREAM_ERRORS, "upstream, kind"), "{{upstream}} {{kind}}")),
        time_series("Escalations by reason", "Per second, by route and the check the miniature failed.", "cps",
                    Query(per_second(ESCALATIONS, "route, reason"), "{{route}} {{reason}}")),
        time_series("Cascade rate by route", "Escalated share of calls routed to a miniature.", "percentunit",
                    Query(_cascade_rate(per_second, "route"), "{{route}}")),
        time_series("5xx share by route", "Share of calls answered with a server error.", "percentunit",
                    Query(_failed_share(per_second, "route"), "{{route}}")),
    ])


def _process() -> Row:
    return Row("Gateway process", [
        time_series("Event-loop lag", "How late the gateway's event loop runs a scheduled callback: time every "
                    "request waits before its own work starts.", "s",
                    Query(f"max by (instance) ({selector('minigate_event_loop_lag_seconds')})", "{{instance}}"),
                    width=8),
        time_series("CPU", "Cores used per gateway process.", "short",
                    Query(per_second(selector("process_cpu_seconds_total"), "instance"), "{{instance}}"), width=8),
        time_series("Resident memory", "", "bytes",
                    Query(f"max by (instance) ({selector('process_resident_memory_bytes')})", "{{instance}}"),
                    width=8),
    ])


def latency_dashboard() -> Dashboard:
    route = variable("route", "Route", "minigate_requests_total", "The model names agents ask for.")
    tier = variable("tier", "Tier", "minigate_requests_total", "miniature or frontier: the tier that served.")
    return build_dashboard(
        "minigate-latency", "minigate: Latency & reliability",
        "Latency and time to first token by model and tier, upstream errors, escalations and the cascade rate, "
        "and the gateway process itself.",
        time_from="now-3h", variables=[route, tier], rows=[_summary(), _latency(), _reliability(), _process()],
    )
