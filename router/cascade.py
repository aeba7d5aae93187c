"""Whether a miniature's reply must be escalated: the checks behind `escalate_on`.

Pure code over the request and the reply, no I/O. The gateway runs it on a miniature's reply before
any byte reaches the client; a reason means the client gets the frontier model's answer instead, and
never sees the miniature's failure. `check_reply` judges a whole reply, read once into a `ReplyView`
(`parse_chat_reply`: every upstream answers the gateway in OpenAI's chat shape, whatever ingress the
client used); `StreamCheck` judges a chat stream as it arrives and settles as early as it can, so the
gateway holds a stream only that long.

Beyond what the request itself asks for (its tools, its `response_format`), the checks know the task
the request was matched to, as a `TaskContract`: the closed set of replies of a label task
(`invalid_label`), and the JSON schema of a json task, applied when the request names no
`response_format` of its own (`invalid_json`). Agents often ask for a label or a JSON document in the
prompt alone; the catalogue knows what the step's replies must be even when the request doesn't say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, UnknownType

__all__ = ["CONTENT_CHECKS", "ESCALATION_REASONS", "NO_CONTRACT", "EscalationReason", "ReplyView", "StreamCheck",
           "TaskContract", "check_reply", "normalise_label", "parse_chat_reply"]

EscalationReason = Literal["error", "timeout", "invalid_json", "invalid_tool_call", "invalid_label", "empty"]
ESCALATION_REASONS: tuple[EscalationReason, ...] = ("error", "timeout", "invalid_json", "invalid_tool_call",
                                                    "invalid_label", "empty")
# The checks that read the reply's content; the others are about the call failing.
CONTENT_CHECKS = frozenset({"invalid_json", "invalid_tool_call", "invalid_label", "empty"})


def normalise_label(text: str | None) -> str:
    """A label reply as checks and shadow verdicts compare it: case, surrounding quotes and spaces, runs
    of spaces and a trailing full stop don't count, so a model's "Billing." means the label `billing`.

    >>> normalise_label('  "Card  arrived." ')
    'card arrived'
    """
    value = " ".join((text or "").split()).strip("\"'`").strip()
    return value.removesuffix(".").rstrip().casefold()


@dataclass(frozen=True, slots=True)
class TaskContract:
    """What the catalogue knows a matched task's replies must be: one of `labels` (normalised), or a
    JSON document matching `schema`. Empty for an unknown task, or one with neither.

    >>> contract = TaskContract.of(["Billing", "shipping"], None)
    >>> sorted(contract.labels)
    ['billing', 'shipping']
    >>> check_reply({}, ReplyView("billing."), frozenset({"invalid_label"}), contract) is None
    True
    """

    labels: frozenset[str] = frozenset()
    schema: Mapping[str, Any] | None = None
    kind: str | None = None  # the catalogue's output kind (label, json, tool_call, free_text): how shadows judge

    @classmethod
    def of(cls, labels: Iterable[str], schema: Mapping[str, Any] | None, kind: str | None = None) -> TaskContract:
        """The contract of a catalogue task's `labels` (as logged), `schema` and output kind."""
        return cls(frozenset(normalise_label(label) for label in labels), schema, kind)


NO_CONTRACT = TaskContract()


@dataclass(frozen=True, slots=True)
class ReplyView:
    """What the checks read of a whole reply: its text and its tool calls (each `{"function": {"name",
    "arguments"}}`, as the upstream sent it: checking it is the point).

    >>> parse_chat_reply(b'{"choices": [{"message": {"content": "Hi"}}]}')
    ReplyView(content='Hi', tool_calls=())
    """

    content: str | None
    tool_calls: Sequence[Any] = ()


def parse_chat_reply(reply: bytes) -> ReplyView | None:
    """The first choice of a chat completion; None when the bytes are not one."""
    try:
        message = orjson.loads(reply)["choices"][0]["message"]
        content, calls = message.get("content"), message.get("tool_calls")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None
    # Anything but a list of calls is a malformed call: present, so `empty` doesn't apply, and never valid.
    tool_calls = tuple(calls) if isinstance(calls, list) else (None,) if calls else ()
    return ReplyView(content if isinstance(content, str) else None, tool_calls)


