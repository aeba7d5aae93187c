"""What a call record keeps of the conversation: the request as sent, and the reply reassembled.

A streamed reply is kept as the message it amounts to (content and tool calls joined, finish reason,
usage), not as its chunks: that is what datasets and reviewers need. Runs where sealing runs (`minigate.logger.seal`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Reply", "reply_from_body", "reply_from_stream", "request_payload"]

_INLINE_LIMIT = 256  # characters; shorter data URLs are kept as they are


@dataclass
class Reply:
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None
    whole: dict[str, Any] | None = None  # a body with no choices (an error, embeddings), kept as sent

    def payload(self) -> dict[str, Any]:
        return self.whole if self.whole is not None else {"choices": self.choices}

    @property
    def tokens(self) -> tuple[int | None, int | None]:
        """Counts from `usage`, where they are counts: an upstream's garbage must not reach the store."""
        usage = self.usage or {}
        return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def request_payload(raw: bytes) -> dict[str, Any]:
    """The client's body: messages, tools and every parameter, as sent, with inline media by reference.

    An image or audio clip sent inline (a `data:` URL, `input_audio.data`) is kept as its media type,
    size and SHA-256, not its bytes: the log stays small, and the same file can still be recognised.
    A body orjson cannot read (nested past its 1,024 levels) is kept as text, to be redacted as text.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"raw": raw.decode("utf-8", "replace")}
    return _without_media(body) if isinstance(body, dict) else {"body": body}


def _without_media(value: Any) -> Any:
    """A copy with inline media replaced by references; iterative, since a body may nest deep."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        item, parent, slot = stack.pop()
        if isinstance(item, dict):
            parent[slot] = copy = {}
            for key, child in item.items():  # keys keep their order: a slot first, its value later
                is_media = key == "data" and "format" in item
                copy[key] = _media_reference(child) if is_media else None
                if not is_media:
                    stack.append((child, copy, key))
        elif isinstance(item, list):
            parent[slot] = items = [None] * len(item)
            stack.extend((child, items, i) for i, child in enumerate(item))
        elif isinstance(item, str) and item.startswith("data:") and len(item) > _INLINE_LIMIT:
            parent[slot] = _media_reference(item)
        else:
            parent[slot] = item
    return root[0]


def _media_reference(value: Any) -> Any:
    if not isinstance(value, str) or len(value) <= _INLINE_LIMIT:
        return value
    header, _, data = value.partition(",") if value.startswith("data:") else ("base64", "", value)
    digest = hashlib.sha256(data.encode()).hexdigest()[:16]
    size = len(data) * 3 // 4 - data[-2:].count("=") if header.endswith("base64") else len(data)
    return f"<{header} {size} bytes sha256:{digest}>"


def reply_from_body(raw: bytes) -> Reply:
    """A non-streamed chat.completion or text completion (its choices as the client got them, logprobs
    included), embeddings (without their vectors), or an error body (kept whole, as sent)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Reply([], None, {"raw": raw.decode("utf-8", "replace")})
    if not isinstance(body, dict):
        return Reply([], None, {"raw": body})
    if body.get("object") == "list" and isinstance(body.get("data"), list):
        usage = _usage(body)  # embeddings write nothing: no completion tokens
        return Reply([], usage and {**usage, "completion_tokens": 0},
                     {**body, "data": [_without_vector(item) for item in _dicts(body["data"])]})
    if not isinstance(body.get("choices"), list):  # an error, or a native upstream's Responses object
        return Reply([], _usage(body) if body.get("object") == "response" else None, body)
    choices = [{key: c[key] for key in _CHOICE_KEYS if key in c} for c in _dicts(body["choices"])]
    return Reply(choices, _usage(body))


_CHOICE_KEYS = ("index", "message", "text", "logprobs", "finish_reason")


def _without_vector(item: dict[str, Any]) -> dict[str, Any]:
    """An embedding's entry with the vector's size in place of the vector: the log needs neither its
    hundreds of floats nor what they could reveal of the text."""
    vector = item.get("embedding")
    if isinstance(vector, list):
        return {**item, "embedding": f"<{len(vector)} floats>"}
    if isinstance(vector, str):  # encoding_format: base64, four bytes a float
        return {**item, "embedding": f"<{len(vector) * 3 // 4 // 4} floats, base64>"}
    return item


def reply_from_stream(chunks: list[bytes]) -> Reply:
    """Join an SSE stream of chat.completion.chunk events into the messages it delivered.

    Whatever the upstream sent is taken only where it has the expected type: a garbled chunk adds
    nothing, and never stops the reply's other chunks from being kept.
    """
    messages: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] | None = None
    final: dict[str, Any] | None = None  # a native Responses stream's final response
    for event in _events(b"".join(chunks)):
        usage = _usage(event) or usage
        if event.get("type") in ("response.completed", "response.incomplete") and isinstance(event.get("response"), dict):
            final = event["response"]
            usage = _usage(final) or usage
        for choice in _dicts(event.get("choices")):
            _merge_delta(messages.setdefault(_index(choice), _empty()), choice)
        if "error" in event:
            messages.setdefault(0, _empty())["error"] = event["error"]
    choices = [{"index": i, **_finished(m)} for i, m in sorted(messages.items())]
    return Reply(choices, usage, final if not choices else None)


def _events(body: bytes) -> list[dict[str, Any]]:
    events = []
    for line in body.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]" or not data:
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _empty() -> dict[str, Any]:
    return {"content": [], "tool_calls": {}, "finish_reason": None, "role": "assistant"}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _index(item: dict[str, Any]) -> int:
    index = item.get("index", 0)
    return index if isinstance(index, int) else 0


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


def _usage(body: dict[str, Any]) -> dict[str, Any] | None:
    """The body's usage in chat's terms; the Responses API's (a native upstream's) says input and output."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" not in usage and "input_tokens" in usage:
        return {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage.get("output_tokens")}
    return usage


def _merge_delta(message: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = choice.get("delta")
    delta = delta if isinstance(delta, dict) else {}
    if content := _text(delta, "content") or _text(choice, "text"):  # chat, or a text completion's chunk
        message["content"].append(content)
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        message.setdefault("logprobs", []).extend(logprobs["content"])
    for call in _dicts(delta.get("tool_calls")):
        slot = message["tool_calls"].setdefault(_index(call), {"id": None, "name": "", "arguments": []})
        slot["id"] = _text(call, "id") or slot["id"]
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        slot["name"] += _text(function, "name")
        slot["arguments"].append(_text(function, "arguments"))
    if choice.get("finish_reason"):
        message["finish_reason"] = choice["finish_reason"]


def _finished(message: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": "".join(c["arguments"])}}
        for _, c in sorted(message["tool_calls"].items())
    ]
    finished: dict[str, Any] = {
        "message": {"role": "assistant", "content": "".join(message["content"]) or None, "tool_calls": calls or None},
        "finish_reason": message["finish_reason"],
    }
    if "logprobs" in message:
        finished["logprobs"] = {"content": message["logprobs"]}
    if "error" in message:
        finished["error"] = message["error"]
    return finished
