"""OpenAI's own endpoints (chat completions, text completions, embeddings): the protocol upstreams speak,
so an answer goes to the client as the upstream sent it.

The one change a stream may get: the gateway always asks the upstream for the usage chunk (the call
record counts tokens from it), and strips it again for a client that did not ask (gateway.usage_stream).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from minigate.errors import RequestError, UpstreamError
from minigate.gateway.auth import Caller
from minigate.gateway.errors import error_body, error_response
from minigate.gateway.protocol import ChatRequest, parse_openai_request
from minigate.gateway.usage_stream import UsageStripper
from minigate.serving.upstream import Operation

__all__ = ["OpenAIDialect"]


class OpenAIDialect:
    """One OpenAI operation in, the same out.

    >>> OpenAIDialect("embeddings").operation
    'embeddings'
    """

    def __init__(self, operation: Operation) -> None:
        self.operation: Operation = operation

    async def parse(self, raw: bytes, caller: Caller, request_id: str, path_model: str | None) -> _ChatExchange:
        return _ChatExchange(parse_openai_request(raw, self.operation, path_model))

    def error(self, exc: RequestError, headers: Mapping[str, str]) -> Response:
        return error_response(exc, headers)


class _ChatExchange:
    __slots__ = ("chat",)

    def __init__(self, chat: ChatRequest) -> None:
        self.chat = chat

    @property
    def native(self) -> None:
        """Every upstream speaks it."""
        return None

    def whole(self, status: int, content: bytes, native: bool) -> bytes:
        return content

    def stream(self, native: bool) -> _ChatStream:
        return _ChatStream(None if self.chat.wants_usage else UsageStripper())


class _ChatStream:
    """The upstream's chunks as they come (less the usage chunk the client did not ask for)."""

    __slots__ = ("_open", "_stripper")

    def __init__(self, stripper: UsageStripper | None) -> None:
        self._stripper = stripper
        self._open = False  # whether the last chunk relayed ended mid-event

    def feed(self, chunk: bytes) -> bytes:
        if self._stripper is not None:
            return self._stripper.feed(chunk)
        self._open = not chunk.endswith(b"\n\n")
        return chunk

    def end(self) -> bytes:
        return self._stripper.flush() if self._stripper is not None else b""

    def fail(self, exc: UpstreamError) -> bytes:
        """An `error` event; a cut can fall mid-event, so what the client holds is ended first."""
        return (b"\n\n" if self._open else b"") + b"data: " + error_body(exc.message, exc.type, exc.code) + b"\n\n"
