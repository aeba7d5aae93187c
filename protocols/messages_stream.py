"""A chat completions stream as Anthropic Messages stream events, translated as the bytes arrive. Pure.

Chat upstreams stream `data: {chunk}` events ending with `data: [DONE]`; Anthropic clients expect named
events, each content block opened, filled and closed in turn, a text block and each tool call with its
own index. Only the incomplete last SSE event is ever held.

    first chunk                         message_start (empty content; input_tokens when the chunk has usage)
    delta.content / delta.refusal       content_block_start text (after closing an open tool block), text_delta
    delta.tool_calls, a new index       content_block_stop of the open block, content_block_start tool_use
    tool call arguments fragment        input_json_delta (partial_json)
    finish_reason, usage chunk          (kept for the end)
    [DONE] (or `end`)                   content_block_stop, message_delta (stop_reason, usage), message_stop
    {"error": ...} chunk, or `fail`     error event (api_error); nothing follows it

The usage chunk (the body asks for it: `stream_options.include_usage`) comes last, so message_start
says 0 input tokens and message_delta's usage carries the real counts, as Anthropic's may.

>>> stream = MessagesStream(model="m", message_id="msg_1")
>>> out = stream.feed(b'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}\\n\\n')
>>> [line for line in out.split(b"\\n") if line.startswith(b"event:")]
[b'event: message_start', b'event: content_block_start', b'event: content_block_delta']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

from minigate.protocols.anthropic_reply import ReplyError, stop_reason
from minigate.protocols.messages_reply import anthropic_usage, message_id_for
from minigate.protocols.sse import SSEData

__all__ = ["MessagesStream"]


class MessagesStream:
    """Feed it the chat stream's bytes and relay what it returns; at the end, relay what `end` returns.

    Raises `ReplyError` ("invalid_reply") on an event that is not JSON.
    """

    def __init__(self, *, model: str, message_id: str | None = None) -> None:
        self._events = SSEData()
        self._model = model
        self._id = message_id
        self._state: Literal["new", "started", "done"] = "new"
        self._open: Literal["text", "tool_use"] | None = None  # the kind of the open content block
        self._blocks = 0  # content blocks started; the open one is the last
        self._calls: dict[int, int] = {}  # chat tool call index -> content block index
        self._finish: Any = None
        self._stop_sequence: str | None = None
        self._is_refusal = False
        self._usage: Any = None

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._events.feed(chunk))

    def end(self) -> bytes:
        """Closes what is open (when `[DONE]` did not already): message_delta and message_stop."""
        return self._translate(self._events.close()) + self._close()

    def fail(self, message: str) -> bytes:
        """An `error` event, for an upstream that failed mid-stream; nothing is sent after it."""
        if self._state == "done":
            return b""
        self._state = "done"
        return _event("error", error={"type": "api_error", "message": message})

    def _translate(self, events: list[bytes]) -> bytes:
        out: list[bytes] = []
        for data in events:
            if self._state == "done":
                break
            if data.strip() == b"[DONE]":
                out.append(self._close())
                continue
            try:
                chunk = orjson.loads(data)
            except ValueError as exc:
                raise ReplyError(f"unreadable stream event ({exc}): {data[:200]!r}", "invalid_reply") from exc
            out += self._chunk(chunk) if isinstance(chunk, Mapping) else []
        return b"".join(out)

    def _chunk(self, chunk: Mapping[str, Any]) -> list[bytes]:
        error = chunk.get("error")
        if error is not None:  # OpenAI and vLLM report a failure mid-stream as a chunk holding an error
            message = error.get("message") if isinstance(error, Mapping) else error
            return [self.fail(str(message))]
        out = self._start(chunk) if self._state == "new" else []
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue  # minigate asks for one choice
            out += self._delta(choice.get("delta") or {})
            self._finish = choice.get("finish_reason") or self._finish
            matched = choice.get("stop_reason")  # vLLM names the stop string that ended the output
            self._stop_sequence = matched if isinstance(matched, str) else self._stop_sequence
        return out

    def _start(self, chunk: Mapping[str, Any]) -> list[bytes]:
        self._state = "started"
        usage = anthropic_usage(chunk.get("usage"))
        message: dict[str, Any] = {
            "id": self._id or message_id_for(chunk.get("id")), "type": "message", "role": "assistant",
            "model": self._model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": 0}}
        return [_event("message_start", message=message)]

    def _delta(self, delta: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        refusal, content = delta.get("refusal"), delta.get("content")
        if isinstance(refusal, str) and refusal:
            self._is_refusal = True
            out += self._text(refusal)
        if isinstance(content, str) and content:
            out += self._text(content)
        for call in delta.get("tool_calls") or []:
            out += self._tool_call(call) if isinstance(call, Mapping) else []
        return out

    def _text(self, text: str) -> list[bytes]:
        out = [] if self._open == "text" else self._open_block({"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return [*out, _event("content_block_delta", index=self._blocks - 1, delta=delta)]

    def _tool_call(self, call: Mapping[str, Any]) -> list[bytes]:
        number = call["index"] if isinstance(call.get("index"), int) else 0
        function: Mapping[str, Any] = call["function"] if isinstance(call.get("function"), Mapping) else {}
        out: list[bytes] = []
        if number not in self._calls:
            call_id = call.get("id") if isinstance(call.get("id"), str) else f"toolu_{self._blocks}"
            name = function.get("name") if isinstance(function.get("name"), str) else ""
            out += self._open_block({"type": "tool_use", "id": call_id, "name": name, "input": {}})
            self._calls[number] = self._blocks - 1
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            # Upstreams stream one call after another; a late fragment of an earlier call still names its own block.
            delta = {"type": "input_json_delta", "partial_json": fragment}
            out.append(_event("content_block_delta", index=self._calls[number], delta=delta))
        return out

    def _open_block(self, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self._open = block["type"]
        self._blocks += 1
        return [*out, _event("content_block_start", index=self._blocks - 1, content_block=block)]

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [_event("content_block_stop", index=self._blocks - 1)]

    def _close(self) -> bytes:
        if self._state == "done":
            return b""
        out = self._start({}) if self._state == "new" else []
        self._state = "done"
        reason = "refusal" if self._is_refusal else stop_reason(self._finish, called_tools=bool(self._calls),
                                                                stop_sequence=self._stop_sequence)
        sequence = self._stop_sequence if reason == "stop_sequence" else None
        usage = anthropic_usage(self._usage) if self._usage is not None else {"output_tokens": 0}
        delta = _event("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence}, usage=usage)
        return b"".join([*out, *self._close_block(), delta, _event("message_stop")])


def _event(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"
