"""Which examples train together: one agent step per batch, similar lengths, a bounded number of tokens.

Two things make a CPU step cheap. Examples of one agent step share their system prompt (and tools),
often most of the tokens: a batch of them shares that prefix, which the step computes once for the
whole batch (`step.batch_loss`). And examples of similar length pad little. So batches are cut from
one step's examples sorted by length, each holding at most `max_examples` and at most `max_tokens`
tokens of work per row: each row padded to the longest after the shared prefix (what the step keeps
activations for, about 1 MB a token on SmolLM2-135M), plus its copy of the prefix's keys and values
(about a twentieth of that a token). The prefix's own activations are paid once whatever the batch's
size, so they don't count: a tool-using step whose tool definitions make a 1,300-token prefix still
batches its short requests together, where counting the prefix would leave every example alone.
Their order is shuffled every epoch, from the seed, so a run is reproducible.

>>> plan = batches([[1, 2, 3], [1, 2], [7]], steps=["a", "a", "b"], seed=0, epoch=0)
>>> sorted(sorted(batch) for batch in plan)
[[0, 1], [2]]
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["MAX_EXAMPLES", "MAX_TOKENS", "batches", "common_prefix"]

MAX_EXAMPLES = 8
MAX_TOKENS = 1024  # about 1 GB of activations
_KV_SHARE = 20  # a token's activations over its keys and values, which each row repeats


def batches(ids: Sequence[Sequence[int]], *, steps: Sequence[str], seed: int, epoch: int,
            max_examples: int = MAX_EXAMPLES, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Indexes of `ids` in batches for one epoch: grouped by step, by length within, in a seeded order."""
    rng = random.Random(f"{seed}:{epoch}")
    groups: dict[str, list[int]] = {}
    for index, step in enumerate(steps):
        groups.setdefault(step, []).append(index)
    plan: list[list[int]] = []
    for step in sorted(groups):
        members = groups[step]
        rng.shuffle(members)  # equal lengths come in a new order each epoch
        members.sort(key=lambda index: len(ids[index]))
        shared = common_prefix([ids[index] for index in members], len(ids[members[0]]) - 1)
        plan.extend(_cut(members, ids, shared, max_examples, max_tokens))
    rng.shuffle(plan)
    return plan


def common_prefix(rows: Sequence[Sequence[int]], limit: int) -> int:
    """How many leading tokens every row shares, at most `limit`."""
    first = rows[0]
    shared = min(limit, *(len(row) for row in rows))
    for row in rows[1:]:
        for position in range(shared):
            if row[position] != first[position]:
                shared = position
                break
    return shared


def _cut(members: list[int], ids: Sequence[Sequence[int]], shared: int, max_examples: int,
         max_tokens: int) -> list[list[int]]:
    """Consecutive runs of sorted members; a run ends before its rows' work would pass `max_tokens`."""
    runs: list[list[int]] = []
    run: list[int] = []
    for index in members:
        # Sorted: the newcomer is the longest, and every row is padded to it.
        per_row = len(ids[index]) - shared + shared // _KV_SHARE
        if run and (len(run) == max_examples or per_row * (len(run) + 1) > max_tokens):
            runs.append(run)
            run = []
        run.append(index)
    if run:
        runs.append(run)
    return runs
