"""What a call record keeps of the conversation: the request as sent, and the reply reassembled.

A streamed reply is kept as the message it amounts to (content and tool calls joined, finish reason,
usage), not as its chunks: that is what datasets and reviewers need. Runs where sealing runs (seal_pool.py).
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

    def payload(self) -> dict[str, Any]:
        return {"choices": self.choices}

    @property
    def tokens(self) -> tuple[int | None, int | None]:
        usage = self.usage or {}
        return usage.get("prompt_tokens"), usage.get("completion_tokens")


def request_payload(raw: bytes) -> dict[str, Any]:
    """The client's body: messages, tools and every parameter, as sent, with inline media by reference.

    An image or audio clip sent inline (a `data:` URL, `input_audio.data`) is kept as its media type,
    size and SHA-256, not its bytes: the log stays small, and the same file can still be recognised.
    """
    body = orjson.loads(raw)
    return _without_media(body) if isinstance(body, dict) else {"body": body}


def _without_media(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _media_reference(v) if k == "data" and "format" in value else _without_media(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_without_media(item) for item in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > _INLINE_LIMIT:
        return _media_reference(value)
    return value


def _media_reference(value: Any) -> Any:
    if not isinstance(value, str) or len(value) <= _INLINE_LIMIT:
        return value
    header, _, data = value.partition(",") if value.startswith("data:") else ("base64", "", value)
    digest = hashlib.sha256(data.encode()).hexdigest()[:16]
    size = len(data) * 3 // 4 - data[-2:].count("=") if header.endswith("base64") else len(data)
    return f"<{header} {size} bytes sha256:{digest}>"


def reply_from_body(raw: bytes) -> Reply:
    """A non-streamed chat.completion (or an error body, kept whole)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Reply([{"raw": raw.decode("utf-8", "replace")}], None)
    if not isinstance(body, dict):
        return Reply([{"raw": body}], None)
    if "choices" not in body:
        return Reply([body], None)
    choices = [
        {"index": c.get("index", 0), "message": c.get("message"), "finish_reason": c.get("finish_reason")}
        for c in body["choices"]
        if isinstance(c, dict)
    ]
    return Reply(choices, body.get("usage"))


def reply_from_stream(chunks: list[bytes]) -> Reply:
    """Join an SSE stream of chat.completion.chunk events into the messages it delivered."""
    messages: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] | None = None
    for event in _events(b"".join(chunks)):
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            _merge_delta(messages.setdefault(choice.get("index", 0), _empty()), choice)
        if "error" in event:
            messages.setdefault(0, _empty())["error"] = event["error"]
    choices = [{"index": i, **_finished(m)} for i, m in sorted(messages.items())]
    return Reply(choices, usage)


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


def _merge_delta(message: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if delta.get("content"):
        message["content"].append(delta["content"])
    for call in delta.get("tool_calls") or []:
        slot = message["tool_calls"].setdefault(call.get("index", 0), {"id": None, "name": "", "arguments": []})
        slot["id"] = call.get("id") or slot["id"]
        function = call.get("function") or {}
        slot["name"] += function.get("name") or ""
        slot["arguments"].append(function.get("arguments") or "")
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
    if "error" in message:
        finished["error"] = message["error"]
    return finished
