"""`GET /v1/minigate/calls`: the call log behind roles (analyst: metadata; admin: payloads too, audited)."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import FastAPI, Query, Request
from starlette.responses import Response

from minigate.errors import InvalidRequest, ServiceUnavailable
from minigate.gateway.openapi import error_responses
from minigate.gateway.runtime import RuntimeHolder
from minigate.logger.pipeline import CallLog
from minigate.logger.stores import CallQuery, Kind, decode_cursor, parse_time

__all__ = ["add_calls_api"]

Time = Annotated[str | None, Query(description="unix seconds or ISO 8601 (e.g. 2026-11-23T10:00:00+00:00)")]


def add_calls_api(app: FastAPI, holder: RuntimeHolder, calls: CallLog) -> None:
    @app.get("/v1/minigate/calls", tags=["minigate"], summary="Logged calls, newest last, one page at a time.",
             responses=error_responses(401, 403))
    async def list_calls(
        request: Request,
        since: Time = None,
        until: Time = None,
        route: str | None = None,
        task: str | None = None,
        model: str | None = None,
        tier: Literal["miniature", "frontier"] | None = None,
        status: Annotated[int | None, Query(ge=100, le=599, description="an HTTP status, e.g. 502")] = None,
        kind: Annotated[Kind, Query(description="clients' calls, the shadow calls minigate made (S6), or all")] = "calls",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
        payloads: Annotated[bool, Query(description="include decrypted, redacted payloads (admin; audited)")] = False,
    ) -> Response:
        caller = holder.current.keyring.authenticate(request.headers)
        caller.require("read_payloads" if payloads else "read_calls")
        reader = calls.reader()
        if reader is None:
            raise ServiceUnavailable("The call-log store is unavailable; calls are being spooled. Retry shortly.")
        query = CallQuery(since=_time(since, "since"), until=_time(until, "until"), route=route, task=task,
                          model=model, tier=tier, status=status, kind=kind, after=_cursor(cursor), limit=limit)
        rows, next_cursor = await reader.page(query, payloads=payloads, actor=caller.name)
        body = {"object": "list", "data": rows, "next_cursor": next_cursor}
        return Response(orjson.dumps(body), media_type="application/json")


def _time(value: str | None, param: str) -> float | None:
    try:
        return None if value is None else parse_time(value)
    except ValueError as exc:
        raise InvalidRequest(f"{param}={exc}", param=param) from exc


def _cursor(value: str | None) -> tuple[float, str] | None:
    if value is None:
        return None
    try:
        return decode_cursor(value)
    except ValueError as exc:
        raise InvalidRequest("cursor: pass the next_cursor of a previous page unchanged.", param="cursor") from exc
