"""Routing rules: the condition language, config errors with lines, and decisions through the real gateway."""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigate.config import load_config
from minigate.errors import ConfigError
from minigate.router.features import extract_features
from minigate.router.rules import RuleContext, compile_condition
from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import RunningGateway
from tests.support.upstream import ScriptedUpstream

ROOT = Path(__file__).resolve().parents[1]


def context(text: str = "hello", **fields: Any) -> RuleContext:
    features = extract_features({"messages": [{"role": "user", "content": text}], **fields.pop("body", {})})
    return RuleContext(features, **fields)


@pytest.mark.parametrize(
    ("when", "ctx", "expected"),
    [
        ({"prompt_tokens": {"gt": 3}}, context("one two three four five"), True),
        ({"prompt_tokens": {"gt": 3, "lte": 5}}, context("one two three four five six seven"), False),
        ({"reasoning_cues": False}, context("hi"), True),
        ({"reasoning_cues": True}, context("prove it step by step"), True),
        ({"task": "invoices"}, context(task="invoices"), True),
        ({"task": {"in": ["a", "b"]}}, context(task="c"), False),
        ({"score": {"gte": 0.5}}, context(score=0.7), True),
        ({"header.x-minigate-tier": "frontier"}, context(headers={"x-minigate-tier": "frontier"}), True),
        ({"header.x-minigate-tier": "frontier"}, context(), False),
        ({"metadata.team": {"matches": "^pay"}}, context(metadata={"team": "payments"}), True),
        ({"any": [{"tools": {"gt": 1}}, {"not": {"turns": 1}}]}, context(), False),
        ({"all": [{"turns": 1}, {"not": {"code": True}}]}, context(), True),
        ({}, context(), True),
    ],
)
def test_conditions(when: dict[str, Any], ctx: RuleContext, expected: bool) -> None:
    assert compile_condition(when)(ctx) is expected


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ({"prompt_tokenz": {"gt": 1}}, "unknown feature 'prompt_tokenz'"),
        ({"turns": {"around": 3}}, "unknown comparison 'around'"),
        ({"turns": {"gt": "many"}}, "'gt' compares with a number"),
        ({"task": {"in": "a"}}, "'in' takes a list"),
        ({"task": {"matches": "("}}, "'matches' needs a regular expression"),
        ({"any": []}, "'any' takes a non-empty list"),
    ],
)
def test_bad_conditions_say_what_is_wrong(when: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        compile_condition(when)


# Headers and metadata come from clients: a condition takes any value, never raises, and `matches`
# stays linear on long or odd text (a deadline per example, far above the microseconds these take).
TEXT = (st.text(st.characters(exclude_categories=()), max_size=2000)
        | st.builds(operator.mul, st.sampled_from(["a", "?", "`", "((", "ab", "\n", "é", "1-"]), st.integers(0, 100_000)))
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                      max_leaves=10)
PATTERNS = ("^pay", "frontier|premium", r"\d{3}-\d{4}", "(?i)urgent", r"^[\w.-]+@[\w-]+\.\w+$", "")
CLIENT = settings(max_examples=200, deadline=timedelta(milliseconds=500))


@CLIENT
@given(st.sampled_from(PATTERNS), TEXT, VALUES)
def test_matches_takes_any_text_quickly_and_never_raises(pattern: str, header: str, value: Any) -> None:
    when = {"any": [{"header.X-Team": {"matches": pattern}}, {"metadata.team": {"matches": pattern}}]}
    expected = re.search(pattern, header) is not None or (isinstance(value, str) and re.search(pattern, value) is not None)
    assert compile_condition(when)(context(headers={"x-team": header}, metadata={"team": value})) is expected


@CLIENT
@given(VALUES)
def test_every_comparison_takes_any_client_value(value: Any) -> None:
    ctx = context(metadata={"k": value})
    for test in ({"gt": 1}, {"lte": 2.5}, {"eq": "a"}, {"eq": True}, {"in": ["a", 1, None]}, {"matches": "a"}):
        assert isinstance(compile_condition({"metadata.k": test})(ctx), bool), test


LEAVES = st.sampled_from([{"turns": 1}, {"code": True}, {"tools": {"gt": 0}}, {"task": {"in": ["a", "b"]}},
                          {"score": {"gte": 0.5}}, {"prompt_tokens": {"gt": 3, "lte": 9}}, {}])
CONDITIONS = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=3).map(lambda parts: {"all": parts}),
    st.lists(inner, min_size=1, max_size=3).map(lambda parts: {"any": parts}),
    inner.map(lambda part: {"not": part}),
    st.lists(inner, max_size=3).map(lambda parts: {key: value for part in parts for key, value in part.items()}),
), max_leaves=8)
_ORDER = {"gt": operator.gt, "gte": operator.ge, "lte": operator.le}


def holds(when: dict[str, Any], ctx: RuleContext) -> bool:
    """The condition language read aloud: a reference for the compiled closures."""
    results = []
    for key, value in when.items():
        if key in ("all", "any"):
            results.append((all if key == "all" else any)(holds(part, ctx) for part in value))
        elif key == "not":
            results.append(not holds(value, ctx))
        else:
            actual = ctx.value(key)
            for op, operand in (value if isinstance(value, dict) else {"eq": value}).items():
                if op == "eq":
                    results.append(bool(actual) == operand if isinstance(operand, bool) else actual == operand)
                else:
                    results.append(actual in operand if op == "in" else _ORDER[op](actual, operand))
    return all(results)


