"""The gateway's Prometheus metrics, created on a registry the caller owns (fresh per test, global in serve).

With `server.workers` above 1 each worker's metrics go through prometheus_client's multiprocess mode
(gateway/worker.py): counters and histograms are summed over the workers, every gauge says how its
workers' values combine (`multiprocess_mode`), and the per-process collectors give way to
`_WorkerProcess`, which keeps the process figures the dashboards read summed over the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from minigate.logger.records import CallRecord

__all__ = ["GatewayMetrics", "LATENCY_BUCKETS", "TTFT_BUCKETS"]

# LLM calls span from a cached 10 ms answer to two-minute generations.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# A first token comes after queueing and prefill only: finer below a second, where miniatures and
# frontier APIs differ, and up to 60 s for long prompts on a busy server.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
_LAG_INTERVAL_S = 0.5


class GatewayMetrics:
    """Metric families of DESIGN.md; labels are bounded (route and model names come from config only,
    tasks are catalogue ids or `unknown`, and a request refused before routing gets empty labels).

    >>> metrics = GatewayMetrics(CollectorRegistry())
    >>> metrics.observe("gpt-4.1", "mini", "miniature", "unknown", 200, 0.42, ttft=0.08)
    """

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool = False) -> None:
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
        self.ttft = Histogram(
            "minigate_time_to_first_token_seconds",
            "Streamed calls: time from request received to the first byte of the reply relayed to the client.",
            ["model", "tier"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "minigate_tokens",
            "Tokens of logged calls, as the upstream's usage reports them, by direction (input or output).",
            ["model", "tier", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            "minigate_cost_usd",
            "What logged calls cost: their tokens at the serving model's price, plus an escalated call's discarded "
            "miniature reply at the miniature's price (unpriced models add nothing).",
            ["model", "tier", "task"],
            registry=registry,
        )
        self.counterfactual = Counter(
            "minigate_counterfactual_cost_usd",
            "What logged calls would have cost without minigate (the route's frontier model, else the model "
            "asked for); savings = this - cost_usd.",
            ["route", "task"],
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
        self.shadow_comparisons = Counter(
            "minigate_shadow_comparisons",
            "Shadow calls judged, by task, the miniature judged and verdict (agree, disagree, unjudged, error).",
            ["task", "model", "verdict"],
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "minigate_shadow_dropped",
            "Shadow calls not made because the shadow queue was full, by shadow model.",
            ["model"],
            registry=registry,
        )
        self.promotion_changes = Counter(
            "minigate_promotion_changes",
            "Tasks the conversion autopilot promoted to a miniature or demoted to the frontier.",
            ["task", "model", "action"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "minigate_config_reloads",
            "Config reloads (SIGHUP or file change) by result: applied, unchanged or rejected (old config kept).",
            ["result"],
            registry=registry,
        )
        self.loop_lag = Gauge(
            "minigate_event_loop_lag_seconds",
            f"How late the event loop last woke a {_LAG_INTERVAL_S} s sleep: what every request waits before its "
            "own work starts (healthy: under a millisecond; with several workers, the worst of them).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.loop_lag.set(float("nan"))  # not measured yet (no event loop running), rather than a healthy 0
        self._process = _WorkerProcess(registry) if multiprocess else None
        if not multiprocess:
            _add_process_collectors(registry)
        # `labels()` validates and takes a lock on every call (~2 us); label sets are few (names from the
        # config), so each child is looked up once and reused (~0.2 us) by the per-call updates below.
        self._request = functools.cache(self.requests.labels)
        self._duration = functools.cache(self.duration.labels)
        self._ttft = functools.cache(self.ttft.labels)
        self._tokens = functools.cache(self.tokens.labels)
        self._cost = functools.cache(self.cost.labels)
        self._counterfactual = functools.cache(self.counterfactual.labels)

    def observe(self, route: str, model: str, tier: str, task: str, status: int, seconds: float, *,
                ttft: float | None = None) -> None:
        self._request(route, model, tier, task, str(status)).inc()
        self._duration(route, model, tier).observe(seconds)
        if ttft is not None:
            self._ttft(model, tier).observe(ttft)

    def count_call(self, record: CallRecord) -> None:
        """Tokens and cost of one call the log records, from the very numbers its record holds.

        Called by the call log's writer once per record, after it parsed the reply off the request
        path: the request path never parses a reply for metrics, and the savings these counters give
        (counterfactual - cost) are the call log's to the cent. An escalated call's cost includes the
        miniature reply it discarded (`wasted_cost_usd`, part of `cost_usd`): an escalation costs both models.
        """
        if record.input_tokens is not None:
            self._tokens(record.model, record.tier, "input").inc(record.input_tokens)
        if record.output_tokens is not None:
            self._tokens(record.model, record.tier, "output").inc(record.output_tokens)
        if record.cost_usd is not None:
            self._cost(record.model, record.tier, record.task).inc(record.cost_usd)
        if record.counterfactual_cost_usd is not None:
            self._counterfactual(record.route, record.task).inc(record.counterfactual_cost_usd)

    async def watch_event_loop(self) -> None:
        """Sleep, and record how much later than asked the loop woke us; runs until cancelled (lifespan).

        A worker's process figures are sampled on the same beat."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + _LAG_INTERVAL_S
            await asyncio.sleep(_LAG_INTERVAL_S)
            self.loop_lag.set(max(0.0, loop.time() - asked))
            if self._process is not None:
                self._process.sample()


class _WorkerProcess:
    """`process_cpu_seconds_total`, `process_resident_memory_bytes` and `process_open_fds` summed over workers.

    prometheus_client's process collector reads the process that answers the scrape, which with several
    workers is any one of them, a different one each time. Each worker instead copies its own figures into
    multiprocess metrics every tick: CPU seconds as a counter (a dead worker's seconds stay in the sum, so
    the total never goes back) and memory and descriptors as gauges over the live workers.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._reader = ProcessCollector(registry=None)
        self.cpu = Counter("process_cpu_seconds", "Total user and system CPU time spent in seconds, all workers.",
                           registry=registry)
        self.memory = Gauge("process_resident_memory_bytes", "Resident memory size in bytes, all workers.",
                            registry=registry, multiprocess_mode="livesum")
        self.fds = Gauge("process_open_fds", "Number of open file descriptors, all workers.", registry=registry,
                         multiprocess_mode="livesum")
        self._cpu_counted = 0.0

    def sample(self) -> None:
        figures = {sample.name: sample.value for family in self._reader.collect() for sample in family.samples}
        if (cpu := figures.get("process_cpu_seconds_total")) is not None:
            self.cpu.inc(max(0.0, cpu - self._cpu_counted))
            self._cpu_counted = max(cpu, self._cpu_counted)
        if (memory := figures.get("process_resident_memory_bytes")) is not None:
            self.memory.set(memory)
        if (fds := figures.get("process_open_fds")) is not None:
            self.fds.set(fds)


def _add_process_collectors(registry: CollectorRegistry) -> None:
    """CPU, memory, file descriptors, GC and the Python version, as Prometheus' own clients export them."""
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        # prometheus_client's default registry (serve's) comes with them: registering twice raises.
        with contextlib.suppress(ValueError):
            collector(registry=registry)
