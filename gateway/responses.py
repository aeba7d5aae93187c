"""`POST /v1/responses` and `GET /v1/responses/{id}`: OpenAI's Responses API on chat completions upstreams.

A Responses call is translated into chat (minigate.protocols.responses_*), so it is routed, matched to
its task, escalated, shadowed and logged like any chat call; its answer is translated back, whole or
event by event. The response id is `resp_` + the call's request id, so a response and its call record
name each other. An upstream that serves Responses itself (`responses: native`) gets the client's body
instead, and its reply goes back as it came, under the upstream's own id.

`store` (the default, as at OpenAI) keeps the response and the input that led to it in the call-log
store, encrypted (CallLog.keep_response): `previous_response_id` continues from it, and
`GET /v1/responses/{id}` reads it back, both only for the key that made it. A stored response is the
conversation's state, not a log record: it is kept as the client sent it, not redacted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from minigate.errors import InvalidRequest, NotFound, RequestError, UpstreamError
from minigate.gateway.auth import Caller
from minigate.gateway.ingress import StreamAnswer, Untranslatable
from minigate.gateway.errors import error_response
from minigate.gateway.openapi import error_responses
from minigate.gateway.protocol import ChatRequest, parse_json_object, route_name
from minigate.gateway.runtime import RuntimeHolder
from minigate.logger.pipeline import CallLog
from minigate.protocols.responses_reply import to_response
from minigate.protocols.responses_request import input_items, to_chat_body
from minigate.protocols.responses_stream import ResponsesStream
from minigate.protocols.sse import SSEData

__all__ = ["ResponsesDialect", "add_stored_responses_api"]


class ResponsesDialect:
    """Responses in, chat to the upstream, Responses back; errors in OpenAI's shape."""

    def __init__(self, calls: CallLog) -> None:
        self.calls = calls

    async def parse(self, raw: bytes, caller: Caller, request_id: str, path_model: str | None) -> _ResponsesExchange:
        body = parse_json_object(raw)
        model = route_name(body)
        history = await self._history(body.get("previous_response_id"), caller)
        chat_body = to_chat_body(body, history)
        stream = chat_body.get("stream") is True
        chat = ChatRequest(orjson.dumps(chat_body), chat_body, model, stream)
        keep = body.get("store") is not False
        return _ResponsesExchange(chat, body, [*history, *input_items(body)], f"resp_{request_id}",
                                  self.calls if keep else None, caller.name, bool(history))

    def error(self, exc: RequestError, headers: Mapping[str, str]) -> Response:
        return error_response(exc, headers)

    async def _history(self, previous: object, caller: Caller) -> list[dict[str, Any]]:
        """The items before this turn: the previous response's input and output, as it stored them."""
        if previous is None:
            return []
        if not isinstance(previous, str) or not previous:
            raise InvalidRequest("'previous_response_id' must be a response id (a string).",
                                 param="previous_response_id")
        document = await self.calls.recall_response(previous, caller.name)
        if document is None:
            raise NotFound(f"Previous response with id {previous!r} not found: it was made with another key, "
                           "with store: false, or has been purged.", param="previous_response_id")
        stored = orjson.loads(document)
        return [*stored["input"], *stored["response"]["output"]]


class _ResponsesExchange:
    __slots__ = ("_body", "_calls", "_continued", "_created_at", "_input", "_key_name", "chat", "response_id")

    def __init__(self, chat: ChatRequest, body: dict[str, Any], items: list[dict[str, Any]], response_id: str,
                 calls: CallLog | None, key_name: str, continued: bool) -> None:
        self.chat = chat
        self.response_id = response_id
        self._body = body
        self._input = items  # everything the model was given, for the next turn's previous_response_id
        self._calls = calls  # None: store is false
        self._key_name = key_name
        self._continued = continued  # previous_response_id named a stored response
        self._created_at = int(time.time())

    @property
    def native(self) -> Callable[[str], bytes]:
        return self._native_body

    def _native_body(self, upstream_model: str) -> bytes:
        """The client's body for an upstream that serves Responses itself: the model replaced, and a
        previous response's items spelled out (the id is minigate's, which the upstream never saw)."""
        body = {**self._body, "model": upstream_model}
        if self._continued:
            del body["previous_response_id"]
            body["input"] = self._input
        return orjson.dumps(body)

    def whole(self, status: int, content: bytes, native: bool) -> bytes:
        if status != 200:
            return content  # an error, already in OpenAI's shape
        try:
            document = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise Untranslatable(str(exc)) from exc
        if native:  # the upstream's own response, relayed as sent; kept under its own id
            self._keep(document)
            return content
        response = to_response(document, self._body, response_id=self.response_id, created_at=self._created_at)
        self._keep(response)
        return orjson.dumps(response)

    def stream(self, native: bool) -> StreamAnswer:
        if native:
            return _NativeStream(self)
        return _TranslatedStream(self, ResponsesStream(self._body, response_id=self.response_id,
                                                       created_at=self._created_at))

    def _keep(self, response: Mapping[str, Any]) -> None:
        """Store the response, when the call asked to (store is on by default) and the response is final."""
        response_id = response.get("id")
        if self._calls is not None and isinstance(response_id, str) and response.get("status") in _FINAL:
            document = orjson.dumps({"input": self._input, "response": response})
            self._calls.keep_response(response_id, self._key_name, document)


_FINAL = ("completed", "incomplete")


class _TranslatedStream:
    """A chat stream, told as Responses events."""

    __slots__ = ("_exchange", "_stream")

    def __init__(self, exchange: _ResponsesExchange, stream: ResponsesStream) -> None:
        self._exchange = exchange
        self._stream = stream

    def feed(self, chunk: bytes) -> bytes:
        return self._stream.feed(chunk)

    def end(self) -> bytes:
        events = self._stream.end()
        self._exchange._keep(self._stream.response)
        return events

    def fail(self, exc: UpstreamError) -> bytes:
        return self._stream.fail(exc.message, exc.code or exc.kind)


class _NativeStream:
    """A native upstream's Responses events, relayed as they come; its final response is kept."""

    __slots__ = ("_events", "_exchange", "_final")

    def __init__(self, exchange: _ResponsesExchange) -> None:
        self._exchange = exchange
        self._events = SSEData()
        self._final: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        for data in self._events.feed(chunk):
            if b'"response.completed"' in data or b'"response.incomplete"' in data:  # parsed only at the end
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue  # not the final event after all: the client reads it as it came
                response = event.get("response") if isinstance(event, dict) else None
                self._final = response if isinstance(response, dict) else None
        return chunk

    def end(self) -> bytes:
        if self._final is not None:
            self._exchange._keep(self._final)
        return b""

    def fail(self, exc: UpstreamError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(
            {"type": "error", "code": exc.code or exc.kind, "message": exc.message, "param": None}) + b"\n\n"


def add_stored_responses_api(app: FastAPI, holder: RuntimeHolder, calls: CallLog) -> None:
    @app.get("/v1/responses/{response_id}", summary="A stored response, for the key that made it.",
             responses=error_responses(401, 403, 404))
    async def get_response(response_id: str, request: Request) -> Response:
        caller = holder.current.keyring.authenticate(request.headers)
        caller.require("infer")
        document = await calls.recall_response(response_id, caller.name)
        if document is None:
            raise NotFound(f"No response with id {response_id!r} (responses are kept only with store: true, "
                           "and read back only with the key that made them).", param="response_id")
        return Response(orjson.dumps(orjson.loads(document)["response"]), media_type="application/json")

