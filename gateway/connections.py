"""Connection guards uvicorn lacks: a deadline for a request's headers, and a cap on open connections.

uvicorn arms no timer on a new connection until its first response, so a client that opens a socket
and sends its headers a byte at a time (slowloris) holds a connection, and the memory behind it, for
as long as it likes; a few hundred such clients hold the gateway. We close a connection whose headers
are not all in within `server.header_timeout_s` of its first byte (or of its opening), and refuse
connections beyond `server.max_connections` with an OpenAI-shaped 503 before reading anything.
The body's own deadline (`server.body_timeout_s`) is the handler's business: it knows the route.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from minigate.gateway.errors import error_body

__all__ = ["guarded_protocol"]


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the guards above, for `uvicorn.Config(http=...)`."""
    body = error_body(
        f"This gateway has {max_connections} connections open, its limit (server.max_connections); "
        "retry shortly.", "server_error", "too_many_connections",
    )
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    class GuardedHttpProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(busy)
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # a kept-alive connection's next request: its headers get the same deadline

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            """A request uvicorn can't parse (bad Content-Length, broken chunking) in OpenAI's shape, not text."""
            body = error_body(f"{msg} The request line, headers or framing (Content-Length, Transfer-Encoding) "
                              "could not be parsed; send one valid HTTP/1.1 request.", "invalid_request_error",
                              "invalid_http_request")
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.transport.close()

        def _arm(self) -> None:
            if self._header_deadline is None:
                self._header_deadline = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpProtocol
