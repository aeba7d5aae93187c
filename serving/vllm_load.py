"""A vLLM server's load, as rules read it: requests waiting and running, and KV-cache use, from `/metrics`.

vLLM publishes them as Prometheus gauges, one series per engine (and model name):
`vllm:num_requests_waiting`, `vllm:num_requests_running`, and `vllm:kv_cache_usage_perc` (a fraction,
0 to 1, despite its name; `vllm:gpu_cache_usage_perc` before vLLM 0.10). The page also holds dozens of
histograms, so it is read with one regular expression for the few gauges wanted, not a full parser.

>>> parse_metrics('vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\\nvllm:num_requests_running 2.0')
VllmLoad(waiting=3.0, running=2.0, kv_cache=None)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["VllmLoad", "least_loaded", "parse_metrics"]

# Each sample starts a line: matching from the "\n" before it lets `re` skip ahead to the literal.
_SAMPLE = re.compile(
    r"\nvllm:(num_requests_waiting|num_requests_running|kv_cache_usage_perc|gpu_cache_usage_perc)"
    r"(?:\{[^}\n]*\})?[ \t]+(\S+)"
)


@dataclass(frozen=True, slots=True)
class VllmLoad:
    """One server's load: requests queued for a slot, requests in the running batch, KV cache in use (0-1)."""

    waiting: float
    running: float
    kv_cache: float | None  # None: the server publishes no KV-cache gauge


def parse_metrics(text: str) -> VllmLoad | None:
    """The load in a `/metrics` page: queues summed over engines, the fullest engine's KV cache.

    None when the page has no request gauges: whatever answered is not a vLLM server.
    """
    totals: dict[str, float] = {}
    fullest: dict[str, float] = {}
    for name, raw in _SAMPLE.findall("\n" + text):
        try:
            value = float(raw)
        except ValueError:
            continue
        if value != value:  # NaN: the gauge has no reading yet
            continue
        if name.endswith("_perc"):
            fullest[name] = max(fullest.get(name, 0.0), value)
        else:
            totals[name] = totals.get(name, 0.0) + value
    if not totals:
        return None
    kv_cache = fullest.get("kv_cache_usage_perc", fullest.get("gpu_cache_usage_perc"))
    return VllmLoad(totals.get("num_requests_waiting", 0.0), totals.get("num_requests_running", 0.0), kv_cache)


def least_loaded(loads: Iterable[VllmLoad]) -> VllmLoad | None:
    """An upstream's load is its least loaded replica's: it is saturated only when every replica is.

    >>> least_loaded([VllmLoad(9, 4, 0.9), VllmLoad(1, 4, 0.5)])
    VllmLoad(waiting=1, running=4, kv_cache=0.5)
    """
    return min(loads, key=lambda load: (load.waiting, load.running, load.kv_cache or 0.0), default=None)
