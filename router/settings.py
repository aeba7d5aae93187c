"""The `routes` section of the config: the model names agents ask for, and the rules that pick a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from minigate.router.cascade import EscalationReason
from minigate.router.features import FEATURE_NAMES
from minigate.router.rules import Condition, compile_condition
from minigate.router.score import DEFAULT_BIAS, DEFAULT_WEIGHTS

__all__ = ["RouteEntry", "Rule", "ScoringSection", "TasksSection"]


class Rule(BaseModel):
    """One routing rule: when its condition holds, `use` that model (or `split` traffic by weight).

    >>> Rule.model_validate({"name": "long", "when": {"prompt_tokens": {"gt": 3000}}, "use": "gpt-4.1"}).use
    'gpt-4.1'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    when: dict[str, Any] = Field(default_factory=dict, description="empty: always matches")
    use: str | None = None
    split: dict[str, int] | None = Field(None, description="model -> weight; sticky per conversation")
    escalate_on: list[EscalationReason] = Field(
        default_factory=list, description="miniature failures that send the request to the route's escalate_to"
    )
    timeout_s: float | None = Field(None, gt=0, description="how long the chosen model may take before escalation")
    _condition: Condition = PrivateAttr()

    @field_validator("when")
    @classmethod
    def _compiles(cls, when: dict[str, Any]) -> dict[str, Any]:
        compile_condition(when)  # raises ValueError naming what is wrong
        return when

    @field_validator("split")
    @classmethod
    def _positive(cls, split: dict[str, int] | None) -> dict[str, int] | None:
        if split is not None and (not split or any(weight < 0 for weight in split.values()) or not sum(split.values())):
            raise ValueError("split takes model names with non-negative weights, at least one above 0")
        return split

    @model_validator(mode="after")
    def _one_target(self) -> Rule:
        if (self.use is None) == (self.split is None):
            raise ValueError(f"rule {self.name!r} needs exactly one of 'use' or 'split'")
        return self

    def model_post_init(self, context: Any) -> None:
        self._condition = compile_condition(self.when)

    @property
    def condition(self) -> Condition:
        return self._condition

    def models(self) -> list[str]:
        return [self.use] if self.use is not None else list(self.split or {})


class RouteEntry(BaseModel):
    """A name agents put in `model`: `rules` in order (first match wins), else `default`.

    `fallbacks` are tried in order when the chosen model's upstream fails after its own retries
    (connect error, timeout, 5xx, 429) before any byte reached the client.

    >>> RouteEntry.model_validate({"default": "gpt-4.1", "fallbacks": ["claude", "local"]}).fallbacks
    ['claude', 'local']
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str
    rules: list[Rule] = Field(default_factory=list)
    escalate_to: str | None = Field(None, description="the model a failing miniature's requests go to")
    fallbacks: list[str] = Field(default_factory=list, description="models tried in order when the served one fails")

    @field_validator("fallbacks")
    @classmethod
    def _distinct(cls, fallbacks: list[str]) -> list[str]:
        repeated = sorted({name for name in fallbacks if fallbacks.count(name) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        return fallbacks


class ScoringSection(BaseModel):
    """The escalation score's weights: shipped defaults, a fitted file (`minigate router fit`), or both
    with `weights` overriding feature by feature. A fitted file may also carry word weights (`lexical`).

    >>> ScoringSection.model_validate({"weights": {"tools": 0.5}}).merged()["tools"]
    0.5
    >>> ScoringSection.model_validate({"model": "scoring.json", "weights": {"tools": 0.5}})  # doctest: +SKIP
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path | None = Field(None, description="a scoring file written by `minigate router fit`")
    bias: float = DEFAULT_BIAS
    weights: dict[str, float] = Field(default_factory=dict, description="feature -> weight, merged over the defaults")

    @model_validator(mode="before")
    @classmethod
    def _load_model(cls, data: Any) -> Any:
        """A fitted file replaces the shipped weights; explicit `bias`/`weights` still win."""
        if not isinstance(data, dict) or not data.get("model"):
            return data
        try:
            fitted = orjson.loads(Path(data["model"]).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the scoring file {data['model']}: {exc}") from exc
        if not isinstance(fitted, dict) or not isinstance(fitted.get("weights"), dict):
            raise ValueError(f"{data['model']} is not a scoring file (written by `minigate router fit`)")
        return {**data, "bias": data.get("bias", fitted.get("bias", DEFAULT_BIAS)),
                "weights": {**fitted["weights"], **data.get("weights", {})}, "fitted": True,
                "lexical": fitted.get("lexical") or {}}

    @field_validator("weights")
    @classmethod
    def _known(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"unknown features {unknown}; known: {', '.join(FEATURE_NAMES)}")
        return weights

    fitted: bool = Field(False, exclude=True, description="set when `model` supplied the weights")
    lexical: dict[str, float] = Field(default_factory=dict, exclude=True,
                                      description="word -> weight, from the scoring file (router/lexical.py)")

    def merged(self) -> dict[str, float]:
        return dict(self.weights) if self.fitted else {**DEFAULT_WEIGHTS, **self.weights}


class TasksSection(BaseModel):
    """The task catalogue live requests are matched to (`minigate tasks discover` writes it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalogue: Path | None = Field(None, description="tasks.yaml; relative paths are read from the config's folder")
    embedding: bool = Field(False, description="match unseen signatures by embedding (loads torch and MiniLM)")
    budget_ms: float = Field(15.0, gt=0, description="longest a request waits for an embedding match")
    min_similarity: float = Field(0.5, ge=-1, le=1, description="below it, the nearest task is not close enough")
