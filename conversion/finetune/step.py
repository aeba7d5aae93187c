"""The loss of one batch, with the prefix its rows share computed once.

Examples of one agent step start with the same tokens: the system prompt, the tools, often a few
hundred tokens before the user's few dozen. Running that prefix once (batch of one), repeating its
keys and values for every row, and running only the rows' own tokens on top gives the same loss as
running every full row, for a fraction of the work: on a classifier step with a 200-token system
prompt and 30-token queries, about 4x less. The repeat is part of the autograd graph, so the
prefix's LoRA weights learn from every row.

The loss is cross-entropy on labelled tokens only (the replies), and the output layer runs only at
the positions that predict them: SmolLM2's vocabulary of 49,152 makes the output layer a fifth of
the model's work when it runs everywhere.

>>> total, tokens = batch_loss(model, [encoded_a, encoded_b], device)  # doctest: +SKIP
>>> (total / tokens).backward()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from minigate.conversion.finetune.batches import common_prefix
from minigate.conversion.finetune.examples import Encoded

__all__ = ["MIN_SHARED_PREFIX", "batch_loss"]

MIN_SHARED_PREFIX = 16  # below this, one plain batched pass costs about the same


def batch_loss(model: Any, rows: Sequence[Encoded], device: torch.device) -> tuple[torch.Tensor, int]:
    """The summed loss over the batch's labelled tokens, and how many there are.

    `model` is a causal LM (transformers, with or without a peft wrapper) with `.model` (the decoder)
    and `.lm_head`.
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    # Every hidden state that predicts a labelled token must be in the rows' own part.
    shared = common_prefix([row.ids for row in rows], min(row.first_labelled for row in rows) - 1)
    if len(rows) == 1 or shared < MIN_SHARED_PREFIX:
        shared = 0
    suffixes = [row.ids[shared:] for row in rows]
    width = max(len(suffix) for suffix in suffixes)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for number, suffix in enumerate(suffixes):
        ids[number, :len(suffix)] = torch.tensor(suffix)
        mask[number, shared:shared + len(suffix)] = 1
    cache = _prefix_cache(lm, rows[0].ids[:shared], len(rows), device) if shared else None
    hidden = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device), cache=cache,
                      use_cache=cache is not None).last_hidden_state
    where, targets = _targets(rows, shared)
    if not targets:
        return hidden.sum() * 0.0, 0
    logits = lm.lm_head(hidden[where[0].to(device), where[1].to(device)])
    return F.cross_entropy(logits.float(), torch.tensor(targets, device=device), reduction="sum"), len(targets)


def _prefix_cache(lm: Any, prefix: list[int], rows: int, device: torch.device) -> Any:
    """The prefix's keys and values, computed once and repeated for each row (differentiably)."""
    cache = lm.model(input_ids=torch.tensor([prefix], device=device), use_cache=True).cache
    cache.batch_repeat_interleave(rows)
    return cache


def _targets(rows: Sequence[Encoded], shared: int) -> tuple[tuple[torch.Tensor, torch.Tensor], list[int]]:
    """(row, position) of each hidden state that predicts a labelled token, and that token."""
    row_index, position, targets = [], [], []
    for number, row in enumerate(rows):
        for token in range(max(shared, 1), len(row.ids)):
            if row.labelled[token]:
                row_index.append(number)
                position.append(token - 1 - shared)
                targets.append(row.ids[token])
    return (torch.tensor(row_index, dtype=torch.long), torch.tensor(position, dtype=torch.long)), targets
