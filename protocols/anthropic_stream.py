"""An Anthropic Messages stream as OpenAI `chat.completion.chunk` events, translated as the bytes arrive. Pure.

Anthropic streams named SSE events (`message_start`, `content_block_start` / `_delta` / `_stop`,
`message_delta`, `message_stop`, `ping`, `error`); OpenAI clients expect `data: {chunk}` events ending
with `data: [DONE]`. Each Anthropic event becomes at most a few chunks as soon as its blank line has
arrived; only the incomplete last event (and an answer tool's input whose schema was wrapped, which
must be parsed whole to unwrap) is ever held.

    message_start                       role chunk (`{"role": "assistant", "content": ""}`)
    text_delta                          content chunk
    content_block_start tool_use        tool_calls chunk: index, id, type, name, empty arguments
    input_json_delta                    tool_calls chunk: index, an arguments fragment
    message_delta                       (stop_reason and usage, kept for the end)
    message_stop                        finish_reason chunk, usage chunk (with include_usage), [DONE]
    error                               ReplyError("stream_error"); the gateway reports it as an SSE error

>>> t = StreamTranslator(MessagesRequest({}), created=0)
>>> t.feed(b'event: ping\\ndata: {"type": "ping"}\\n\\n')
b''
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from minigate.protocols.anthropic_reply import ReplyError, answer_content, finish_reason, usage
from minigate.protocols.anthropic_request import MessagesRequest
from minigate.protocols.sse import SSEData

__all__ = ["StreamTranslator"]

_DONE = b"data: [DONE]\n\n"


class StreamTranslator:
    """Feed it the Anthropic stream's bytes and relay what it returns; at the end, relay what `close` returns.

    Raises `ReplyError` on an `error` event, on an event it can't parse, and at `close` when the
    stream ended before `message_stop`.
    """

    def __init__(self, request: MessagesRequest, created: int) -> None:
        self._events = SSEData()
        self._answer = request.answer
        self._include_usage = request.include_usage
        self._created = created
        self._id = ""
        self._model = ""
        self._calls: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._empty_calls: set[int] = set()  # blocks whose input has had no fragment yet
        self._answer_block: int | None = None
        self._answer_json: list[str] = []  # the answer's input so far (a wrapped one is parsed whole at its end)
        self._stop_reason: Any = None
        self._usage: dict[str, Any] = {}
        self._is_done = False

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._events.feed(chunk))

    def close(self) -> bytes:
        """What the end of the bytes completes; raises `ReplyError` when `message_stop` never came."""
        out = self._translate(self._events.close())
        if not self._is_done:
            raise ReplyError("the stream ended before message_stop", "stream_cut")
        return out

    def _translate(self, events: list[bytes]) -> bytes:
        out: list[bytes] = []
        for data in events:
            if self._is_done:
                break
            try:
                out += self._event(orjson.loads(data))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ReplyError(f"unreadable stream event ({type(exc).__name__}: {exc}): {data[:200]!r}",
                                 "invalid_reply") from exc
        return b"".join(out)

    def _event(self, event: Mapping[str, Any]) -> list[bytes]:
        kind = event["type"]
        if kind == "message_start":
            return self._start(event["message"])
        if kind == "content_block_start":
            return self._block_start(event["index"], event["content_block"])
        if kind == "content_block_delta":
            return self._delta(event["index"], event["delta"])
        if kind == "content_block_stop":
            return self._block_stop(event["index"])
        if kind == "message_delta":
            self._stop_reason = event["delta"].get("stop_reason", self._stop_reason)
            self._usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            return []
        if kind == "message_stop":
            return self._finish()
        if kind == "error":
            error = event.get("error") or {}
            raise ReplyError(f"{error.get('type', 'error')}: {error.get('message', 'no message')}", "stream_error")
        return []  # ping, and event types added to the protocol later

    def _start(self, message: Mapping[str, Any]) -> list[bytes]:
        self._id, self._model = message["id"], message["model"]
        self._usage.update({k: v for k, v in (message.get("usage") or {}).items() if v is not None})
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[bytes]:
        if block["type"] == "text":
            return self._text(block.get("text") or "")
        if block["type"] != "tool_use":
            return []  # thinking and server-tool blocks: minigate never asks for them
        if self._answer is not None and block["name"] == self._answer.tool:
            self._answer_block = index
            return []
        number = self._calls[index] = len(self._calls)
        self._empty_calls.add(index)
        call = {"index": number, "id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _delta(self, index: int, delta: Mapping[str, Any]) -> list[bytes]:
        if delta["type"] == "text_delta":
            return self._text(delta["text"])
        fragment = delta.get("partial_json") if delta["type"] == "input_json_delta" else None
        if not fragment:
            return []
        if index == self._answer_block:
            self._answer_json.append(fragment)
            is_wrapped = self._answer is not None and self._answer.key is not None
            return [] if is_wrapped else [self._chunk({"content": fragment})]
        if index not in self._calls:
            return []
        self._empty_calls.discard(index)
        return [self._chunk({"tool_calls": [{"index": self._calls[index], "function": {"arguments": fragment}}]})]

    def _block_stop(self, index: int) -> list[bytes]:
        """Complete what was never streamed: a call's or answer's empty input is `{}`, a wrapped answer is unwrapped."""
        if index == self._answer_block and self._answer is not None:
            if self._answer.key is not None:
                tool_input = orjson.loads("".join(self._answer_json) or "{}")
                return [self._chunk({"content": answer_content(tool_input, self._answer)})]
            return [] if self._answer_json else [self._chunk({"content": "{}"})]
        if index in self._empty_calls:
            self._empty_calls.discard(index)
            return [self._chunk({"tool_calls": [{"index": self._calls[index], "function": {"arguments": "{}"}}]})]
        return []

    def _finish(self) -> list[bytes]:
        self._is_done = True
        finish = finish_reason(self._stop_reason, bool(self._calls))
        chunks = [self._chunk({}, finish)]
        if self._include_usage:
            chunks.append(self._envelope([], usage(self._usage)))
        return [*chunks, _DONE]

    def _text(self, text: str) -> list[bytes]:
        # With a JSON response_format the content is the answer tool's input; stray text would break the JSON.
        return [self._chunk({"content": text})] if text and self._answer is None else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._envelope([choice], None)

    def _envelope(self, choices: list[dict[str, Any]], counts: dict[str, Any] | None) -> bytes:
        chunk: dict[str, Any] = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                                 "model": self._model, "choices": choices}
        if self._include_usage:
            chunk["usage"] = counts  # null on every chunk but the last, as OpenAI sends it
        return b"data: " + orjson.dumps(chunk) + b"\n\n"
