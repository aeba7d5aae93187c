"""`minigate replay`: traffic through a candidate config, offline: where calls would go and what they would cost.

Input is request JSONL (one chat body per line, with optional top-level "id", "task" and
"output_tokens") or the JSONL of `minigate logs export`, told apart line by line by shape. Every call
is routed by the candidate's `Router` exactly as the gateway would, then priced at the model chosen
and at its route's frontier and miniature models. Nothing here calls an upstream: the router is
pure, and prices are the gateway's (`router.prices.PriceBook`: the config's, else the bundled table's).

Tasks: when the candidate has a task catalogue (`tasks.catalogue`), each call's task is named as the
gateway names it for its rules, so `when: {task: ...}` rules fire offline too: a logged call's task id
(or a JSONL line's "task", an id or a name) through the catalogue, else the catalogue task its
signature belongs to (router/matcher.py; never by embedding: replay loads no model). A stated task the
catalogue doesn't know is kept as stated.

Token counts: logged usage when there is some, else the router's prompt estimate and, for the reply,
an assumed length capped by the request's own max_tokens. A model without a price makes every total
that needs it unpriced (None), with a note saying why, rather than a made-up figure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from minigate.conversion.jsonl import Skipped, json_objects
from minigate.conversion.replay_promotions import Projection, project_promotions
from minigate.errors import RequestError
from minigate.pricing import Rate, priced_total
from minigate.router.decision import Router
from minigate.router.matcher import UNKNOWN_TASK, TaskMatcher
from minigate.router.prices import PriceBook
from minigate.router.scorecard import Scorecard
from minigate.router.settings import RouteEntry

if TYPE_CHECKING:
    from minigate.config import Config

__all__ = ["Call", "Projection", "Served", "Skipped", "Split", "ReplayReport", "SweepPoint", "logged_call", "read_calls", "replay"]

_SWEEP_POINTS = 100  # the cost curve is drawn through this many steps of escalated share, plus one


@dataclass(frozen=True, slots=True)
class Served:
    """What the log says answered a call: the config's model name and its tier."""

    model: str
    tier: str


@dataclass(frozen=True, slots=True)
class Call:
    """One call to replay: the request body, and what is known of it beyond the body.

    >>> Call("7", {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}, output_tokens=12).task
    'unknown'
    """

    id: str
    body: dict[str, Any]
    task: str = "unknown"
    input_tokens: int | None = None  # known (logged usage); else the router's estimate
    output_tokens: int | None = None  # known (logged usage, or stated in the request line)
    served: Served | None = None  # logged calls only


@dataclass(frozen=True, slots=True)
class Split:
    """One row of a routing split: calls, how many the candidate sends to a frontier model, their cost.

    `route` is set for rules only (rule names are per route); `cost` is None when unpriced.
    """

    name: str
    calls: int
    frontier: int
    cost: float | None
    route: str | None = None


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """Escalate the `frontier_share` of calls with the highest scores, the rest stay on the miniature."""

    frontier_share: float
    cost: float


@dataclass(frozen=True)
class ReplayReport:
    """Everything `minigate replay` prints, as plain values; costs in the prices' currency, None when unpriced."""

    calls: int
    tiers: list[Split]
    rules: list[Split]
    tasks: list[Split]
    candidate_cost: float | None
    actual_cost: float | None  # None also unless every call came from the log
    all_frontier_cost: float | None
    all_miniature_cost: float | None
    sweep: list[SweepPoint]  # empty when a miniature or frontier cost is unpriced
    notes: list[str]  # why a figure is unpriced
    skipped: list[Skipped]
    logged: int  # calls that came from the call log (they have an actual cost)
    actual_tiers: dict[str, int]  # logged calls by the tier that served them
    estimated_input: int  # calls whose prompt tokens are the router's estimate
    assumed_output: int  # calls whose reply tokens are assumed
    assumed_output_tokens: int
    promotions: list[Projection] = field(default_factory=list)  # each measured task promoted, at its agreement

    @property
    def frontier_share(self) -> float:
        """The share of calls the candidate sends to a frontier model."""
        return sum(split.frontier for split in self.tiers) / self.calls if self.calls else 0.0

    @property
    def logged_frontier_share(self) -> float:
        """The share of logged calls a frontier model served."""
        return self.actual_tiers.get("frontier", 0) / self.logged if self.logged else 0.0

    def savings(self, versus: float | None) -> float | None:
        """The candidate's saving against another total, as a share of it (0.25: a quarter cheaper)."""
        if self.candidate_cost is None or not versus:
            return None
        return 1 - self.candidate_cost / versus

    def as_dict(self) -> dict[str, Any]:
        """The report as `minigate replay --json` prints it: the fields, plus shares and savings."""
        report = asdict(self)
        for group in ("tiers", "rules", "tasks"):
            for row in report[group]:
                row["share"] = row["calls"] / self.calls
        report["frontier_share"] = self.frontier_share
        report["savings"] = {"vs_actual": self.savings(self.actual_cost),
                             "vs_all_frontier": self.savings(self.all_frontier_cost)}
        return report