@settings(max_examples=300, deadline=timedelta(milliseconds=500))
@given(CONDITIONS, st.sampled_from(["hello", "one two three four five", "```def f(x):``` why?"]),
       st.sampled_from(["a", "c"]), st.floats(0, 1), st.integers(0, 2))
@pytest.mark.slow
def test_compiled_conditions_agree_with_their_reading(when: dict[str, Any], text: str, task: str, score: float,
                                                      tools: int) -> None:
    ctx = context(text, task=task, score=score, body={"tools": [{"type": "function"}] * tools})
    assert compile_condition(when)(ctx) is holds(when, ctx)


RULES_YAML = """\
upstreams:
  up: {kind: openai, base_url: "http://127.0.0.1:1/v1"}
models:
  big: {upstream: up, model: big, tier: frontier}
  small: {upstream: up, model: small, tier: miniature}
routes:
  r:
    default: small
    rules:
      - name: long
        when: {prompt_tokens: {gt: 3000}}
        use: big
"""


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("prompt_tokens: {gt: 3000}", "prompt_tokenz: {gt: 3000}", ":11: routes.r.rules.0.when: Value error, unknown feature"),
        ("use: big", "use: huge", ":12: routes.r.rules.0.use: rule 'long': unknown model 'huge'"),
        ("use: big", "split: {big: 1, nope: 1}", ":12: routes.r.rules.0.split: rule 'long': unknown model 'nope'"),
        ("        use: big\n", "", ":10: routes.r.rules.0: Value error, rule 'long' needs exactly one of 'use' or 'split'"),
    ],
)
def test_rule_config_errors_name_line_and_field(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    path = tmp_path / "minigate.yaml"
    path.write_text(RULES_YAML.replace(replace, by))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value).startswith(f"{path}{expected}"), str(caught.value)


def test_seed_signal_example_is_valid() -> None:
    config = load_config(ROOT / "examples" / "routing.yaml", {})
    assert [rule.name for rule in config.routes["gpt-4.1"].rules][:2] == ["caller-asks-frontier", "long-context"]


@pytest.fixture
def routed(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    config = gateway_config(upstream.base_url)
    config["models"]["mini-v2"] = {"upstream": "scripted", "model": "mini-lora-v2", "tier": "miniature"}
    config["routes"]["gpt-4.1"] = {"default": "mini", "rules": [
        {"name": "hint", "when": {"header.x-minigate-tier": "frontier"}, "use": "gpt-4.1"},
        {"name": "long-context", "when": {"prompt_tokens": {"gt": 300}}, "use": "gpt-4.1"},
        {"name": "corrected-twice", "when": {"corrections": {"gte": 2}}, "use": "gpt-4.1"},
        {"name": "canary", "when": {"metadata.canary": True}, "split": {"mini": 3, "mini-v2": 1}},
    ]}
    return make_gateway(config)


def ask(gateway: RunningGateway, messages: list[dict[str, str]], **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {AGENT_KEY}", **extra.pop("headers", {})}
    response = httpx.post(f"{gateway.v1}/chat/completions", headers=headers,
                          json={"model": "gpt-4.1", "messages": messages, **extra})
    assert response.status_code == 200
    return response


def test_rules_pick_the_model(routed: RunningGateway, upstream: ScriptedUpstream) -> None:
    short = ask(routed, [{"role": "user", "content": "What is my balance?"}])
    assert (short.headers["x-minigate-model"], short.headers["x-minigate-rule"]) == ("mini", "default")
    assert upstream.requests[-1].json()["model"] == "mini-lora"

    long = ask(routed, [{"role": "user", "content": "word " * 400}])
    assert (long.headers["x-minigate-model"], long.headers["x-minigate-rule"]) == ("gpt-4.1", "long-context")
    assert long.headers["x-minigate-tier"] == "frontier"

    hinted = ask(routed, [{"role": "user", "content": "hi"}], headers={"x-minigate-tier": "frontier"})
    assert hinted.headers["x-minigate-rule"] == "hint"

    corrected = ask(routed, [
        {"role": "user", "content": "Cancel my order"}, {"role": "assistant", "content": "Done, order kept."},
        {"role": "user", "content": "No, I said cancel it."}, {"role": "assistant", "content": "Kept again."},
        {"role": "user", "content": "That's wrong, cancel it!"}])
    assert corrected.headers["x-minigate-rule"] == "corrected-twice"


@pytest.mark.slow
def test_split_is_sticky_per_conversation_and_weighted(routed: RunningGateway) -> None:
    def model(i: int) -> str:
        response = ask(routed, [{"role": "user", "content": f"conversation {i}"}], metadata={"canary": "yes"})
        return response.headers["x-minigate-model"]

    first = [model(i) for i in range(200)]
    assert [model(i) for i in range(20)] == first[:20]  # the same conversation stays on its model
    shares = Counter(first)
    assert set(shares) == {"mini", "mini-v2"} and 0.6 <= shares["mini"] / 200 <= 0.9
