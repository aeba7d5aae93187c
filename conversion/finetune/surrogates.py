"""Surrogate PII for training: the log's placeholders (`<EMAIL_1>`) become realistic made-up values.

The call log is redacted, so an exported example reads `-- Maria, <EMAIL_1>, <PHONE_1>` where live
traffic reads `-- Maria, maria@example.com, +44 20 7946 0123`. A miniature trained on placeholders meets
text at serving time it has never seen, and where the teacher's reply repeats a value (an extraction
step's contacts) it learns to answer `<EMAIL_1>` rather than copy the address it is given. Training on
surrogates (NVIDIA's S2: replace PII with synthetic values, don't just mask it) closes both gaps: a
placeholder is filled with a value of its kind, the same value everywhere it occurs in one example, so
the model learns to copy. The values come from Faker, seeded per example: the same data gives the same
examples on every run, and no real person's data is made up from the log.

>>> filled = Surrogates(seed=0).fill(Example([{"role": "user", "content": "mail <EMAIL_1>"},
...                                           {"role": "assistant", "content": "<EMAIL_1>"}], None, "x:1"))
>>> filled.messages[0]["content"] == "mail " + filled.messages[1]["content"]
True
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from faker import Faker

from minigate.conversion.finetune.examples import Example, Split
from minigate.logger.redact import PLACEHOLDER

__all__ = ["Surrogates"]

# Locales whose formats the agents' traffic plausibly holds; Faker picks one per value.
_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT")
_MAKERS: dict[str, Callable[[Faker], str]] = {
    "EMAIL": lambda fake: fake.email(),
    "PHONE": lambda fake: fake.phone_number(),
    "CREDIT_CARD": lambda fake: fake.credit_card_number(),
    "IBAN": lambda fake: fake.iban(),
    "SSN": lambda fake: fake["en_US"].ssn(),
    "IP": lambda fake: fake.ipv4_public(),
    "SECRET": lambda fake: "sk-" + fake.password(length=32, special_chars=False),
    "PERSON": lambda fake: fake.name(),
    "STREET_ADDRESS": lambda fake: fake.street_address(),
}


class Surrogates:
    """Fills placeholders, example by example; a kind it doesn't know is left as it is."""

    def __init__(self, seed: int) -> None:
        self._fake = Faker(list(_LOCALES))
        self._seed = seed
        self.filled = 0  # examples that held at least one placeholder

    def split(self, split: Split) -> Split:
        examples = [self.fill(example, index) for index, example in enumerate([*split.train, *split.validation])]
        return replace(split, train=examples[:len(split.train)], validation=examples[len(split.train):])

    def fill(self, example: Example, index: int = 0) -> Example:
        self._fake.seed_instance(self._seed * 1_000_003 + index)
        values: dict[str, str] = {}

        def value(match: re.Match[str]) -> str:
            placeholder, kind = match.group(0), match.group(1)
            if kind not in _MAKERS:
                return placeholder
            if placeholder not in values:  # JSON replies and tool arguments hold them in strings: nothing to escape
                values[placeholder] = _MAKERS[kind](self._fake).replace('"', "").replace("\\", "").replace("\n", " ")
            return values[placeholder]

        messages = [_strings(message, lambda text: PLACEHOLDER.sub(value, text)) for message in example.messages]
        if not values:
            return example
        self.filled += 1
        return replace(example, messages=messages)


def _strings(value: Any, change: Callable[[str], str]) -> Any:
    """`value` with `change` applied to every string in it (not to keys): contents, parts, tool-call arguments."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: _strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_strings(item, change) for item in value]
    return value
