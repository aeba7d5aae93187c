"""Whether an answer agrees with the reference reply, judged by what kind of reply the task gives.

A label agrees when it is the same label (case, surrounding space and a final full stop aside). JSON
agrees when it parses and is the same value (key order aside; a Markdown fence is allowed). A tool
call agrees when it calls the same functions with arguments equal as JSON. Free text agrees when
MiniLM puts the two within `SIMILAR` cosine similarity: wording may differ, meaning should not.

Models answer as text: a tool call comes back as `serving.chat_render` writes one, a
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` block, or a bare JSON object with "name"
and "arguments".

>>> agrees("label", {"role": "assistant", "content": "card_arrival"}, " Card_arrival.")
True
>>> agrees("json", {"role": "assistant", "content": '{"a": 1, "b": [2]}'}, '```json\\n{"b": [2], "a": 1}\\n```')
True
"""

from __future__ import annotations

from typing import Any

import orjson

from minigate.router.catalogue import OutputKind
from minigate.serving.chat_render import tool_calls_in_text

__all__ = ["SIMILAR", "agrees", "is_valid", "tool_calls_in"]

SIMILAR = 0.8


def agrees(kind: OutputKind, reference: dict[str, Any], answer: str, similarity: float | None = None) -> bool:
    """Whether `answer` (a model's text) says what `reference` (an assistant message) says.

    For free text, pass the MiniLM cosine `similarity` of the two texts.
    """
    if kind == "tool_call":
        wanted = _reference_calls(reference)
        return wanted is not None and tool_calls_in(answer) == wanted
    expected = str(reference.get("content") or "")
    if kind == "label":
        return _label(answer) == _label(expected)
    if kind == "json":
        got, want = _json(answer), _json(expected)
        return got is not _INVALID and got == want
    return similarity is not None and similarity >= SIMILAR


def is_valid(kind: OutputKind, answer: str) -> bool:
    """Whether the answer has the reply's form at all: parseable JSON, a parseable tool call, any text."""
    if kind == "json":
        return _json(answer) is not _INVALID
    if kind == "tool_call":
        return tool_calls_in(answer) is not None
    return bool(answer.strip())


def tool_calls_in(text: str) -> list[tuple[str, Any]] | None:
    """(name, arguments) of each call written in `text`; None when none parses."""
    if "<tool_call>" in text:
        return tool_calls_in_text(text)
    value = _json(text)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    return [(value["name"], value.get("arguments", {}))]


def _reference_calls(reference: dict[str, Any]) -> list[tuple[str, Any]] | None:
    calls = []
    for call in reference.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            return None
        arguments = function.get("arguments", "{}")
        parsed = _json(arguments) if isinstance(arguments, str) else arguments
        calls.append((str(function.get("name")), parsed))
    return calls or None


def _label(text: str) -> str:
    return text.strip().strip("\"'`").rstrip(".").strip().casefold()


class _Invalid:
    """Not JSON; distinct from a JSON null."""


_INVALID: Any = _Invalid()


def _json(text: str) -> Any:
    unfenced = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        return orjson.loads(unfenced)
    except orjson.JSONDecodeError:
        return _INVALID
