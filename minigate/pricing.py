"""The bundled price table: list prices of frontier chat models, for model entries that give no `price`.

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
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = ["PriceTable"]

# `gpt-4.1-2025-04-14`, `claude-3-5-sonnet-20241022`, `claude-3-5-sonnet@20241022` (Vertex's spelling).
_DATE_SUFFIX = re.compile(r"[-@]\d{4}-?\d{2}-?\d{2}$")


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
        return PriceTable.from_json(resources.files("minigate.serving").joinpath("prices.json").read_text("utf-8"))

    def lookup(self, model_id: str) -> tuple[float, float] | None:
        """The first of: the id itself, the id without its provider prefix (`openai/`), either without a date."""
        for candidate in _candidates(model_id):
            if candidate in self.models:
                return self.models[candidate]
        return None


def _candidates(model_id: str) -> list[str]:
    ids = [model_id]
    if "/" in model_id:
        ids.append(model_id.split("/", 1)[1])
    return ids + [undated for undated in (_DATE_SUFFIX.sub("", id_) for id_ in ids) if undated not in ids]
