"""Reading the JSONL files the offline commands take (request bodies, `logs export` lines) line by line.

One reader, so `route score`, `replay` and `tasks discover` number lines, skip blanks and word their
complaints about bad lines the same way.

>>> list(json_objects(['{"model": "m"}', "", "[1]", "{"]))[:2]
[(0, {'model': 'm'}), (2, 'line 3: not a JSON object')]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Skipped", "json_objects"]


@dataclass(frozen=True, slots=True)
class Skipped:
    """An input line that holds no usable request, and why (reported, never silently dropped)."""

    id: str
    reason: str


def json_objects(lines: Iterable[str | bytes]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(0-based line number, the line's JSON object) per non-blank line, or (number, why it is not one)."""
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, f"line {number + 1}: not JSON ({exc})"
            continue
        yield number, value if isinstance(value, dict) else f"line {number + 1}: not a JSON object"
