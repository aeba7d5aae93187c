"""Which model serves a request: the decision and the function that makes it.

Rules arrive with the router issue; today a route always resolves to its default model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from minigate.errors import ModelNotFound
from minigate.router.settings import RouteEntry

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


def decide(routes: Mapping[str, RouteEntry], targets: Mapping[str, Target], requested: str) -> Decision:
    """Resolve the model an agent asked for to the model that will serve it."""
    route = routes.get(requested)
    if route is None:
        available = ", ".join(sorted(routes))
        raise ModelNotFound(
            f"The model {requested!r} does not exist on this gateway; use one of: {available}", param="model"
        )
    return Decision(requested, targets[route.default], "default")
