"""The YAML rule language: conditions over a request's features, task, score, headers and metadata.

Conditions compile once, at config load, into plain closures; evaluating a rule is then a few
dictionary lookups and comparisons. Unknown names are config errors, never a silent `false`.

    when:                                   # a mapping is an implicit `all`
      prompt_tokens: {gt: 3000}             # comparisons: gt gte lt lte eq in matches
      task: invoice-extraction              # a scalar means eq
      reasoning_cues: false                 # a boolean against a count means "none" / "some"
      header.x-minigate-tier: {in: [frontier]}
      any: [{tools: {gt: 4}}, {not: {score: {lt: 0.7}}}]
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from minigate.router.features import FEATURE_NAMES, Features

__all__ = ["CONTEXT_NAMES", "Condition", "RuleContext", "compile_condition"]

CONTEXT_NAMES = frozenset(FEATURE_NAMES) | {"task", "score"}
_PREFIXES = ("header.", "metadata.")


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What a condition can look at for one request."""

    features: Features
    task: str = "unknown"
    score: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        if name == "task":
            return self.task
        if name == "score":
            return self.score
        if name.startswith("header."):
            return self.headers.get(name.removeprefix("header.").lower())
        if name.startswith("metadata."):
            return self.metadata.get(name.removeprefix("metadata."))
        return getattr(self.features, name)


Condition = Callable[[RuleContext], bool]


def compile_condition(spec: Any) -> Condition:
    """Compile a `when`; raises ValueError naming the unknown feature, operator or bad operand."""
    if isinstance(spec, Mapping):
        parts = [_compile_entry(str(key), value) for key, value in spec.items()]
        return lambda ctx: all(part(ctx) for part in parts)
    raise ValueError(f"a condition is a mapping of names to tests, not {type(spec).__name__}")


def _compile_entry(key: str, value: Any) -> Condition:
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"'{key}' takes a non-empty list of conditions")
        parts = [compile_condition(item) for item in value]
        combine = all if key == "all" else any
        return lambda ctx: combine(part(ctx) for part in parts)
    if key == "not":
        inner = compile_condition(value)
        return lambda ctx: not inner(ctx)
    if key not in CONTEXT_NAMES and not key.startswith(_PREFIXES):
        known = ", ".join(sorted(CONTEXT_NAMES))
        raise ValueError(f"unknown feature {key!r}; use one of: {known}, header.<name>, metadata.<key>")
    tests = value if isinstance(value, Mapping) else {"eq": value}
    checks = [_compile_test(key, str(op), operand) for op, operand in tests.items()]
    return lambda ctx: all(check(ctx.value(key)) for check in checks)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}


def _compile_test(key: str, op: str, operand: Any) -> Callable[[Any], bool]:
    if op in _ORDER:
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise ValueError(f"{key}: '{op}' compares with a number, not {operand!r}")
        compare = _ORDER[op]
        return lambda actual: isinstance(actual, int | float) and compare(actual, operand)
    if op == "eq":
        if isinstance(operand, bool):
            return lambda actual: bool(actual) == operand
        return lambda actual: actual == operand
    if op == "in":
        if not isinstance(operand, list):
            raise ValueError(f"{key}: 'in' takes a list, not {operand!r}")
        allowed = frozenset(operand)
        return lambda actual: actual in allowed
    if op == "matches":
        try:
            pattern = re.compile(str(operand))
        except re.error as exc:
            raise ValueError(f"{key}: 'matches' needs a regular expression: {exc}") from exc
        return lambda actual: isinstance(actual, str) and pattern.search(actual) is not None
    raise ValueError(f"{key}: unknown comparison {op!r}; use gt, gte, lt, lte, eq, in or matches")