def check_reply(request: Mapping[str, Any], reply: ReplyView | None, policy: frozenset[str],
                contract: TaskContract = NO_CONTRACT) -> EscalationReason | None:
    """The first failed check among those the policy names, or None when the reply may be relayed.

    `reply` None: the upstream's bytes were no reply at all (`parse_chat_reply`), an `error`.
    """
    if reply is None:
        return "error" if "error" in policy else None
    content, calls = reply.content, reply.tool_calls
    if "empty" in policy and not (content and content.strip()) and not calls:
        return "empty"
    if "invalid_tool_call" in policy and calls and not _valid_calls(calls, request.get("tools")):
        return "invalid_tool_call"
    if "invalid_json" in policy and not calls and not _valid_json(content, _response_format(request, contract)):
        return "invalid_json"
    if "invalid_label" in policy and not calls and contract.labels \
            and normalise_label(content or "") not in contract.labels:
        return "invalid_label"
    return None


class StreamCheck:
    """Feeds on a miniature's SSE stream until it can tell whether the stream may reach the client.

    `feed` and `end` return None while undecided (keep holding), "relay" once the stream passed, or the
    reason to escalate. What settles it:
    - content starts (a non-blank content delta): not `empty`; with a JSON `response_format` the first
      character must also open a JSON value, else `invalid_json`. The rest of the content is relayed
      unchecked: a stream that starts as JSON and breaks later reaches the client (the trade-off for not
      holding the whole answer; send the request unstreamed for the full check);
    - tool calls: held until the choice finishes, then every call is checked like an unstreamed one
      (name offered, arguments valid JSON matching the tool's parameters). A client can't act on a tool
      call before its arguments are complete, so holding it costs nothing it could have used;
    - a label task (`invalid_label` with a contract that has labels): the content is held until the
      choice finishes and then compared whole, like a tool call: a label is a word or two, so holding it
      costs the client nothing, and its first characters can't tell `billing` from `billing-dispute`.
      Content that grows longer than the longest label settles `invalid_label` at once (no ending can
      make it one), so a miniature rambling on is never held to its end;
    - a json task's schema (the contract's, when the request names no `response_format`): the same
      first-character check as a JSON `response_format`, with the same trade-off;
    - a finish with neither content nor tool call: `empty`; an error event in the stream: `error`.

    >>> check = StreamCheck({"messages": []}, frozenset({"empty"}))
    >>> check.feed(b'data: {"choices": [{"delta": {"role": "assistant"}}]}\\n\\n') is None
    True
    >>> check.feed(b'data: {"choices": [{"delta": {"content": "Hi"}}]}\\n\\n')
    'relay'
    """

    def __init__(self, request: Mapping[str, Any], policy: frozenset[str],
                 contract: TaskContract = NO_CONTRACT) -> None:
        self._request = request
        self._policy = policy
        self._pending = b""  # an event split across chunks
        self._calls: dict[int, dict[str, str]] = {}  # tool call index -> name and arguments so far
        self._text = ""  # the content so far, while it is held
        response_format = _response_format(request, contract)
        kind = response_format.get("type") if isinstance(response_format, Mapping) else None
        self._json_opens = {"json_object": "{", "json_schema": "{["}.get(kind or "") if "invalid_json" in policy else None
        self._labels = contract.labels if "invalid_label" in policy and contract.labels else None
        self._longest = max(map(len, self._labels)) if self._labels else 0

    def feed(self, data: bytes) -> EscalationReason | Literal["relay"] | None:
        events = (self._pending + data).split(b"\n\n")
        self._pending = events.pop()
        for event in events:
            verdict = self._event(event)
            if verdict is not None:
                return verdict
        return None

    def end(self) -> EscalationReason | Literal["relay"]:
        """The stream ended while still undecided."""
        verdict = self._event(self._pending) if self._pending.strip() else None
        return verdict or self._finished()

    def _event(self, event: bytes) -> EscalationReason | Literal["relay"] | None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return self._finished()
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                return "error" if "error" in self._policy else "relay"
            verdict = self._chunk(chunk)
            if verdict is not None:
                return verdict
        return None

    def _chunk(self, chunk: Any) -> EscalationReason | Literal["relay"] | None:
        if not isinstance(chunk, Mapping) or "error" in chunk:
            return "error" if "error" in self._policy else "relay"
        choices = chunk.get("choices") or [None]
        choice = _mapping(choices[0] if isinstance(choices, list) else None)
        delta = _mapping(choice.get("delta"))
        content = delta.get("content")
        if isinstance(content, str) and not self._calls:
            verdict = self._content(content)
            if verdict is not None:
                return verdict
        for call in delta.get("tool_calls") or []:
            if isinstance(call, Mapping):
                self._add_call_delta(call)
        if choice.get("finish_reason"):
            return self._finished()
        return None

    def _content(self, content: str) -> EscalationReason | Literal["relay"] | None:
        """Content starts (the JSON check), or grows while a label is held."""
        started = bool(self._text.strip())
        self._text += content
        if not self._text.strip():
            return None
        if not started and self._json_opens and self._text.lstrip()[0] not in self._json_opens:
            return "invalid_json"
        if self._labels is None:
            return "relay"
        # What comes later only lengthens the normalised text (see normalise_label), never shortens it.
        return "invalid_label" if len(normalise_label(self._text)) > self._longest else None

    def _add_call_delta(self, call: Mapping[str, Any]) -> None:
        index = call.get("index")
        held = self._calls.setdefault(index if isinstance(index, int) else len(self._calls), {"name": "", "arguments": ""})
        function = _mapping(call.get("function"))
        for part in ("name", "arguments"):
            if isinstance(function.get(part), str):
                held[part] += function[part]

    def _finished(self) -> EscalationReason | Literal["relay"]:
        if self._calls:
            calls = [{"function": call} for _, call in sorted(self._calls.items())]
            if "invalid_tool_call" in self._policy and not _valid_calls(calls, self._request.get("tools")):
                return "invalid_tool_call"
            return "relay"
        if "empty" in self._policy and not self._text.strip():
            return "empty"
        if self._labels is not None and normalise_label(self._text) not in self._labels:
            return "invalid_label"
        return "relay"


