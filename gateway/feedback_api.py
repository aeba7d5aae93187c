"""`POST /v1/minigate/feedback`: an agent's (or a person's) verdict on one call it made.

Feedback is how outcomes nobody can compute reach the loop: a user's thumbs-down, a downstream check
that failed, the right label. It feeds scorecards and `dataset export --min-feedback`. An agent key may
rate only its own calls (the call log says whose a call was); an admin key may rate any.
"""

from __future__ import annotations

import time

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from minigate.errors import NotFound, PermissionDenied, ServiceUnavailable
from minigate.gateway.openapi import error_responses
from minigate.gateway.runtime import RuntimeHolder
from minigate.logger.pipeline import CallLog
from minigate.logger.records import Feedback
from minigate.logger.stores import CallQuery

__all__ = ["FeedbackIn", "add_feedback_api"]


class FeedbackIn(BaseModel):
    """The body: which call (its `x-minigate-request-id`), how good it was, and optionally why."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64, description="the call's x-minigate-request-id header")
    score: float = Field(ge=0, le=1, description="1: the reply did its job; 0: it did not")
    label: str | None = Field(None, max_length=200, description="the right answer, for a label task")
    comment: str | None = Field(None, max_length=2000)


def add_feedback_api(app: FastAPI, holder: RuntimeHolder, calls: CallLog) -> None:
    @app.post("/v1/minigate/feedback", tags=["minigate"], status_code=201,
              summary="Rate one call: a score in [0, 1], optionally the right label and a comment.",
              responses=error_responses(400, 401, 403, 404, 503))
    async def give_feedback(request: Request, body: FeedbackIn) -> Response:
        caller = holder.current.keyring.authenticate(request.headers)
        caller.require("give_feedback")
        reader = calls.reader()
        if reader is None:
            raise ServiceUnavailable("The call-log store is unavailable; send the feedback again shortly.")
        rows = await reader.store.read(CallQuery(request_id=body.request_id, kind="calls", limit=1), payloads=False)
        if not rows:
            raise NotFound(f"No call with request id {body.request_id!r} is in the call log (a call reaches it "
                           "within a second or two of its answer; check the x-minigate-request-id header).",
                           param="request_id")
        if caller.role != "admin" and rows[0]["key_name"] != caller.name:
            raise PermissionDenied(f"The key {caller.name!r} may rate only its own calls; "
                                   f"{body.request_id!r} was made with another key.")
        feedback = Feedback(body.request_id, time.time(), caller.name, body.score, body.label, body.comment)
        await reader.store.add_feedback(feedback)
        document = {"object": "minigate.feedback", "request_id": feedback.request_id, "score": feedback.score,
                    "label": feedback.label, "comment": feedback.comment, "actor": feedback.actor, "at": feedback.at}
        return Response(orjson.dumps(document), status_code=201, media_type="application/json")
