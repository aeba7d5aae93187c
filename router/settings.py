"""The `routes` section of the config: the model names agents ask for and what serves them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["RouteEntry"]


class RouteEntry(BaseModel):
    """A name agents put in `model`; `default` is the model entry that serves it when no rule matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str
