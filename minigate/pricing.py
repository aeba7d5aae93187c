"""Token prices, shared by every room: a rate, the bundled price table, and a model entry's rate.

A model's price is its config `price` when it has one (per million tokens, or derived from a GPU-hour
cost and throughput: see `minigate.serving.settings.Price`), else the bundled table's price for its
upstream model id (see `PriceTable.lookup`), else none: an unpriced call records no cost rather than a
guessed one. What a route's call would have cost without minigate (its counterfactual) needs the
routes, so it is computed where they are known: `minigate.router.prices.PriceBook`.

`prices.json` is derived from LiteLLM's model price map (github.com/BerriAI/litellm,
`model_prices_and_context_window.json`) by `scripts/refresh-prices`, and records its source and date.
A model id is looked up as given, then without a provider prefix, then without a date suffix:

>>> table = PriceTable.bundled()
>>> table.lookup("gpt-4.1") == table.lookup("openai/gpt-4.1") == table.lookup("gpt-4.1-2099-01-01")
True
>>> table.lookup("my-own-lora") is None
True
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, Protocol

__all__ = ["ConfiguredPrice", "PriceSource", "PriceTable", "PricedModel", "Rate", "model_rate", "priced_total"]

PriceSource = Literal["config", "gpu-hour", "table", "none"]

# `gpt-4.1-2025-04-14`, `claude-3-5-sonnet-20241022`, `claude-3-5-sonnet@20241022` (Vertex's spelling).
_DATE_SUFFIX = re.compile(r"[-@]\d{4}-?\d{2}-?\d{2}$")


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens.

    >>> Rate(input_per_mtok=2.0, output_per_mtok=8.0).cost(1000, 500)
    0.006
    """

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class ConfiguredPrice(Protocol):
    """A price given in the config (`minigate.serving.settings.Price`): the face reads it by shape, so
    it depends on no room."""

    @property
    def input_per_mtok(self) -> float: ...

    @property
    def output_per_mtok(self) -> float: ...

    @property
    def gpu_hour_usd(self) -> float | None: ...


class PricedModel(Protocol):
    """A model entry as pricing reads it (`minigate.serving.settings.ModelEntry`): its upstream id and price."""

    @property
    def model(self) -> str: ...

    @property
    def price(self) -> ConfiguredPrice | None: ...


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Model id -> (input, output) USD per million tokens, and where those figures came from."""

    source: str
    retrieved: str
    models: dict[str, tuple[float, float]]

    @classmethod
    def from_json(cls, text: str) -> PriceTable:
        data: dict[str, Any] = json.loads(text)
        models = {model: (float(rate[0]), float(rate[1])) for model, rate in data["models"].items()}
        return cls(str(data["source"]), str(data["retrieved"]), models)

    @staticmethod
    @functools.cache  # read once a process: a config reload must not reread 30 kB on the event loop
    def bundled() -> PriceTable:
        return PriceTable.from_json(resources.files("minigate").joinpath("prices.json").read_text("utf-8"))

    def lookup(self, model_id: str) -> tuple[float, float] | None:
        """The first of: the id itself, the id without its provider prefix (`openai/`), either without a date."""
        for candidate in _candidates(model_id):
            if candidate in self.models:
                return self.models[candidate]
        return None


def priced_total(costs: Iterable[float | None]) -> float | None:
    """The sum, or None when any part is unpriced: a partial total would read as a real one.

    >>> priced_total([0.5, 0.25]), priced_total([0.5, None])
    (0.75, None)
    """
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


def model_rate(entry: PricedModel, table: PriceTable) -> tuple[Rate | None, PriceSource]:
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


def _candidates(model_id: str) -> list[str]:
    ids = [model_id]
    if "/" in model_id:
        ids.append(model_id.split("/", 1)[1])
    return ids + [undated for undated in (_DATE_SUFFIX.sub("", id_) for id_ in ids) if undated not in ids]
