"""A chat completions stream as a Responses API event stream, translated as the bytes arrive. Pure.

A chat upstream streams `data: {chat.completion.chunk}` events ending with `data: [DONE]`; a Responses
client expects named events (`event: <type>` and `data: {"type", "sequence_number", ...}`, numbered from
0, no `[DONE]`), in the order OpenAI sends them:

    first chunk             response.created, response.in_progress (the response, `in_progress`, no output)
    content                 response.output_item.added (a message item), response.content_part.added
                            (an `output_text` part), then response.output_text.delta per chunk
    refusal                 the same with a `refusal` part and response.refusal.delta
    tool call fragments     response.output_item.added (a `function_call` item), then
                            response.function_call_arguments.delta per fragment with arguments
    next item, or finish    closes the open one: response.output_text.done (or .refusal.done) and
                            response.content_part.done, or response.function_call_arguments.done;
                            then response.output_item.done
    end()                   response.completed, or response.incomplete when finish_reason was
                            "length" or "content_filter"; usage from the chunk that carries it
    fail(), an `error`      `error`, then response.failed (the output so far, open items `incomplete`)
    chunk, unreadable data

Items follow each other as OpenAI's do: one is done before the next is added, so text after a tool call
opens a second message item. A fragment of a tool call whose item is already done can't be placed; the
stream then fails, as it does on a chunk that is not JSON.

>>> stream = ResponsesStream({"model": "m"}, response_id="resp_1", created_at=0)
>>> stream.feed(b'data: {"model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}\\n')
b''
>>> stream.feed(b'\\n').count(b"event: ")
5
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import orjson

from minigate.protocols.responses_reply import (
    finish_status,
    item_id,
    new_response,
    output_logprobs,
    response_usage,
    text_part,
)
from minigate.protocols.sse import SSEData

__all__ = ["ResponsesStream"]

_PART_TEXT = {"output_text": "text", "refusal": "refusal"}  # content part type -> its text field


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class _StreamBroke(Exception):
    """The upstream's stream can't be translated further; reported in-stream as `error` and response.failed."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ResponsesStream:
    """Chat completion chunk SSE bytes in (split anywhere), Responses SSE events out.

    Relay what `feed` returns; when the upstream's stream has ended relay what `end` returns, or what
    `fail` returns when it broke off. `response` is the Response object as it stands, for storing.
    Never raises on what the upstream sends: a stream it can't translate ends with response.failed.
    """

    def __init__(self, request: Mapping[str, Any], *, response_id: str, created_at: int) -> None:
        self._request = request
        self._id = response_id
        self._created_at = created_at
        self._events = SSEData()
        self._out: list[bytes] = []  # events emitted and not yet returned
        self._sequence = 0
        self._response: dict[str, Any] | None = None  # set by the first chunk (it names the model)
        self._output: list[dict[str, Any]] = []
        self._open: int | None = None  # output index of the item being streamed
        self._part: int | None = None  # content index of the open part of the open message
        self._calls: dict[int, int] = {}  # chat tool call index -> output index
        self._finish_reason: Any = None
        self._usage: dict[str, Any] | None = None
        self._is_done = False  # [DONE] arrived: the rest is ignored
        self._is_finished = False  # the closing event is out: nothing more is emitted

    def feed(self, chunk: bytes) -> bytes:
        """The Responses events completed by this chunk of the upstream's bytes (b"" if none)."""
        if not self._is_finished:
            self._translate(self._events.feed(chunk))
        return self._drain()

    def end(self) -> bytes:
        """After the upstream's stream ended: closes the open item and emits response.completed (or .incomplete)."""
        if not self._is_finished:
            self._translate(self._events.close())
        if not self._is_finished:
            self._start(None)
            if not self._output:  # an empty answer is an empty message, as in a whole reply
                self._open_part("output_text")
            status, details = finish_status(self._finish_reason)
            self._close_item(status)
            self._finish(status, {"incomplete_details": details})
        return self._drain()

    def fail(self, message: str, code: str) -> bytes:
        """The upstream broke off: an `error` event, then response.failed."""
        self._fail(message, code)
        return self._drain()

    @property
    def response(self) -> dict[str, Any]:
        """The Response object as it stands (final after `end` or `fail`)."""
        if self._response is None:
            return new_response(self._request, response_id=self._id, created_at=self._created_at,
                                model=self._request.get("model"))
        return copy.deepcopy(self._response)

    # -- chunks --

    def _translate(self, events: list[bytes]) -> None:
        for data in events:
            if self._is_done or self._is_finished:
                return
            try:
                self._data(data)
            except _StreamBroke as broke:
                self._fail(broke.message, broke.code)

    def _data(self, data: bytes) -> None:
        if data.strip() == b"[DONE]":
            self._is_done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            raise _StreamBroke(f"the upstream sent an unreadable chunk: {data[:200]!r}", "invalid_upstream_stream")
        if chunk.get("error") is not None:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, Mapping) else error
            raise _StreamBroke(f"the upstream reported an error: {message}", "upstream_error")
        self._start(chunk.get("model"))
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = response_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                self._choice(choice)

    def _choice(self, choice: Mapping[str, Any]) -> None:
        delta = _mapping(choice.get("delta"))
        if isinstance(delta.get("content"), str) and delta["content"]:
            self._text("output_text", delta["content"], output_logprobs(choice.get("logprobs")))
        if isinstance(delta.get("refusal"), str) and delta["refusal"]:
            self._text("refusal", delta["refusal"], [])
        for position, fragment in enumerate(delta.get("tool_calls") or []):
            if isinstance(fragment, Mapping):
                index = fragment.get("index")
                self._fragment(index if isinstance(index, int) else position, fragment)
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
            self._close_item(finish_status(self._finish_reason)[0])

    def _text(self, kind: str, text: str, logprobs: list[dict[str, Any]]) -> None:
        index, number = self._open_part(kind)
        part = self._output[index]["content"][number]
        part[_PART_TEXT[kind]] += text
        where = {"item_id": self._output[index]["id"], "output_index": index, "content_index": number}
        if kind == "output_text":
            part["logprobs"] += logprobs
            self._emit("response.output_text.delta", {**where, "delta": text, "logprobs": logprobs})
        else:
            self._emit("response.refusal.delta", {**where, "delta": text})

    def _fragment(self, index: int, fragment: Mapping[str, Any]) -> None:
        """A piece of a tool call: index, id and name come in its first piece only, arguments in any."""
        function = _mapping(fragment.get("function"))
        call_id = fragment.get("id") if isinstance(fragment.get("id"), str) and fragment["id"] else None
        output_index = self._calls.get(index)
        # A new id at a known index is a new call: some upstreams number every call 0.
        if output_index is None or call_id not in (None, self._output[output_index]["call_id"]):
            output_index = self._open_call(index, call_id, function.get("name"))
        elif output_index != self._open:
            raise _StreamBroke(f"the upstream sent more of tool call {index} after its item was done",
                               "invalid_upstream_stream")
        item = self._output[output_index]
        if not item["name"] and isinstance(function.get("name"), str):
            item["name"] = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            self._emit("response.function_call_arguments.delta",
                       {"item_id": item["id"], "output_index": output_index, "delta": arguments})

    # -- items --

    def _open_part(self, kind: str) -> tuple[int, int]:
        """The output index of the open message (opened if need be) and the content index of its `kind` part."""
        index = self._open if self._open is not None and self._output[self._open]["type"] == "message" else None
        if index is None:
            index = self._add_item({"id": item_id(self._id, "msg", len(self._output)), "type": "message",
                                    "status": "in_progress", "content": [], "role": "assistant"})
        content = self._output[index]["content"]
        if self._part is not None and content[self._part]["type"] == kind:
            return index, self._part
        self._close_part()
        part = text_part("", []) if kind == "output_text" else {"type": "refusal", "refusal": ""}
        content.append(part)
        self._part = len(content) - 1
        self._emit("response.content_part.added", {"item_id": self._output[index]["id"], "output_index": index,
                                                   "content_index": self._part, "part": part})
        return index, self._part

    def _open_call(self, index: int, call_id: str | None, name: Any) -> int:
        output_index = len(self._output)
        self._calls[index] = self._add_item({
            "id": item_id(self._id, "fc", output_index), "type": "function_call", "status": "in_progress",
            "arguments": "", "call_id": call_id or item_id(self._id, "call", output_index),
            "name": name if isinstance(name, str) else "",
        })
        return output_index

    def _add_item(self, item: dict[str, Any]) -> int:
        self._close_item("completed")
        self._output.append(item)
        self._open = len(self._output) - 1
        self._emit("response.output_item.added", {"output_index": self._open, "item": item})
        return self._open

    def _close_part(self) -> None:
        if self._open is None or self._part is None:
            return
        item = self._output[self._open]
        part = item["content"][self._part]
        where = {"item_id": item["id"], "output_index": self._open, "content_index": self._part}
        if part["type"] == "output_text":
            self._emit("response.output_text.done", {**where, "text": part["text"], "logprobs": part["logprobs"]})
        else:
            self._emit("response.refusal.done", {**where, "refusal": part["refusal"]})
        self._emit("response.content_part.done", {**where, "part": part})
        self._part = None

    def _close_item(self, status: str) -> None:
        """Closes the open item; `status` is the response's: an `incomplete` response cut its last item short."""
        if self._open is None:
            return
        item = self._output[self._open]
        if item["type"] == "message":
            self._close_part()
        else:
            self._emit("response.function_call_arguments.done", {"item_id": item["id"], "output_index": self._open,
                                                                 "arguments": item["arguments"], "name": item["name"]})
        item["status"] = "incomplete" if status == "incomplete" else "completed"
        self._emit("response.output_item.done", {"output_index": self._open, "item": item})
        self._open = None

    # -- the response --

    def _start(self, model: Any) -> dict[str, Any]:
        """The response, emitting response.created and response.in_progress the first time."""
        if self._response is None:
            model = model if isinstance(model, str) and model else self._request.get("model")
            self._response = new_response(self._request, response_id=self._id, created_at=self._created_at,
                                          model=model)
            self._response["output"] = self._output
            self._emit("response.created", {"response": self._response})
            self._emit("response.in_progress", {"response": self._response})
        return self._response

    def _finish(self, status: str, changes: dict[str, Any]) -> None:
        response = self._start(None)
        response.update(status=status, usage=self._usage, **changes)
        self._emit(f"response.{status}", {"response": response})
        self._is_finished = True

    def _fail(self, message: str, code: str) -> None:
        if self._is_finished:
            return
        self._start(None)
        for item in self._output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
        self._emit("error", {"code": code, "message": message, "param": None})
        # The response's error code is one of OpenAI's few; a broken upstream is its "server_error".
        self._finish("failed", {"error": {"code": "server_error", "message": message}})

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        """Serialised at once: the item and response dicts change as the stream goes on."""
        event = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        self._out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")

    def _drain(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out
