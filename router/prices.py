"""What each route's calls cost and would have cost: the rates of a config generation's models and routes.

The counterfactual is what the call would have cost without minigate: the same tokens at the price of
the route's frontier model (its `escalate_to`, or its default when that is a frontier model). Savings
are counterfactual minus actual. It lives with the routes, which it reads; rates and the bundled table
are shared data (`minigate.pricing`). Prices are looked up once per config generation, so the request
path pays two dictionary lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from minigate.pricing import PriceTable, Rate, model_rate

if TYPE_CHECKING:
    from minigate.config import Config

__all__ = ["PriceBook"]


@dataclass(frozen=True, slots=True)
class PriceBook:
    """The rates of one config generation: each priced model's, and each route's counterfactual.

    >>> book = PriceBook({"gpt-4.1": Rate(2.0, 8.0)}, {"gpt-4.1": Rate(2.0, 8.0)})
    >>> book.rates("gpt-4.1", "invoice-extractor")
    (None, Rate(input_per_mtok=2.0, output_per_mtok=8.0))
    """

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
