"""The gateway's Prometheus metrics, created on a registry the caller owns (fresh per test, global in serve)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["GatewayMetrics", "LATENCY_BUCKETS"]

# LLM calls span from a cached 10 ms answer to two-minute generations.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    """Metric families of DESIGN.md; labels are bounded (route and model names come from config only)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "minigate_requests",
            "Chat completion requests by route, serving model, tier, task and client status code.",
            ["route", "model", "tier", "task", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "minigate_request_duration_seconds",
            "Time from request received to last byte sent.",
            ["route", "model", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "minigate_upstream_errors",
            "Failed upstream calls by upstream and kind (connect_error, timeout, status_5xx, stream_cut, ...).",
            ["upstream", "kind"],
            registry=registry,
        )

        self.escalations = Counter(
            "minigate_escalations",
            "Requests a miniature failed and the route's escalation model answered, by route and reason.",
            ["route", "reason"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "minigate_config_reloads",
            "Config reloads (SIGHUP or file change) by result: applied, unchanged or rejected (old config kept).",
            ["result"],
            registry=registry,
        )

    def observe(self, route: str, model: str, tier: str, task: str, status: int, seconds: float) -> None:
        self.requests.labels(route, model, tier, task, str(status)).inc()
        self.duration.labels(route, model, tier).observe(seconds)