def read_calls(lines: Iterable[str | bytes]) -> Iterator[Call | Skipped]:
    """One Call (or Skipped) per non-blank line: request JSONL or `logs export` lines, mixed freely."""
    for number, value in json_objects(lines):
        if isinstance(value, str):
            yield Skipped(str(number), value)
        elif _is_logged(value):
            yield logged_call(value)
        else:
            yield _request_call(value, number)


def logged_call(row: Mapping[str, Any]) -> Call | Skipped:
    """A call-log row with its payloads opened (as `logs export` writes it) as a Call."""
    request = row.get("request")
    request_id = str(row["request_id"])
    if not isinstance(request, dict) or "messages" not in request:
        why = request.get("error") if isinstance(request, dict) else "no payload was logged"
        return Skipped(request_id, f"no request to replay: {why}")
    return Call(request_id, {**request, "model": row["route"]}, str(row.get("task") or "unknown"),
                _count(row.get("input_tokens")), _count(row.get("output_tokens")),
                Served(str(row.get("model")), str(row.get("tier"))))


def _is_logged(value: Mapping[str, Any]) -> bool:
    """Export lines carry the log's own columns; a request body never has `request_id` and `route`."""
    return "request_id" in value and "route" in value


def _request_call(body: dict[str, Any], number: int) -> Call:
    task, output = body.pop("task", None), body.pop("output_tokens", None)
    return Call(str(body.pop("id", number)), body, task if isinstance(task, str) else "unknown",
                output_tokens=_count(output))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def replay(config: Config, calls: Iterable[Call | Skipped], *, assumed_output_tokens: int,
           cards: Sequence[Scorecard] = ()) -> ReplayReport:
    """Route and price every call under `config`; `assumed_output_tokens` stands in for unknown reply lengths.

    `cards` (router/scorecard.py) add a projection per measured task: its calls promoted to the miniature,
    the share it gets wrong still paid at the frontier.
    """
    matcher = TaskMatcher.load(config.tasks.model_copy(update={"embedding": False}))
    replayer = _Replayer(Router.from_config(config), _Pricer(config.models, PriceBook.from_config(config).models),
                         matcher, assumed_output_tokens)
    replayed: list[_Replayed] = []
    skipped: list[Skipped] = []
    for call in calls:
        outcome = call if isinstance(call, Skipped) else replayer.route(call)
        if isinstance(outcome, Skipped):
            skipped.append(outcome)
        else:
            replayed.append(outcome)
    report = _report(replayed, skipped, replayer)
    projections = project_promotions([(call.task, call.candidate, call.frontier, call.tokens) for call in replayed],
                                     cards, matcher.names, replayer.pricer.cost)
    return replace(report, promotions=projections)


@dataclass(frozen=True, slots=True)
class _Replayed:
    """One routed call: the candidate's choice, and its cost under each scenario (None: unpriced)."""

    score: float
    route: str
    rule: str
    tier: str
    task: str
    served: Served | None
    estimated_input: bool
    assumed_output: bool
    candidate: float | None
    actual: float | None
    frontier: float | None
    miniature: float | None
    tokens: tuple[int, int] = (0, 0)


class _Replayer:
    """Routes one call at a time with the candidate's router and prices it under every scenario."""

    def __init__(self, router: Router, pricer: _Pricer, matcher: TaskMatcher, assumed_output_tokens: int) -> None:
        self.router = router
        self.pricer = pricer
        self.matcher = matcher
        self.assumed_output_tokens = assumed_output_tokens
        # The models "all frontier" and "all miniature" mean, per route, worked out once.
        self.ends = {name: (_route_model(route, router, "frontier"), _route_model(route, router, "miniature"))
                     for name, route in router.routes.items()}

    def route(self, call: Call) -> _Replayed | Skipped:
        task = self.task_name(call)
        try:
            explanation = self.router.explain(str(call.body.get("model", "")), call.body, {}, task)
        except RequestError as exc:
            return Skipped(call.id, exc.message)
        decision, features = explanation.decision, explanation.features
        assumed = min(self.assumed_output_tokens, features.max_tokens or self.assumed_output_tokens)
        tokens = (features.prompt_tokens if call.input_tokens is None else call.input_tokens,
                  assumed if call.output_tokens is None else call.output_tokens)
        frontier, miniature = self.ends[decision.route]
        cost = self.pricer.cost
        return _Replayed(
            explanation.score, decision.route, decision.rule, decision.target.tier, task, call.served,
            estimated_input=call.input_tokens is None, assumed_output=call.output_tokens is None,
            candidate=cost(decision.target.name, tokens),
            actual=None if call.served is None else cost(call.served.model, tokens),
            frontier=cost(frontier, tokens, f"route {decision.route!r} has no frontier model"),
            miniature=cost(miniature, tokens, f"route {decision.route!r} has no miniature model"), tokens=tokens,
        )  # fmt: skip

    def task_name(self, call: Call) -> str:
        """The name the candidate's rules see: a known id's name, a stated name, else the signature's task."""
        if call.task == UNKNOWN_TASK:
            return self.matcher.name_of(self.matcher.known(call.body))
        return self.matcher.names.get(call.task, call.task)


