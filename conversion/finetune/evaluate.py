"""The validation figures: how often the base model and the tuned one agree with the teacher's reply.

Both answer every validation prompt greedily (what a served miniature does at temperature 0), as
rendered by the chat template, with room for the reference's length and a little more. Answers are
judged by the task's kind of reply (`scoring.agrees`); free text is compared by MiniLM similarity.

>>> report = evaluate(model, tokenizer, split.validation, "label", device, embed)  # doctest: +SKIP
>>> report.tuned.agreement, report.base.agreement  # doctest: +SKIP
(0.98, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from minigate.conversion.finetune.examples import Example, prompt_text
from minigate.conversion.finetune.scoring import agrees, is_valid
from minigate.router.agreement import wilson
from minigate.router.catalogue import OutputKind

__all__ = ["Evaluation", "Scores", "answer", "budget", "evaluate", "score"]

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> unit vectors

_BATCH = 8
_SLACK_TOKENS = 8
_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class Scores:
    """One model's answers judged: how many, how many agreed (with a Wilson 95% interval), how many well-formed."""

    n: int
    agreed: int
    valid: int
    interval: tuple[float, float]

    @property
    def agreement(self) -> float:
        return round(self.agreed / self.n, 4) if self.n else 0.0

    def document(self) -> dict[str, Any]:
        return {"n": self.n, "agreed": self.agreed, "agreement": self.agreement, "interval_95": list(self.interval),
                "valid": self.valid}


@dataclass(frozen=True)
class Evaluation:
    kind: OutputKind
    base: Scores
    tuned: Scores
    answers: list[tuple[str, str]]  # (base, tuned) per validation example


def evaluate(model: Any, tokenizer: Any, examples: Sequence[Example], kind: OutputKind, device: torch.device,
             embed: Embed | None) -> Evaluation:
    """The base model (the peft model with its adapter off) and the tuned one, side by side."""
    with model.disable_adapter():
        base = answer(model, tokenizer, examples, device)
    tuned = answer(model, tokenizer, examples, device)
    return Evaluation(kind, score(kind, examples, base, embed), score(kind, examples, tuned, embed),
                      list(zip(base, tuned)))


def score(kind: OutputKind, examples: Sequence[Example], answers: Sequence[str], embed: Embed | None) -> Scores:
    """Judge `answers` against the examples' replies."""
    similarity: list[float | None] = [None] * len(answers)
    if kind == "free_text" and embed is not None and answers:
        references = [str(example.reply.get("content") or "") for example in examples]
        vectors = embed([*answers, *references])
        similarity = [float(a @ b) for a, b in zip(vectors[:len(answers)], vectors[len(answers):])]
    agreed = sum(agrees(kind, example.reply, text, close)
                 for example, text, close in zip(examples, answers, similarity))
    valid = sum(is_valid(kind, text) for text in answers)
    return Scores(len(answers), agreed, valid, wilson(agreed, len(answers)))


@torch.no_grad()
def answer(model: Any, tokenizer: Any, examples: Sequence[Example], device: torch.device) -> list[str]:
    """Greedy answers, in batches of similar length (left-padded, as generation needs)."""
    model.eval()
    prompts = [prompt_text(example) for example in examples]
    budgets = [budget(example, tokenizer) for example in examples]
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    answers = [""] * len(prompts)
    tokenizer.padding_side = "left"
    for start in range(0, len(order), _BATCH):
        batch = order[start:start + _BATCH]
        encoded = tokenizer([prompts[index] for index in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
        generated = model.generate(**encoded, max_new_tokens=max(budgets[index] for index in batch), do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=_stops(tokenizer))
        width = encoded["input_ids"].shape[1]
        for index, row in zip(batch, generated):
            # Each answer gets its own budget, as a server given that max_tokens would.
            answers[index] = tokenizer.decode(row[width:width + budgets[index]], skip_special_tokens=True).strip()
    return answers


def budget(example: Example, tokenizer: Any) -> int:
    """Room for the reference reply and some slack: a model that rambles past it is wrong anyway."""
    reply = example.reply
    text = str(reply.get("content") or "") + str(reply.get("tool_calls") or "")
    return min(_MAX_NEW_TOKENS, len(tokenizer(text, add_special_tokens=False)["input_ids"]) + _SLACK_TOKENS)


def _stops(tokenizer: Any) -> list[int]:
    """End of sequence, and the chat template's end of turn when it has its own token."""
    stops = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        stops.add(end_of_turn)
    return sorted(stop for stop in stops if stop is not None)
