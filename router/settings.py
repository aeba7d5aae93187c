"""The `routes` section of the config: the model names agents ask for, and the rules that pick a model."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import orjson

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from minigate.router.cascade import EscalationReason
from minigate.router.features import FEATURE_NAMES
from minigate.router.rules import Condition, compile_condition, load_references, task_references
from minigate.router.score import DEFAULT_BIAS, DEFAULT_WEIGHTS

__all__ = ["ConversionSection", "Policy", "RouteEntry", "Rule", "ShadowSpec", "promoted_routes", "ScoringSection", "TasksSection", "load_test_problems", "unknown_task_problems"]

Problem = tuple[tuple[str | int, ...], str]  # where in the config file (a path of keys), what is wrong


class ShadowSpec(BaseModel):
    """Send a sample of a rule's calls to a second model, after the client has its reply, and compare the
    two replies (S6). Shadowing a frontier-served task with a miniature measures the miniature before it is
    promoted; shadowing a miniature-served task with the frontier keeps measuring it after.

    >>> ShadowSpec.model_validate({"model": "mini", "sample": 0.1}).max_concurrency
    2
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="the model entry the shadow call goes to")
    sample: float = Field(0.1, gt=0, le=1, description="the share of the rule's calls that are shadowed")
    max_concurrency: int = Field(2, ge=1, le=64, description="shadow calls to this model at once, at most")
    judge: str | None = Field(None, description="a model entry that judges free-text pairs (docs/shadow.md has "
                                                "its prompt); without one, free text is judged by MiniLM")
    judge_sample: float = Field(1.0, gt=0, le=1, description="the share of free-text pairs the judge sees")


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
    shadow: ShadowSpec | None = Field(None, description="compare a sample of these calls with another model's replies")
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


class Policy(BaseModel):
    """The bars promotion and demotion are judged by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_agreement: float = Field(0.95, gt=0, le=1, description="Wilson lower bound needed to promote")
    min_samples: int = Field(200, ge=1, description="shadow verdicts needed to promote")
    demote_samples: int = Field(50, ge=1, description="verdicts since promotion needed before demoting on agreement")
    demote_window: int = Field(200, ge=1, description="demotion judges the last this many verdicts: a rolling "
                                                      "agreement")
    max_escalation_rate: float = Field(0.2, gt=0, le=1, description="a promoted task escalating more is demoted")
    min_feedback: float | None = Field(None, ge=0, le=1, description="a promoted task whose mean feedback falls "
                                                                    "under this is demoted")
    cooldown_s: float = Field(3600, ge=0, description="after a demotion, how long before the task may be promoted again")
    shadow_sample: float = Field(0.1, gt=0, le=1, description="share of a promoted task's calls the frontier shadows")


class ConversionSection(Policy):
    """`conversion:` in the config: the bars, and whether the gateway promotes and demotes by itself."""

    auto_promote: bool = Field(False, description="promote tasks whose shadowed miniature clears the bar")
    auto_demote: bool = Field(True, description="demote promoted tasks whose measured quality drops")
    interval_s: float = Field(60, gt=0, description="how often the autopilot reads the scorecards")
    window_days: float = Field(7, gt=0, description="the scorecards' window")


def promoted_routes(routes: Mapping[str, RouteEntry], models: Collection[str],
                    path: Path) -> tuple[dict[str, RouteEntry], list[Problem]]:
    """The routes with the promotions file at `path` applied (router/promotions.py), or the problems that
    stop it: an unreadable file, a promotion naming a model the config lacks."""
    from minigate.router.promotions import PromotionError, apply_promotions, load_promotions

    try:
        promotions = load_promotions(path)
    except PromotionError as exc:
        return dict(routes), [(("(file)",), str(exc))]
    known = ", ".join(sorted(models))
    problems: list[Problem] = [(("promotions", i, field), f"unknown model {name!r} (models: {known})")
                               for i, promotion in enumerate(promotions.promotions)
                               for field, name in (("model", promotion.model), ("escalate_to", promotion.escalate_to))
                               if name not in models]
    return (dict(routes), problems) if problems else (apply_promotions(routes, promotions), [])


def load_test_problems(routes: Mapping[str, RouteEntry], upstream_of: Mapping[str, str],
                       reporting: Collection[str]) -> list[Problem]:
    """Load tests that could never hold: `reporting` names the upstreams that report load (vLLM's).

    `upstream_of` maps each model entry to its upstream: a bare `upstream_waiting` reads the one upstream
    serving the rule's models, so they must all be on one reporting upstream.
    """
    listing = ", ".join(sorted(reporting)) or "none defined"
    found: list[Problem] = []
    for name, route in routes.items():
        for i, rule in enumerate(route.rules):
            served = {upstream_of[model] for model in rule.models() if model in upstream_of}
            for written, upstream in load_references(rule.when):
                where = ("routes", name, "rules", i, "when", written)
                if upstream is not None and upstream not in reporting:
                    found.append((where, f"rule {rule.name!r}: {upstream!r} is not a vllm upstream, the only kind "
                                         f"that reports load (vllm upstreams: {listing})"))
                elif upstream is None and (len(served) != 1 or not served <= set(reporting)):
                    found.append((where, f"rule {rule.name!r}: its model is not served by one vllm upstream, so "
                                         f"{written} reads nothing; name one: {written}.<upstream> ({listing})"))
    return found


def unknown_task_problems(routes: Mapping[str, RouteEntry], catalogue: Path | None,
                          models: Collection[str] = ()) -> list[Problem]:
    """Rules testing for a task the catalogue doesn't have (or for any task, with no catalogue configured);
    a configured catalogue that can't be read is a problem even when no rule names a task, and so is a
    task whose `shadow` names a model the config lacks."""
    referenced = [(("routes", name, "rules", i, "when", "task"), rule.name, task)
                  for name, route in routes.items() for i, rule in enumerate(route.rules)
                  for task in task_references(rule.when)]
    if catalogue is None:
        return [(where, f"rule {rule!r} tests for task {task!r}, but tasks.catalogue names no catalogue")
                for where, rule, task in referenced]
    from minigate.router.catalogue import CatalogueError, load_catalogue  # numpy: only for configs with a catalogue

    try:
        tasks = load_catalogue(catalogue).tasks
    except (OSError, CatalogueError) as exc:
        return [(("tasks", "catalogue"), f"cannot read the task catalogue {catalogue}: {exc}")]
    known = {task.name for task in tasks}
    listing = ", ".join(sorted(known)) or "none"
    found: list[Problem] = [(where, f"rule {rule!r}: unknown task {task!r} (tasks: {listing}; `minigate tasks list`)")
                            for where, rule, task in referenced if task not in known and task != "unknown"]
    models_listing = ", ".join(sorted(models))
    return found + [(("tasks", "catalogue"), f"{catalogue}: task {task.id} ({task.name}) shadows with unknown model "
                                             f"{name!r} (models: {models_listing})")
                    for task in tasks if task.shadow is not None
                    for name in (task.shadow["model"], task.shadow.get("judge")) if name is not None and name not in models]