def _route_model(route: RouteEntry, router: Router, tier: str) -> str | None:
    """A route's model of one tier: its escalation model, its default, else the first a rule names."""
    names = [route.escalate_to, route.default, *(model for rule in route.rules for model in rule.models())]
    return next((name for name in names if name is not None and router.targets[name].tier == tier), None)


class _Pricer:
    """Prices tokens at a model of the candidate config as the gateway does (`PriceBook`: the config's
    price, else the bundled table's), noting each reason a figure is unpriced."""

    def __init__(self, models: Mapping[str, object], rates: Mapping[str, Rate]) -> None:
        self.models = models
        self.rates = rates
        self.notes: set[str] = set()

    def cost(self, model: str | None, tokens: tuple[int, int], missing: str = "") -> float | None:
        """Cost of `tokens` (input, output) at `model`; None (and a note) when it has no price."""
        if model is None:
            self.notes.add(missing)
            return None
        rate = self.rates.get(model)
        if rate is None:
            self.notes.add(f"model {model!r} has no price" if model in self.models else
                           f"model {model!r} is not in the config")
            return None
        return rate.cost(*tokens)


def _report(calls: list[_Replayed], skipped: list[Skipped], replayer: _Replayer) -> ReplayReport:
    logged = [call.served for call in calls if call.served is not None]
    if 0 < len(logged) < len(calls):  # an actual total over some calls would compare unlike with like
        replayer.pricer.notes.add(f"actual cost: only {len(logged)} of {len(calls)} calls come from the call log")
    return ReplayReport(
        calls=len(calls),
        tiers=_splits(calls, lambda call: (call.tier, None)),
        rules=_splits(calls, lambda call: (call.rule, call.route)),
        tasks=_splits(calls, lambda call: (call.task, None)),
        candidate_cost=priced_total(call.candidate for call in calls),
        actual_cost=priced_total(call.actual for call in calls) if calls and len(logged) == len(calls) else None,
        all_frontier_cost=priced_total(call.frontier for call in calls),
        all_miniature_cost=priced_total(call.miniature for call in calls),
        sweep=_sweep(calls),
        notes=sorted(replayer.pricer.notes),
        skipped=skipped,
        logged=len(logged),
        actual_tiers=dict(Counter(served.tier for served in logged)),
        estimated_input=sum(call.estimated_input for call in calls),
        assumed_output=sum(call.assumed_output for call in calls),
        assumed_output_tokens=replayer.assumed_output_tokens,
    )  # fmt: skip


def _splits(calls: list[_Replayed], key: Callable[[_Replayed], tuple[str, str | None]]) -> list[Split]:
    """Calls grouped by `key(call) -> (name, route)`, the largest group first."""
    groups: dict[tuple[str, str | None], list[_Replayed]] = {}
    for call in calls:
        groups.setdefault(key(call), []).append(call)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0][1] or "", item[0][0]))
    return [Split(name, len(group), sum(call.tier == "frontier" for call in group),
                  priced_total(call.candidate for call in group), route)
            for (name, route), group in ordered]  # fmt: skip


def _sweep(calls: list[_Replayed]) -> list[SweepPoint]:
    """Cost when the k calls with the highest escalation scores go to the frontier, the rest to the miniature.

    Ties in score keep input order, so each step is one policy: "escalate the riskiest k". Empty when
    some call has no priced frontier or miniature model: a curve through guesses would mislead.
    """
    deltas: list[tuple[float, float]] = []  # (score, frontier cost - miniature cost)
    cost = 0.0
    for call in calls:
        if call.frontier is None or call.miniature is None:
            return []
        deltas.append((call.score, call.frontier - call.miniature))
        cost += call.miniature
    deltas.sort(key=lambda pair: -pair[0])
    costs = [cost]
    for _, delta in deltas:
        costs.append(costs[-1] + delta)
    steps = sorted({round(i * len(calls) / _SWEEP_POINTS) for i in range(_SWEEP_POINTS + 1)})
    return [SweepPoint(k / len(calls), costs[k]) for k in steps] if calls else []
