"""The YAML rule language: conditions over a request's features, task, score, headers and metadata.

Conditions compile once, at config load, into plain closures; evaluating a rule is then a few
dictionary lookups and comparisons. Unknown names are config errors, never a silent `false`.

    when:                                   # a mapping is an implicit `all`
      prompt_tokens: {gt: 3000}             # comparisons: gt gte lt lte eq in matches
      task: invoice-extraction              # a scalar means eq
      reasoning_cues: false                 # a boolean against a count means "none" / "some"
      header.x-minigate-tier: {in: [frontier]}
      any: [{tools: {gt: 4}}, {not: {score: {lt: 0.7}}}]
      upstream_waiting: {gt: 8}             # load of the upstream serving the rule's model (vLLM)
      upstream_kv_cache.vllm-b: {gt: 0.9}   # ... or of a named upstream

Load is read from a snapshot the caller passes in (`RuleContext.loads`, upstream name -> load), so
rules stay pure; an upstream with no reading makes its tests false, never an error.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from minigate.router.features import FEATURE_NAMES, Features

__all__ = [
    "CONTEXT_NAMES", "LOAD_NAMES", "Condition", "RuleContext", "UpstreamLoad", "compile_condition", "load_references",
    "task_references",
]

# A rule's load test reads this attribute of the upstream's load.
_LOAD_ATTRIBUTES = {"upstream_waiting": "waiting", "upstream_running": "running", "upstream_kv_cache": "kv_cache"}
LOAD_NAMES = frozenset(_LOAD_ATTRIBUTES)
CONTEXT_NAMES = frozenset(FEATURE_NAMES) | {"task", "score"} | LOAD_NAMES
_PREFIXES = ("header.", "metadata.", *(f"{name}." for name in sorted(LOAD_NAMES)))


class UpstreamLoad(Protocol):
    """An upstream's load as serving reads it (a vLLM server's /metrics): requests queued and running, KV cache used."""

    @property
    def waiting(self) -> float: ...

    @property
    def running(self) -> float: ...

    @property
    def kv_cache(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What a condition can look at for one request."""

    features: Features
    task: str = "unknown"
    score: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    loads: Mapping[str, UpstreamLoad] = field(default_factory=dict)  # upstream name -> its last reading

    def value(self, name: str) -> Any:
        return _reader(name, None)(self)


Condition = Callable[[RuleContext], bool]


def compile_condition(spec: Any, upstream: str | None = None) -> Condition:
    """Compile a `when`; raises ValueError naming the unknown feature, operator or bad operand.

    `upstream` is the one serving the rule's model: what a bare `upstream_waiting` reads (None: nothing).
    """
    if isinstance(spec, Mapping):
        return _all_of([_compile_entry(str(key), value, upstream) for key, value in spec.items()])
    raise ValueError(f"a condition is a mapping of names to tests, not {type(spec).__name__}")


def load_references(spec: Any) -> list[tuple[str, str | None]]:
    """The load tests of a condition: (name as written, the upstream it names, or None for the rule's own)."""
    found: list[tuple[str, str | None]] = []
    if not isinstance(spec, Mapping):
        return found
    for key, value in spec.items():
        if key in ("all", "any") and isinstance(value, list):
            found += [ref for item in value for ref in load_references(item)]
        elif key == "not":
            found += load_references(value)
        elif isinstance(key, str) and key.partition(".")[0] in LOAD_NAMES:
            found.append((key, key.partition(".")[2] or None))
    return found


def task_references(spec: Any) -> list[str]:
    """The task names a condition tests for, so the config can check them against the catalogue."""
    found: list[str] = []
    if not isinstance(spec, Mapping):
        return found
    for key, value in spec.items():
        if key in ("all", "any") and isinstance(value, list):
            found += [name for item in value for name in task_references(item)]
        elif key == "not":
            found += task_references(value)
        elif key == "task":
            tests = value if isinstance(value, Mapping) else {"eq": value}
            for op, operand in tests.items():
                if op == "eq":
                    found.append(str(operand))
                elif op == "in" and isinstance(operand, list):
                    found += [str(item) for item in operand]
    return found


