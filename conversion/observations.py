"""The calls task discovery learns from: request bodies, and what is known about each call beyond its body.

They come from a Request JSONL file (one chat completions body per line, optional "id") or from the
call log (rows as `minigate logs export` writes them: `request_id`, `request`, `response`,
`input_tokens`, `output_tokens`, `cost_usd`, `model`, `tier`, ...); a file may mix both kinds of line.

>>> observation = logged_observation({"request_id": "r1", "request": {"messages": []}, "cost_usd": 0.002})
>>> observation.id, observation.cost
('r1', 0.002)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from minigate.conversion.jsonl import Skipped, json_objects
from minigate.router.catalogue import OutputKind

__all__ = ["Observation", "Skipped", "logged_observation", "output_kind", "read_observations", "requested_kind"]

_LABEL_CHARS = 40
_LABEL_WORDS = 4


@dataclass(frozen=True, slots=True)
class Observation:
    """One call: its request body and, when logged, tokens, cost, the model that served, the kind of reply
    and, for a reply that is a label, the label (stripped, case as logged: discovery builds label sets from it).

    >>> Observation("7", {"messages": [{"role": "user", "content": "hi"}]}, output_kind="label", label="billing").label
    'billing'
    """

    id: str
    body: dict[str, Any]
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    model: str | None = None
    tier: str | None = None
    output_kind: OutputKind | None = None
    label: str | None = None


def read_observations(lines: Iterable[str | bytes]) -> Iterator[Observation | Skipped]:
    """One Observation (or Skipped) per non-blank line of Request JSONL or `logs export` JSONL."""
    for number, value in json_objects(lines):
        if isinstance(value, str):
            yield Skipped(str(number), value)
        elif "request_id" in value and "request" in value:  # a request body has neither
            yield logged_observation(value)
        else:
            identifier = value.pop("id", number)
            yield Observation(str(identifier), value, output_kind=requested_kind(value))


def logged_observation(row: Mapping[str, Any]) -> Observation | Skipped:
    """A call-log row with its payloads opened, as `logs export` writes it."""
    request = row.get("request")
    request_id = str(row["request_id"])
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        why = request.get("error") if isinstance(request, dict) else "no payload was logged"
        return Skipped(request_id, f"no request to learn from: {why}")
    response: Any = row.get("response")
    kind = output_kind(response)
    # A label reply is a text message: output_kind has read that shape already.
    label = response["choices"][0]["message"]["content"].strip() if kind == "label" else None
    return Observation(
        request_id, request, _count(row.get("input_tokens")), _count(row.get("output_tokens")),
        _amount(row.get("cost_usd")), _string(row.get("model")), _string(row.get("tier")),
        kind or requested_kind(request), label,
    )


def output_kind(response: Any) -> OutputKind | None:
    """What a logged reply ({"choices": [{"message": ...}]}) is: a tool call, JSON, a short label or free text."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    if message.get("tool_calls") or message.get("function_call"):
        return "tool_call"
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        return None
    return _text_kind(content.strip())


def requested_kind(body: Mapping[str, Any]) -> OutputKind | None:
    """The kind of reply a request insists on (a JSON response format, a required tool call), if any."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        return "json"
    tool_choice = body.get("tool_choice")
    if body.get("tools") and (tool_choice == "required" or isinstance(tool_choice, dict)):
        return "tool_call"
    return None


def _text_kind(text: str) -> OutputKind:
    unfenced = text.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    if unfenced[:1] in ("{", "["):
        try:
            orjson.loads(unfenced)
            return "json"
        except orjson.JSONDecodeError:
            pass
    if len(text) <= _LABEL_CHARS and "\n" not in text and len(text.split()) <= _LABEL_WORDS:
        return "label"
    return "free_text"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _amount(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None
