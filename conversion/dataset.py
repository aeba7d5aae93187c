"""Fine-tuning datasets (conversion step S5): a task's logged calls as OpenAI chat fine-tuning examples.

What a miniature should learn is the teacher's work, so by default an example is a call of the task
that a frontier-tier model answered with status 200 and a finished reply (`stop` or `tool_calls`).
The call log gives the payloads redacted (`<EMAIL_1>`); they stay that way here.

A call is the task's when its record names the task (or an id merged into it), or, for calls logged
before the catalogue existed (`unknown`), when its request's signature is one that the catalogue
lists for this task and no other. The calls that are not are counted by why (`Counts`): another
task's, an `unknown` call whose signature this task shares with others or that no task lists, a task
id the catalogue doesn't have; an export that comes out empty can then say what to do.

One example is one JSONL line in OpenAI's chat fine-tuning format: the request's messages, then the
reply; the offered tools (and `parallel_tool_calls`) when the request had them. Sampling parameters
and the rest are not part of the format and are dropped. Tool-call ids are renumbered `call_1`,
`call_2`, ... in each example (they are random per call and carry nothing to learn), and assistant
turns of the history get `"weight": 0`: some other model, maybe a miniature, wrote them.

>>> builder = DatasetBuilder(task, catalogue, Selection())  # doctest: +SKIP
>>> builder.add(rows)  # pages of `logs export` rows, oldest first  # doctest: +SKIP
>>> dataset = builder.finish(validation=0.1, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from minigate.conversion.dataset_split import split
from minigate.conversion.near_duplicates import near_duplicates
from minigate.router.catalogue import Catalogue, Task
from minigate.router.features import estimate_tokens
from minigate.router.signature import message_text, signature

__all__ = ["DROP_REASONS", "NEAR_DUPLICATE_JACCARD", "Counts", "Dataset", "DatasetBuilder", "DropReason", "Example",
           "Selection"]

DropReason = Literal["error_status", "not_frontier", "no_payload", "no_reply", "incomplete_reply", "inline_media",
                     "no_feedback", "low_feedback", "too_long"]
DROP_REASONS: dict[DropReason, str] = {
    "error_status": "status was not 200",
    "not_frontier": "not served by a frontier-tier model",
    "no_payload": "no readable request payload",
    "no_reply": "no assistant reply",
    "incomplete_reply": "reply not finished (length, content filter, cut stream)",
    "inline_media": "inline media (the log keeps only a reference)",
    "no_feedback": "no metadata.feedback",
    "low_feedback": "feedback under the minimum",
    "too_long": "prompt + completion over the token limit",
}
NEAR_DUPLICATE_JACCARD = 0.9

_FINISHED = ("stop", "tool_calls", "function_call")
_MESSAGE_KEYS = ("content", "name", "tool_call_id", "function_call")
_MEDIA_REFERENCE = re.compile(r"<(?:data:\S*|base64) \d+ bytes sha256:[0-9a-f]{16}>")


@dataclass(frozen=True)
class Selection:
    """Which of a task's calls make examples: by default, the frontier's finished replies with status 200.

    >>> Selection(all_tiers=True, max_tokens=4000).include_errors
    False
    """

    all_tiers: bool = False
    include_errors: bool = False  # keep a call whose status wasn't 200 when it still holds a finished reply
    max_tokens: int | None = None
    min_feedback: float | None = None  # stored feedback (its mean), else the request's `metadata.feedback`


@dataclass(frozen=True, slots=True)
class Example:
    """One fine-tuning line and what the card and the split need to know about it."""

    request_id: str
    started_at: float
    model: str
    line: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    stratum: str  # the signature, or the label for a label-like task
    text: str  # the conversation's varying part, compared for near-duplicates


@dataclass
class Counts:
    """What happened to the calls read: of the task, dropped by reason, duplicates removed; and why the
    calls that are not the task's aren't (a task's call hidden among them is what an empty export misses)."""

    read: int = 0
    of_task: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    exact_duplicates: int = 0
    near_duplicates: int = 0
    other_tasks: int = 0  # logged as, or matched by signature to, another task
    shared: Counter[tuple[str, ...]] = field(default_factory=Counter)  # `unknown`, signature this task shares
    unmatched: int = 0  # `unknown`, and no task lists its signature (or it has no payload to sign)
    unmatched_before_catalogue: int = 0  # of those, logged before the catalogue was discovered
    unknown_ids: Counter[str] = field(default_factory=Counter)  # logged under a task id the catalogue doesn't have

    @property
    def selected(self) -> int:
        return self.of_task - sum(self.dropped.values())


@dataclass(frozen=True)
class Dataset:
    """A task's examples, split; the counts say what became of every call read."""

    task: Task
    train: list[Example]
    validation: list[Example]
    counts: Counts
    stratified_by: Literal["label", "signature"]
    names: dict[str, str]  # id -> name of every task of the catalogue, to name those `counts.shared` lists
    discovered_at: str  # the catalogue's


class DatasetBuilder:
    """Collects a task's examples page by page (exact duplicates go at once), then dedups and splits.

    >>> builder = DatasetBuilder(task, catalogue, Selection())  # doctest: +SKIP
    >>> builder.add(page); builder.finish(validation=0.1, seed=0).counts.near_duplicates  # doctest: +SKIP
    3
    """

    def __init__(self, task: Task, catalogue: Catalogue, selection: Selection) -> None:
        holders: dict[str, list[str]] = {}
        for entry in catalogue.tasks:
            for sig in entry.signatures:
                holders.setdefault(sig, []).append(entry.id)
        self.task = task
        self.selection = selection
        self.counts = Counts()
        self._catalogue = catalogue
        self._holders = {sig: tuple(sorted(ids)) for sig, ids in holders.items()}
        self._discovered = _timestamp(catalogue.discovered_at)
        self._by_label = task.output_kind == "label"
        self._examples: list[Example] = []
        self._seen: set[bytes] = set()

    @property
    def collected(self) -> int:
        """Examples so far (exact duplicates already left out)."""
        return len(self._examples)

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Take a page of `logs export` rows."""
        for row in rows:
            self.counts.read += 1
            if not self._is_task(row):
                continue
            self.counts.of_task += 1
            made = _example(row, self.selection, by_label=self._by_label)
            if isinstance(made, str):
                self.counts.dropped[made] += 1
                continue
            key = hashlib.blake2b(orjson.dumps(made.line, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
            if key in self._seen:
                self.counts.exact_duplicates += 1
            else:
                self._seen.add(key)
                self._examples.append(made)

    def finish(self, validation: float, seed: int, progress: Callable[[int], object] = lambda n: None) -> Dataset:
        """Drop near-duplicates (the later of a pair goes), then split train/validation by stratum."""
        duplicate_of = near_duplicates([example.text for example in self._examples], NEAR_DUPLICATE_JACCARD,
                                       progress=progress)
        kept = [example for example, twin in zip(self._examples, duplicate_of) if twin is None]
        self.counts.near_duplicates = len(self._examples) - len(kept)
        train, held_out = split(kept, [example.stratum for example in kept], validation, seed)
        return Dataset(self.task, train, held_out, self.counts, "label" if self._by_label else "signature",
                       {entry.id: entry.name for entry in self._catalogue.tasks}, self._catalogue.discovered_at)

    def _is_task(self, row: Mapping[str, Any]) -> bool:
        """Whether the call is the task's; a call that isn't is counted under why not."""
        task = row.get("task")
        if isinstance(task, str) and task != "unknown":
            owner = self._catalogue.owner(task)
            if owner is None:
                self.counts.unknown_ids[task] += 1
            elif owner != self.task.id:
                self.counts.other_tasks += 1
            return owner == self.task.id
        request = row.get("request")
        sign = signature(request) if isinstance(request, dict) and isinstance(request.get("messages"), list) else None
        holders = self._holders.get(sign, ()) if sign is not None else ()
        if holders == (self.task.id,):
            return True
        if self.task.id in holders:
            self.counts.shared[holders] += 1
        elif holders:
            self.counts.other_tasks += 1
        else:  # no payload to sign, or a signature no task lists
            self.counts.unmatched += 1
            started = row.get("started_at")
            if self._discovered is not None and isinstance(started, int | float) and started < self._discovered:
                self.counts.unmatched_before_catalogue += 1
        return False


def _timestamp(iso: str) -> float | None:
    """The catalogue's `discovered_at` as unix seconds; None when it isn't a date (an old or a test catalogue)."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _example(row: Mapping[str, Any], selection: Selection, *, by_label: bool) -> Example | DropReason:
    """The call's example, or the first reason it makes none."""
    usable = _usable(row, selection)
    if isinstance(usable, str):
        return usable
    request, reply = usable
    ids: dict[str, str] = {}
    history = [_message(message, ids, is_reply=False) for message in request["messages"] if isinstance(message, dict)]
    answer = _message(reply, ids, is_reply=True)
    prompt, completion = _tokens(row, history, request.get("tools"), answer)
    if selection.max_tokens is not None and prompt + completion > selection.max_tokens:
        return "too_long"
    return Example(str(row.get("request_id")), float(row.get("started_at") or 0.0), str(row.get("model")),
                   _line(request, [*history, answer]), prompt, completion, _stratum(request, answer, by_label),
                   _varying_text(history, answer))


def _usable(row: Mapping[str, Any], selection: Selection) -> tuple[dict[str, Any], dict[str, Any]] | DropReason:
    """The request and the reply of a call that passes the selection (but for its size), or why not."""
    if row.get("status") != 200 and not selection.include_errors:
        return "error_status"
    if row.get("tier") != "frontier" and not selection.all_tiers:
        return "not_frontier"
    request = row.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return "no_payload"  # not logged, or not readable with the configured key
    reply = _reply(row.get("response"))
    if isinstance(reply, str):
        return reply
    if _MEDIA_REFERENCE.search(orjson.dumps(request["messages"]).decode()):
        return "inline_media"
    if selection.min_feedback is not None:
        feedback = _feedback(row, request)
        if feedback is None or feedback < selection.min_feedback:
            return "no_feedback" if feedback is None else "low_feedback"
    return request, reply


def _line(request: Mapping[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The fine-tuning line: the messages, and the tools offered; no other request parameter."""
    line: dict[str, Any] = {"messages": messages}
    for key in ("tools", "functions"):
        if request.get(key):
            line[key] = request[key]
    if request.get("tools") and isinstance(request.get("parallel_tool_calls"), bool):
        line["parallel_tool_calls"] = request["parallel_tool_calls"]
    return line


def _reply(response: Any) -> dict[str, Any] | DropReason:
    """The first choice's assistant message, if finished and not empty."""
    choices = response.get("choices") if isinstance(response, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if not isinstance(message, dict) or "error" in choice:
        return "no_reply"
    if not (isinstance(message.get("content"), str) and message["content"].strip()) \
            and not message.get("tool_calls") and not message.get("function_call"):
        return "no_reply"
    return message if choice.get("finish_reason") in _FINISHED else "incomplete_reply"


def _message(message: Mapping[str, Any], ids: dict[str, str], *, is_reply: bool) -> dict[str, Any]:
    """A message in the fine-tuning format: role (developer is system there), content, tool calls, ids."""
    role = "assistant" if is_reply else message.get("role")
    cleaned: dict[str, Any] = {"role": "system" if role == "developer" else role}
    for key in _MESSAGE_KEYS:
        if message.get(key) is not None:
            cleaned[key] = message[key]
    if isinstance(cleaned.get("tool_call_id"), str):
        cleaned["tool_call_id"] = _renumbered(cleaned["tool_call_id"], ids)
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, dict)]
    if calls:
        cleaned["tool_calls"] = [
            {"id": _renumbered(str(call.get("id")), ids), "type": call.get("type", "function"),
             "function": {key: value for key, value in (call.get("function") or {}).items()
                          if key in ("name", "arguments")}}
            for call in calls
        ]
    if role == "assistant" and not is_reply:
        cleaned["weight"] = 0
    return cleaned


def _renumbered(call_id: str, ids: dict[str, str]) -> str:
    return ids.setdefault(call_id, f"call_{len(ids) + 1}")


def _feedback(row: Mapping[str, Any], request: Mapping[str, Any]) -> float | None:
    """The call's stored ratings (`POST /v1/minigate/feedback`; their mean), else the request's
    `metadata.feedback` as a number (OpenAI's metadata values are strings, so "0.8" counts too)."""
    ratings = row.get("feedback")
    if isinstance(ratings, list) and ratings:
        return sum(float(rating["score"]) for rating in ratings) / len(ratings)
    metadata = request.get("metadata")
    value = metadata.get("feedback") if isinstance(metadata, dict) else None
    if isinstance(value, bool):
        return None
    try:
        return float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        return None


def _tokens(row: Mapping[str, Any], history: list[dict[str, Any]], tools: Any,
            answer: dict[str, Any]) -> tuple[int, int]:
    """Logged prompt and completion tokens; an estimate where the upstream reported none."""
    logged = [row.get("input_tokens"), row.get("output_tokens")]
    prompt, completion = (value if isinstance(value, int) and not isinstance(value, bool) else None
                          for value in logged)
    if prompt is None:
        prompt = estimate_tokens(" ".join(_turn_text(message) for message in history)
                                 + (orjson.dumps(tools).decode() if tools else ""))
    if completion is None:
        completion = estimate_tokens(_turn_text(answer))
    return prompt, completion


def _stratum(request: Mapping[str, Any], answer: Mapping[str, Any], by_label: bool) -> str:
    if not by_label:
        return signature(request)
    calls = answer.get("tool_calls") or ()
    if calls:
        return "tool:" + ",".join(sorted(str(call["function"].get("name")) for call in calls))
    return " ".join(message_text(answer.get("content")).lower().split())


def _varying_text(history: list[dict[str, Any]], answer: dict[str, Any]) -> str:
    """What differs between calls of one task: every turn but the system prompt (the task's template)."""
    return "\n".join(_turn_text(message) for message in [*history, answer] if message["role"] != "system")


def _turn_text(message: Mapping[str, Any]) -> str:
    calls = message.get("tool_calls") or ()
    called = [f"{call['function'].get('name', '')} {call['function'].get('arguments', '')}" for call in calls]
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        called.append(f"{legacy.get('name', '')} {legacy.get('arguments', '')}")
    return " ".join([message_text(message.get("content")), *called])
