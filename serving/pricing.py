"""What a call costs: per-model token prices from the config, and the counterfactual price of each route.

The counterfactual is what the call would have cost without minigate: the same tokens at the price of
the route's frontier model (its `escalate_to`, or its default when that is a frontier model). Savings
are counterfactual minus actual. Prices are looked up once per config generation, so the request path
pays two dictionary lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minigate.config import Config

__all__ = ["PriceBook", "Rate"]


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class PriceBook:
    models: dict[str, Rate]  # model entry name -> its rate (priced models only)
    counterfactual: dict[str, Rate]  # route name -> its frontier model's rate

    @classmethod
    def from_config(cls, config: Config) -> PriceBook:
        models = {name: Rate(entry.price.input_per_mtok, entry.price.output_per_mtok)
                  for name, entry in config.models.items() if entry.price is not None}
        counterfactual: dict[str, Rate] = {}
        for name, route in config.routes.items():
            frontier = route.escalate_to
            if frontier is None and config.models[route.default].tier == "frontier":
                frontier = route.default
            if frontier is not None and frontier in models:
                counterfactual[name] = models[frontier]
        return cls(models, counterfactual)

    def rates(self, route: str, model: str) -> tuple[Rate | None, Rate | None]:
        """The served model's rate and the route's counterfactual rate; None where unpriced."""
        return self.models.get(model), self.counterfactual.get(route)
