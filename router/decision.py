"""Which model serves a request: the decision and the function that makes it.

A route without rules costs a dictionary lookup; features are computed only for routes that have
rules, and only once per request.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from minigate.errors import ModelNotFound
from minigate.router.features import extract_features
from minigate.router.rules import RuleContext
from minigate.router.settings import RouteEntry, Rule

__all__ = ["Decision", "Target", "decide"]

Tier = Literal["miniature", "frontier"]


@dataclass(frozen=True, slots=True)
class Target:
    """A model entry as the router sees it: the name in config, where it lives and its upstream id."""

    name: str
    upstream: str
    upstream_model: str
    tier: Tier


@dataclass(frozen=True, slots=True)
class Decision:
    route: str
    target: Target
    rule: str


def decide(
    routes: Mapping[str, RouteEntry],
    targets: Mapping[str, Target],
    requested: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
) -> Decision:
    """Resolve the model an agent asked for to the model that will serve it: first matching rule, else default."""
    route = routes.get(requested)
    if route is None:
        available = ", ".join(sorted(routes))
        raise ModelNotFound(
            f"The model {requested!r} does not exist on this gateway; use one of: {available}", param="model"
        )
    if route.rules:
        metadata = body.get("metadata")
        context = RuleContext(extract_features(body), headers=headers,
                              metadata=metadata if isinstance(metadata, Mapping) else {})
        for rule in route.rules:
            if rule.condition(context):
                return Decision(requested, targets[_model_of(rule, body)], rule.name)
    return Decision(requested, targets[route.default], "default")


def _model_of(rule: Rule, body: Mapping[str, Any]) -> str:
    if rule.use is not None:
        return rule.use
    assert rule.split is not None
    # Sticky per conversation: the first user message picks the bucket, so a conversation stays on one model.
    bucket = zlib.crc32(_first_user_text(body).encode()) % sum(rule.split.values())
    for model, weight in rule.split.items():
        if bucket < weight:
            return model
        bucket -= weight
    raise AssertionError("unreachable: bucket below the total weight")


def _first_user_text(body: Mapping[str, Any]) -> str:
    for message in body.get("messages") or []:
        if isinstance(message, Mapping) and message.get("role") == "user":
            return str(message.get("content"))
    return ""
