"""Which model serves a request: the router, its decisions, and their explanations.

A route without rules costs a dictionary lookup; features and the escalation score are computed only
for routes that have rules, and only once per request.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from minigate.errors import ModelNotFound
from minigate.router.features import Features, extract_features
from minigate.router.lexical import Lexicon
from minigate.router.rules import Condition, RuleContext, UpstreamLoad, compile_condition, load_references
from minigate.router.score import escalation_score
from minigate.router.settings import RouteEntry, Rule, ScoringSection, ShadowSpec

if TYPE_CHECKING:
    from minigate.config import Config

__all__ = ["Decision", "Explanation", "Router", "Shadow", "Target"]

Tier = Literal["miniature", "frontier"]


@dataclass(frozen=True, slots=True)
class Target:
    """A model entry as the router sees it: the name in config, where it lives and its upstream id."""

    name: str
    upstream: str
    upstream_model: str
    tier: Tier


@dataclass(frozen=True, slots=True)
class Shadow:
    """A rule's shadow: the model a sample of its calls also goes to, once the client has its reply."""

    target: Target
    sample: float
    max_concurrency: int
    judge: Target | None = None  # judges free-text pairs on `judge_sample` of them
    judge_sample: float = 1.0


@dataclass(frozen=True, slots=True)
class Decision:
    route: str
    target: Target
    rule: str
    escalate_on: frozenset[str] = frozenset()  # checks on a miniature's reply (router.cascade)
    escalate_to: Target | None = None
    timeout_s: float | None = None
    fallbacks: tuple[Target, ...] = ()  # the route's, tried in order when the served model's upstream fails
    shadow: Shadow | None = None


@dataclass(frozen=True)
class Explanation:
    """Everything behind one decision, for `minigate route explain` and `route score`."""

    features: Features
    score: float
    rules: list[tuple[str, bool]]  # each rule evaluated, in order, and whether it matched
    decision: Decision


class Router:
    """Decides which model serves a request, from one config generation's routes, models and weights."""

    def __init__(self, routes: Mapping[str, RouteEntry], targets: Mapping[str, Target], scoring: ScoringSection) -> None:
        self.routes = routes
        self.targets = targets
        self.weights = scoring.merged()
        self.bias = scoring.bias
        self.lexicon = Lexicon(scoring.lexical) if scoring.lexical else None  # only fitted files have words
        # Read once: a rule's condition is a pydantic private attribute, ~2 us a read.
        self._rules = {name: [(rule, self._condition(rule), self._shadow(rule)) for rule in route.rules]
                       for name, route in routes.items()}
        self._fallbacks = {name: tuple(targets[model] for model in route.fallbacks) for name, route in routes.items()}

    @classmethod
    def from_config(cls, config: Config) -> Router:
        targets = {name: Target(name, entry.upstream, entry.model, entry.tier) for name, entry in config.models.items()}
        return cls(config.routes, targets, config.scoring)

    def decide(self, requested: str, body: Mapping[str, Any], headers: Mapping[str, str],
               task: str = "unknown", loads: Mapping[str, UpstreamLoad] | None = None) -> Decision:
        """First matching rule, else the route's default. Routes without rules compute no features.

        `task` is the name of the request's catalogue task (router.matcher), what rules' `task` tests read;
        `loads` the upstreams' last load readings, what `upstream_waiting` and the like read.
        """
        route = self._route(requested)
        context = self._context(body, headers, task, loads) if route.rules else None
        return self._choose(requested, route, body, context)

    def default(self, requested: str) -> Decision:
        """The route's default model and its fallbacks, no rules: for calls that rules can't read
        (embeddings, text completions), which have no messages to take features from."""
        route = self._route(requested)
        return Decision(requested, self.targets[route.default], "default", fallbacks=self._fallbacks[requested])

    def explain(self, requested: str, body: Mapping[str, Any], headers: Mapping[str, str],
                task: str = "unknown") -> Explanation:
        route = self._route(requested)
        context = self._context(body, headers, task)
        outcomes = [(rule.name, condition(context)) for rule, condition, _ in self._rules[requested]]
        return Explanation(context.features, context.score, outcomes, self._choose(requested, route, body, context))

    def _choose(self, requested: str, route: RouteEntry, body: Mapping[str, Any],
                context: RuleContext | None) -> Decision:
        fallbacks = self._fallbacks[requested]
        if context is not None:
            for rule, condition, shadow in self._rules[requested]:
                if condition(context):
                    target = self.targets[_model_of(rule, body)]
                    if target.tier != "miniature" or not rule.escalate_on or route.escalate_to is None:
                        return Decision(requested, target, rule.name, fallbacks=fallbacks, shadow=shadow)
                    return Decision(requested, target, rule.name, frozenset(rule.escalate_on),
                                    self.targets[route.escalate_to], rule.timeout_s, fallbacks, shadow)
        return Decision(requested, self.targets[route.default], "default", fallbacks=fallbacks)

    def _shadow(self, rule: Rule) -> Shadow | None:
        return None if rule.shadow is None else self.shadow_of(rule.shadow)

    def shadow_of(self, spec: ShadowSpec) -> Shadow:
        """A rule's or a catalogue task's shadow, its models resolved (the config checked they exist)."""
        judge = self.targets[spec.judge] if spec.judge is not None else None
        return Shadow(self.targets[spec.model], spec.sample, spec.max_concurrency, judge, spec.judge_sample)

    def _condition(self, rule: Rule) -> Condition:
        """A rule's condition, with its bare load tests bound to the upstream serving its model."""
        if not any(upstream is None for _, upstream in load_references(rule.when)):
            return rule.condition
        upstreams = {self.targets[model].upstream for model in rule.models() if model in self.targets}
        return compile_condition(rule.when, upstreams.pop() if len(upstreams) == 1 else None)

    def _route(self, requested: str) -> RouteEntry:
        route = self.routes.get(requested)
        if route is None:
            available = ", ".join(sorted(self.routes))
            raise ModelNotFound(
                f"The model {requested!r} does not exist on this gateway; use one of: {available}", param="model"
            )
        return route

    def _context(self, body: Mapping[str, Any], headers: Mapping[str, str], task: str,
                 loads: Mapping[str, UpstreamLoad] | None = None) -> RuleContext:
        features = extract_features(body)
        metadata = body.get("metadata")
        return RuleContext(features, task, escalation_score(features, self.weights, self._bias(body)), headers,
                           metadata if isinstance(metadata, Mapping) else {}, {} if loads is None else loads)

    def _bias(self, body: Mapping[str, Any]) -> float:
        """The score's bias, plus what the request's words add when the scoring file has word weights."""
        return self.bias if self.lexicon is None else self.bias + self.lexicon.offset(body)


def _model_of(rule: Rule, body: Mapping[str, Any]) -> str:
    if rule.use is not None:
        return rule.use
    assert rule.split is not None
    # Sticky per conversation: the first user message picks the bucket, so a conversation stays on one model.
    bucket = zlib.crc32(_first_user_text(body).encode()) % sum(rule.split.values())
    for model, weight in rule.split.items():
        if bucket < weight:
            return model
        bucket -= weight
    raise AssertionError("unreachable: bucket below the total weight")


def _first_user_text(body: Mapping[str, Any]) -> str:
    for message in body.get("messages") or []:
        if isinstance(message, Mapping) and message.get("role") == "user":
            return str(message.get("content"))
    return ""
