"""The `logging` section of the config: where call records go."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoggingSection"]


class LoggingSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str = Field("sqlite:///minigate.db", pattern=r"^(sqlite|postgresql)://")
    queue_size: int = Field(10_000, ge=1, description="records waiting for the writer; beyond it they spool")
    batch_size: int = Field(256, ge=1)
    flush_interval_s: float = Field(0.5, gt=0)
