"""The one place where minigate's typed errors become HTTP responses in OpenAI's error shape."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from minigate.errors import RequestError
from minigate.gateway.openapi import describe_errors

__all__ = ["error_body", "error_response", "install_error_handlers"]


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def error_response(exc: RequestError, headers: Mapping[str, str] | None = None) -> Response:
    body = error_body(exc.message, exc.type, exc.code, exc.param)
    return Response(body, status_code=exc.status, headers={**exc.headers, **(headers or {})},
                    media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    """Render our errors, and Starlette's own (404 on an unknown path, 405), in the same shape, and
    document them so in the served schema (where FastAPI would list a 422 that we answer as 400)."""

    async def on_request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return error_response(exc, _request_id_header(request))

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        body = error_body(message, "invalid_request_error", f"http_{exc.status_code}")
        headers = {**(exc.headers or {}), **_request_id_header(request)}  # a 405 keeps its `Allow`
        return Response(body, exc.status_code, headers=headers, media_type="application/json")

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        body = error_body(f"Invalid request: {first['msg']} ({param})", "invalid_request_error", "invalid_request", param)
        return Response(body, 400, headers=_request_id_header(request), media_type="application/json")

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # A bug in minigate. Starlette logs the traceback after this response is sent.
        headers = _request_id_header(request)
        message = (f"minigate failed on this request ({type(exc).__name__}); the gateway log has the details "
                   f"under request id {headers['x-minigate-request-id']}.")
        return Response(error_body(message, "server_error", "internal_error"), 500, headers=headers,
                        media_type="application/json")

    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(HTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    describe_errors(app)


def _request_id_header(request: Request) -> dict[str, str]:
    """The id the handler already gave this request, or a new one for requests no handler saw (404, 405)."""
    return {"x-minigate-request-id": getattr(request.state, "request_id", None) or uuid.uuid4().hex}
