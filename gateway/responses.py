"""`POST /v1/responses` and `GET /v1/responses/{id}`: OpenAI's Responses API on chat completions upstreams.

A Responses call is translated into chat (minigate.protocols.responses_*), so it is routed, matched to
its task, escalated, shadowed and logged like any chat call; its answer is translated back, whole or
event by event. The response id is `resp_` + the call's request id, so a response and its call record
name each other.

`store` (the default, as at OpenAI) keeps the response and the input that led to it in the call-log
store, encrypted (CallLog.keep_response): `previous_response_id` continues from it, and
`GET /v1/responses/{id}` reads it back, both only for the key that made it. A stored response is the
conversation's state, not a log record: it is kept as the client sent it, not redacted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from minigate.errors import InvalidRequest, NotFound, RequestError, UpstreamError
from minigate.gateway.auth import Caller
from minigate.gateway.errors import error_response
from minigate.gateway.openapi import error_responses
from minigate.gateway.protocol import ChatRequest, parse_json_object
from minigate.gateway.runtime import RuntimeHolder
from minigate.logger.pipeline import CallLog
from minigate.protocols.responses_reply import to_response
from minigate.protocols.responses_request import input_items, to_chat_body
from minigate.protocols.responses_stream import ResponsesStream

__all__ = ["ResponsesDialect", "add_stored_responses_api"]


class ResponsesDialect:
    """Responses in, chat to the upstream, Responses back; errors in OpenAI's shape."""

    def __init__(self, calls: CallLog) -> None:
        self.calls = calls

    async def parse(self, raw: bytes, caller: Caller, request_id: str, path_model: str | None) -> _ResponsesExchange:
        body = parse_json_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("Missing required parameter: 'model' (a string naming a route).", param="model")
        history = await self._history(body.get("previous_response_id"), caller)
        chat_body = to_chat_body(body, history)
        chat_body["model"] = model
        stream = chat_body.get("stream") is True
        chat = ChatRequest(orjson.dumps(chat_body), chat_body, model, stream)
        keep = body.get("store") is not False
        return _ResponsesExchange(chat, body, [*history, *input_items(body)], f"resp_{request_id}",
                                  self.calls if keep else None, caller.name)

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
    __slots__ = ("_body", "_calls", "_created_at", "_input", "_key_name", "chat", "response_id")

    def __init__(self, chat: ChatRequest, body: dict[str, Any], items: list[dict[str, Any]], response_id: str,
                 calls: CallLog | None, key_name: str) -> None:
        self.chat = chat
        self.response_id = response_id
        self._body = body
        self._input = items  # everything the model was given, for the next turn's previous_response_id
        self._calls = calls  # None: store is false
        self._key_name = key_name
        self._created_at = int(time.time())

    def whole(self, status: int, content: bytes) -> bytes:
        if status != 200:
            return content  # an error, already in OpenAI's shape
        response = to_response(orjson.loads(content), self._body, response_id=self.response_id,
                               created_at=self._created_at)
        self._keep(response)
        return orjson.dumps(response)

    def stream(self) -> _ResponsesStreamAnswer:
        return _ResponsesStreamAnswer(self, ResponsesStream(self._body, response_id=self.response_id,
                                                            created_at=self._created_at))

    def _keep(self, response: Mapping[str, Any]) -> None:
        if self._calls is not None and response.get("status") in ("completed", "incomplete"):
            document = orjson.dumps({"input": self._input, "response": response})
            self._calls.keep_response(self.response_id, self._key_name, document)


class _ResponsesStreamAnswer:
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

