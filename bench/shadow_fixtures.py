"""What both halves of bench/shadow configure: a one-task catalogue, the gateway's config, its metrics.

The catalogue holds one task whose output kind is `label`, keyed by the signature of the bench's
requests, so every shadow is judged by exact match (cheap, and a real verdict). A free-text task would
be judged by MiniLM embeddings, which need `tasks.embedding` and torch in the gateway: neither half
measures that.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from minigate.router.catalogue import Catalogue, Task, save_catalogue
from minigate.router.signature import signature

__all__ = ["AGENT_KEY", "ANALYST_KEY", "MINIATURE", "TASK", "gateway_config", "metric_totals", "write_catalogue",
           "write_config"]

AGENT_KEY = "sk-bench-agent"
ANALYST_KEY = "sk-bench-analyst"  # reads the call log back (GET /v1/minigate/calls)
TASK = "intents"
MINIATURE = "mini"  # the miniature's model entry in both halves' configs


def write_catalogue(path: Path, body: Mapping[str, Any]) -> Path:
    """A catalogue of one label task, `intents`, that requests shaped like `body` match by signature."""
    task = Task("t001", TASK, size=1, call_share=1.0, signatures={signature(body): 1}, output_kind="label")
    centroid = np.eye(1, 384, dtype=np.float32)[0]  # never read: a signature hit needs no embedding
    save_catalogue(Catalogue([task], {"t001": centroid}, 1, "2026-01-01T00:00:00Z", "bench", "all-MiniLM-L6-v2", 2),
                   path)
    return path


def gateway_config(*, port: int, upstream_url: str, frontier_model: str, mini_model: str, catalogue: Path,
                   store: str, rule: Mapping[str, Any], conversion: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Route `gpt-4.1`: `rule` for the task, the frontier by default; `mini` is the miniature shadowing it."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"keys": [{"name": "bench", "key": AGENT_KEY, "role": "agent"},
                          {"name": "reader", "key": ANALYST_KEY, "role": "analyst"}]},
        "upstreams": {"fast": {"kind": "openai", "base_url": upstream_url, "api_key": "dummy"}},
        "models": {"frontier": {"upstream": "fast", "model": frontier_model, "tier": "frontier"},
                   MINIATURE: {"upstream": "fast", "model": mini_model, "tier": "miniature"}},
        "routes": {"gpt-4.1": {"default": "frontier", "rules": [dict(rule)]}},
        "tasks": {"catalogue": str(catalogue)},
        "logging": {"store": store},
    }
    if conversion is not None:
        config["conversion"] = dict(conversion)
    return config


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def metric_totals(base_url: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each named counter of the gateway's /metrics (open on loopback), summed over its labels."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals
