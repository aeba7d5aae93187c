"""A stratified, seeded train/validation split.

The validation set should look like the training set: every agent step (signature) or, for a
label-like task, every label in about the same share. The number held out is `round(share × n)`
(at least one when there are two examples or more, never all of them), shared out among the strata
by largest remainder: each stratum gets the whole part of its quota, and the largest fractional parts
get one more (ties in a random order drawn from the seed, so small strata are not always the same).
Which members of a stratum are held out is drawn from the seed too. Both parts keep the input order.

>>> train, held_out = split(list("aabbbbcccc"), list("aabbbbcccc"), 0.5, seed=0)
>>> sorted(held_out)
['a', 'b', 'b', 'c', 'c']
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["split"]

T = TypeVar("T")


def split(items: Sequence[T], strata: Sequence[str], share: float, seed: int) -> tuple[list[T], list[T]]:
    """`items` in two lists, (train, validation), with about `share` of each stratum in validation."""
    members: dict[str, list[int]] = {}
    for index, stratum in enumerate(strata):
        members.setdefault(stratum, []).append(index)
    rng = random.Random(seed)
    quotas = _quotas({stratum: len(indexes) for stratum, indexes in members.items()},
                     _held_out(len(items), share), rng)
    chosen: set[int] = set()
    for stratum in sorted(members):
        chosen.update(rng.sample(members[stratum], quotas[stratum]))
    return ([item for index, item in enumerate(items) if index not in chosen],
            [item for index, item in enumerate(items) if index in chosen])


def _held_out(total: int, share: float) -> int:
    if share <= 0 or total < 2:
        return 0
    return min(total - 1, max(1, round(share * total)))


def _quotas(sizes: dict[str, int], wanted: int, rng: random.Random) -> dict[str, int]:
    """`wanted` shared out in proportion to `sizes`, by largest remainder."""
    total = sum(sizes.values())
    exact = {stratum: size * wanted / total for stratum, size in sizes.items()} if total else {}
    quotas = {stratum: math.floor(value) for stratum, value in exact.items()}
    order = sorted(exact)
    rng.shuffle(order)  # the tie-break among equal remainders
    order.sort(key=lambda stratum: exact[stratum] - quotas[stratum], reverse=True)
    for stratum in order[:wanted - sum(quotas.values())]:
        quotas[stratum] += 1
    return quotas
