"""Redacting a JSON-like value without recursion, within a time budget: what `Redactor.redact_json` runs.

A call record's payload is whatever a client or an upstream sent, so the walk must survive any of it.
It keeps an explicit stack instead of recursing (a field nested 5,000 deep cannot raise
`RecursionError`), replaces anything nested deeper than `MAX_DEPTH` by a marker (so the result always
serialises: orjson refuses more than 254 levels), and parses JSON held in strings only with orjson,
whose parser stops at 1,024 levels by design.

Redaction costs CPU per byte, and some text costs far more than prose. A `RedactionBudget` bounds
what one record may take: once it is spent, every string not yet redacted (the rest of a long string
included) is replaced by `<REDACTION BUDGET EXCEEDED: n bytes withheld>`. Text is never stored
unredacted; it is withheld instead.

    >>> walk = JsonRedaction(str.upper, RedactionBudget(2.0))
    >>> walk.value({"a": ["x", {"b": "y"}]})
    ({'A': ['X', {'B': 'Y'}]}, True)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["MAX_DEPTH", "REDACTION_BUDGET_S", "JsonRedaction", "RedactionBudget"]

# Deeper than any request the gateway accepts (it refuses bodies nested past 64 levels), shallower
# than orjson's 254-level limit for `dumps`, with room for the payload's own wrapping.
MAX_DEPTH = 128
# One record's redaction time. Prose redacts at ~2 MB/s, so this lets through a few MiB of ordinary
# text; adversarial text is cut short at ~2 s of a worker's time instead of minutes (bench/redaction).
REDACTION_BUDGET_S = 2.0
# Long strings are redacted in pieces of about this many characters, so the budget is checked often;
# a piece ends at a line break (or a space) near its end, where entities rarely continue.
_PIECE_CHARS = 65_536
_PIECE_SLACK = 4_096

# (value, container it goes into, its slot there, depth, is-a-key). A key task carries its dict value
# as the slot: the value's slot is the redacted key, known only once the key is done.
_Task = tuple[Any, Any, Any, int, bool]


class RedactionBudget:
    """The time one record's redaction may take, and what was withheld once it was spent.

        >>> budget = RedactionBudget(0.0)
        >>> budget.is_spent(), budget.withhold("secret"), budget.withheld_bytes
        (True, '<REDACTION BUDGET EXCEEDED: 6 bytes withheld>', 6)
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds = seconds
        self.withheld_bytes = 0
        self._clock = clock
        self._deadline = clock() + seconds

    def is_spent(self) -> bool:
        return self._clock() >= self._deadline

    def withhold(self, value: Any) -> str:
        """The marker standing for `value` (a string, or a container and everything in it)."""
        size = _text_bytes(value)
        self.withheld_bytes += size
        return f"<REDACTION BUDGET EXCEEDED: {size} bytes withheld>"


class JsonRedaction:
    """One record's walk: `redact_text` applied to every string and dict key, in document order.

    Document order matters: placeholders are numbered as values are met (`<EMAIL_1>` first).
    """

    def __init__(self, redact_text: Callable[[str], str], budget: RedactionBudget) -> None:
        self._redact_text = redact_text
        self._budget = budget

    def value(self, value: Any, depth: int = 0) -> tuple[Any, bool]:
        """A redacted copy of `value` (tuples become lists), and whether any text in it changed."""
        root: list[Any] = [None]
        tasks: list[_Task] = [(value, root, 0, depth, False)]
        changed = False
        while tasks:
            item, parent, slot, level, is_key = tasks.pop()
            if is_key:
                key = self._key(item) if isinstance(item, str) else item
                changed = changed or key != item
                parent[key] = None
                tasks.append((slot, parent, key, level, False))
                continue
            parent[slot], is_changed = self._node(item, level, tasks)
            changed = changed or is_changed
        return root[0], changed

    def _node(self, item: Any, level: int, tasks: list[_Task]) -> tuple[Any, bool]:
        """The node's new value; a container comes back empty, its children queued to fill it."""
        if isinstance(item, str):
            return self._string(item, level)
        if not isinstance(item, (dict, list, tuple)):
            return item, False  # numbers, booleans, null: nothing to redact
        if self._budget.is_spent():
            return self._budget.withhold(item), True
        if level >= MAX_DEPTH:
            return f"<NESTED DEEPER THAN {MAX_DEPTH} LEVELS: {_text_bytes(item)} bytes withheld>", True
        if isinstance(item, dict):
            new: dict[Any, Any] = {}
            tasks.extend((key, new, child, level + 1, True) for key, child in reversed(item.items()))
            return new, False
        items: list[Any] = [None] * len(item)
        tasks.extend((child, items, i, level + 1, False) for i, child in reversed(list(enumerate(item))))
        return items, False

    def _key(self, key: str) -> str:
        """A dict key is redacted as text (a user's address can be a key), never parsed as JSON."""
        return self._budget.withhold(key) if self._budget.is_spent() else self._text(key)

    def _string(self, text: str, level: int) -> tuple[str, bool]:
        """Strings holding JSON (tool-call `arguments`) are parsed and walked, so values inside escaped
        text (`"Phone:\\n0490 75 40 81"`) are found; they are re-serialised only when something changed."""
        if self._budget.is_spent():
            return self._budget.withhold(text), True
        stripped = text.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            try:
                parsed = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                pass  # not JSON after all, or nested past orjson's limit: redact it as text
            else:
                walked, changed = self.value(parsed, level + 1)
                return (json.dumps(walked, ensure_ascii=False), True) if changed else (text, False)
        redacted = self._text(text)
        return redacted, redacted != text

    def _text(self, text: str) -> str:
        if len(text) <= _PIECE_CHARS:
            return self._redact_text(text)
        pieces: list[str] = []
        start = 0
        while start < len(text):
            if self._budget.is_spent():
                pieces.append(self._budget.withhold(text[start:]))
                break
            end = _piece_end(text, start)
            pieces.append(self._redact_text(text[start:end]))
            start = end
        return "".join(pieces)


def _piece_end(text: str, start: int) -> int:
    end = start + _PIECE_CHARS
    if end >= len(text):
        return len(text)
    for separator in ("\n", " "):
        cut = text.rfind(separator, end - _PIECE_SLACK, end)
        if cut != -1:
            return cut + 1
    return end


def _text_bytes(value: Any) -> int:
    """The UTF-8 size of the strings and keys in `value` (iteratively: it may be nested deep)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total