def _mapping(value: Any) -> Mapping[str, Any]:
    """The value when it is a JSON object, else an empty one: streamed chunks are the upstream's to get wrong."""
    return value if isinstance(value, Mapping) else {}


def _response_format(request: Mapping[str, Any], contract: TaskContract) -> Any:
    """The format a reply must have: the request's own, else the task's schema when it has one."""
    asked = request.get("response_format")
    if asked is not None or contract.schema is None:
        return asked
    return {"type": "json_schema", "json_schema": {"schema": contract.schema}}


def _valid_json(content: str | None, response_format: Any) -> bool:
    if not isinstance(response_format, Mapping) or response_format.get("type") not in ("json_object", "json_schema"):
        return True
    try:
        value = orjson.loads(content) if content is not None else None
    except orjson.JSONDecodeError:
        return False
    if response_format.get("type") == "json_object":
        return isinstance(value, dict)
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return value is not None and _conforms(value, schema)


def _valid_calls(calls: Sequence[Any], tools: Any) -> bool:
    offered = {
        tool["function"]["name"]: tool["function"].get("parameters")
        for tool in tools or []
        if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping) and "name" in tool["function"]
    }
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or function.get("name") not in offered:
            return False
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            return False
        if not _conforms(arguments, offered[function["name"]]):
            return False
    return True


def _conforms(value: Any, schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return True  # nothing to check against
    try:
        return Draft202012Validator(dict(schema)).is_valid(value)
    except (SchemaError, UnknownType):  # e.g. BFCL's Python-typed "dict" schemas
        return True  # a schema the client got wrong is not the miniature's failure