def _compile_entry(key: str, value: Any, upstream: str | None) -> Condition:
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"'{key}' takes a non-empty list of conditions")
        parts = [compile_condition(item, upstream) for item in value]
        return _all_of(parts) if key == "all" else _any_of(parts)
    if key == "not":
        inner = compile_condition(value, upstream)
        return lambda ctx: not inner(ctx)
    if (key not in CONTEXT_NAMES and not key.startswith(_PREFIXES)) or key.endswith("."):
        known = ", ".join(sorted(CONTEXT_NAMES))
        raise ValueError(f"unknown feature {key!r}; use one of: {known}, header.<name>, metadata.<key>, "
                         "upstream_waiting.<upstream> (and the other upstream_ loads)")
    tests = value if isinstance(value, Mapping) else {"eq": value}
    read = _reader(key, upstream)
    return _all_of([_compile_test(read, key, str(op), operand) for op, operand in tests.items()])


# Conditions run for every routed request, so the combinators avoid a generator per call, and a
# single condition is used as it is.
def _all_of(parts: list[Condition]) -> Condition:
    if len(parts) == 1:
        return parts[0]

    def every(ctx: RuleContext) -> bool:
        for part in parts:
            if not part(ctx):
                return False
        return True

    return every


def _any_of(parts: list[Condition]) -> Condition:
    if len(parts) == 1:
        return parts[0]

    def some(ctx: RuleContext) -> bool:
        for part in parts:
            if part(ctx):
                return True
        return False

    return some


def _reader(name: str, upstream: str | None) -> Callable[[RuleContext], Any]:
    """How a condition reads `name` from the context, decided once when it compiles."""
    if name in ("task", "score"):
        return operator.attrgetter(name)
    feature, _, named = name.partition(".")
    if feature in LOAD_NAMES:
        return _load_reader(_LOAD_ATTRIBUTES[feature], named or upstream)
    if name.startswith("header."):
        header = name.removeprefix("header.").lower()
        return lambda ctx: ctx.headers.get(header)
    if name.startswith("metadata."):
        key = name.removeprefix("metadata.")
        return lambda ctx: ctx.metadata.get(key)
    return operator.attrgetter(f"features.{name}")


def _load_reader(attribute: str, upstream: str | None) -> Callable[[RuleContext], Any]:
    if upstream is None:  # a rule whose model has no single upstream: config validation refuses it
        return lambda ctx: None
    read = operator.attrgetter(attribute)

    def load_of(ctx: RuleContext) -> Any:
        load = ctx.loads.get(upstream)
        return None if load is None else read(load)

    return load_of


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}
_NUMBER = (int, float)


def _compile_test(read: Callable[[RuleContext], Any], key: str, op: str, operand: Any) -> Condition:
    if op in _ORDER:
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise ValueError(f"{key}: '{op}' compares with a number, not {operand!r}")
        compare = _ORDER[op]
        return lambda ctx: isinstance(actual := read(ctx), _NUMBER) and compare(actual, operand)
    if op == "eq":
        if isinstance(operand, bool):
            return lambda ctx: bool(read(ctx)) == operand
        return lambda ctx: read(ctx) == operand
    if op == "in":
        if not isinstance(operand, list):
            raise ValueError(f"{key}: 'in' takes a list, not {operand!r}")
        allowed = frozenset(operand)
        return lambda ctx: _is_in(read(ctx), allowed)
    if op == "matches":
        try:
            pattern = re.compile(str(operand))
        except re.error as exc:
            raise ValueError(f"{key}: 'matches' needs a regular expression: {exc}") from exc
        return lambda ctx: isinstance(actual := read(ctx), str) and pattern.search(actual) is not None
    raise ValueError(f"{key}: unknown comparison {op!r}; use gt, gte, lt, lte, eq, in or matches")


def _is_in(actual: Any, allowed: frozenset[Any]) -> bool:
    try:
        return actual in allowed
    except TypeError:  # an unhashable value, as a list in a request's metadata, is none of the scalars
        return False
