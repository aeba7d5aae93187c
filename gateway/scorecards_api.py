"""`GET /v1/minigate/scorecards`: each miniature's measured quality, latency, cost and projected savings per
task (router/scorecard.py), over a recent window of the call log (analyst and admin keys)."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
import orjson
from fastapi import FastAPI, Query, Request
from starlette.responses import Response

from minigate.errors import ServiceUnavailable
from minigate.gateway.openapi import error_responses
from minigate.gateway.runtime import RuntimeHolder
from minigate.logger.pipeline import CallLog
from minigate.router.scorecard import scorecards

__all__ = ["add_scorecards_api"]


def add_scorecards_api(app: FastAPI, holder: RuntimeHolder, calls: CallLog) -> None:
    @app.get("/v1/minigate/scorecards", tags=["minigate"], responses=error_responses(401, 403, 503),
             summary="Per task and miniature: agreement with the frontier (Wilson 95%), latency, cost, savings.")
    async def list_scorecards(
        request: Request,
        days: Annotated[float, Query(gt=0, le=366, description="the window: the last this many days")] = 7.0,
    ) -> Response:
        holder.current.keyring.authenticate(request.headers).require("read_calls")
        reader = calls.reader()
        if reader is None:
            raise ServiceUnavailable("The call-log store is unavailable; calls are being spooled. Retry shortly.")
        window_s = days * 86400.0
        rows, scores = await reader.outcomes(since=time.time() - window_s)
        cards = await anyio.to_thread.run_sync(lambda: scorecards(rows, scores, window_s=window_s))
        body = {"object": "list", "data": [card.document() for card in cards], "window_days": days}
        return Response(orjson.dumps(body), media_type="application/json")
