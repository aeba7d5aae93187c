"""`POST /v1/messages`: Anthropic's Messages API, served by any upstream through the chat form.

The anthropic SDK (and Claude-native agents) repoint here unchanged: the key may come as `x-api-key`
(gateway.auth), `anthropic-version` is accepted whatever it says (the translation speaks the
current Messages protocol), and every error has Anthropic's shape, whatever raised it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from minigate.errors import RequestError, UpstreamError
from minigate.gateway.auth import Caller
from minigate.gateway.ingress import Untranslatable
from minigate.gateway.protocol import ChatRequest, parse_json_object, route_name
from minigate.protocols.anthropic_reply import ReplyError
from minigate.protocols.messages_reply import anthropic_error, from_openai_error, to_message
from minigate.protocols.messages_request import to_chat_body
from minigate.protocols.messages_stream import MessagesStream

__all__ = ["MessagesDialect"]


class MessagesDialect:
    """Anthropic Messages in, chat to the upstream, Anthropic Messages back."""

    async def parse(self, raw: bytes, caller: Caller, request_id: str, path_model: str | None) -> _MessagesExchange:
        body = parse_json_object(raw)
        model = route_name(body)
        chat_body = to_chat_body(body)
        return _MessagesExchange(ChatRequest(orjson.dumps(chat_body), chat_body, model, chat_body.get("stream") is True),
                                 f"msg_{request_id}")

    def error(self, exc: RequestError, headers: Mapping[str, str]) -> Response:
        return Response(anthropic_error(exc.status, exc.message), exc.status, headers={**exc.headers, **headers},
                        media_type="application/json")


class _MessagesExchange:
    __slots__ = ("chat", "message_id")

    def __init__(self, chat: ChatRequest, message_id: str) -> None:
        self.chat = chat
        self.message_id = message_id

    @property
    def native(self) -> None:
        """No upstream is sent Anthropic's protocol as is (`anthropic` upstreams translate chat)."""
        return None

    def whole(self, status: int, content: bytes, native: bool) -> bytes:
        if status != 200:
            return from_openai_error(status, content)
        try:
            message: dict[str, Any] = to_message(orjson.loads(content), message_id=self.message_id)
        except (orjson.JSONDecodeError, ReplyError) as exc:
            raise Untranslatable(str(exc)) from exc
        return orjson.dumps(message)

    def stream(self, native: bool) -> _MessagesStreamAnswer:
        return _MessagesStreamAnswer(MessagesStream(model=self.chat.model, message_id=self.message_id))


class _MessagesStreamAnswer:
    __slots__ = ("_stream",)

    def __init__(self, stream: MessagesStream) -> None:
        self._stream = stream

    def feed(self, chunk: bytes) -> bytes:
        try:
            return self._stream.feed(chunk)
        except ReplyError as exc:
            raise Untranslatable(str(exc)) from exc

    def end(self) -> bytes:
        try:
            return self._stream.end()
        except ReplyError as exc:
            raise Untranslatable(str(exc)) from exc

    def fail(self, exc: UpstreamError) -> bytes:
        return self._stream.fail(exc.message)
