"""What a call costs: per-model token prices, and the counterfactual price of each route.

A model's price is its config `price` when it has one (per million tokens, or derived from a GPU-hour
cost and throughput: see `Price`), else the bundled table's price for its upstream model id (see
`PriceTable.lookup`), else none: an unpriced call records no cost rather than a guessed one.

The counterfactual is what the call would have cost without minigate: the same tokens at the price of
the route's frontier model (its `escalate_to`, or its default when that is a frontier model). Savings
are counterfactual minus actual. Prices are looked up once per config generation, so the request path
pays two dictionary lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from minigate.serving.price_table import PriceTable

if TYPE_CHECKING:
    from minigate.serving.settings import ModelEntry

    from minigate.config import Config

__all__ = ["PriceBook", "PriceSource", "Rate", "model_rate"]

PriceSource = Literal["config", "gpu-hour", "table", "none"]


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
    def from_config(cls, config: Config, table: PriceTable | None = None) -> PriceBook:
        """Rates of `config`'s models; `table` stands in for the bundled price table."""
        table = table or PriceTable.bundled()
        models = {name: rate for name, entry in config.models.items()
                  if (rate := model_rate(entry, table)[0]) is not None}
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


def model_rate(entry: ModelEntry, table: PriceTable) -> tuple[Rate | None, PriceSource]:
    """A model entry's rate and where it came from; the config's `price` always wins over the table.

    >>> from minigate.serving.settings import ModelEntry
    >>> model_rate(ModelEntry(upstream="openai", model="gpt-4.1-2025-04-14", tier="frontier"), PriceTable.bundled())
    (Rate(input_per_mtok=2.0, output_per_mtok=8.0), 'table')
    """
    if entry.price is not None:
        source: PriceSource = "gpu-hour" if entry.price.gpu_hour_usd is not None else "config"
        return Rate(entry.price.input_per_mtok, entry.price.output_per_mtok), source
    found = table.lookup(entry.model)
    return (Rate(*found), "table") if found is not None else (None, "none")
