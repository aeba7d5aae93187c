"""What each route's calls cost and would have cost: the rates of a config generation's models and routes.

The counterfactual is what the call would have cost without minigate: its tokens at the price of the
route's frontier model (its `escalate_to`, or its default when that is a frontier model). A route with
no priced frontier model (a miniature-only route, say) is priced at the model name the client asked
for, the route's own name, when the price table knows it: a client asking for `gpt-4o-mini` would
have paid gpt-4o-mini's price, so savings are never negative for lack of a price. Savings are
counterfactual minus actual. It lives with the routes, which it reads; rates and the bundled table
are shared data (`minigate.pricing`). Prices are looked up once per config generation, so the request
path pays dictionary lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from minigate.pricing import PriceTable, Rate, model_rate

if TYPE_CHECKING:
    from minigate.config import Config
    from minigate.router.settings import RouteEntry

__all__ = ["PriceBook"]


@dataclass(frozen=True, slots=True)
class PriceBook:
    """The rates of one config generation: each priced model's, and each route's counterfactual.

    >>> book = PriceBook({"gpt-4.1": Rate(2.0, 8.0)}, {"gpt-4.1": Rate(2.0, 8.0)})
    >>> book.rates("gpt-4.1", "invoice-extractor")
    (None, Rate(input_per_mtok=2.0, output_per_mtok=8.0))
    """

    models: dict[str, Rate]  # model entry name -> its rate (priced models only)
    counterfactual: dict[str, Rate]  # route name -> its frontier model's rate, else its own name's

    @classmethod
    def from_config(cls, config: Config, table: PriceTable | None = None) -> PriceBook:
        """Rates of `config`'s models; `table` stands in for the bundled price table."""
        table = table or PriceTable.bundled()
        models = {name: rate for name, entry in config.models.items()
                  if (rate := model_rate(entry, table)[0]) is not None}
        counterfactual: dict[str, Rate] = {}
        for name, route in config.routes.items():
            frontier = _frontier(config, route)
            if frontier is not None and frontier in models:
                counterfactual[name] = models[frontier]
            elif (asked := table.lookup(name)) is not None:
                counterfactual[name] = Rate(*asked)
        return cls(models, counterfactual)

    def rates(self, route: str, model: str) -> tuple[Rate | None, Rate | None]:
        """The served model's rate and the route's counterfactual rate; None where unpriced."""
        return self.models.get(model), self.counterfactual.get(route)

    def rate(self, model: str) -> Rate | None:
        """One model entry's rate (an escalated miniature's, say); None when unpriced."""
        return self.models.get(model)


def _frontier(config: Config, route: RouteEntry) -> str | None:
    """The route's frontier model: its escalation model, else its default when that is a frontier model."""
    if route.escalate_to is not None:
        return route.escalate_to
    return route.default if config.models[route.default].tier == "frontier" else None
