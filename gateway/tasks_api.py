"""`GET /v1/minigate/tasks`: the task catalogue the gateway matches requests to (analyst and admin keys)."""

from __future__ import annotations

import anyio
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from minigate.gateway.openapi import error_responses
from minigate.gateway.runtime import RuntimeHolder

__all__ = ["add_tasks_api"]


def add_tasks_api(app: FastAPI, holder: RuntimeHolder) -> None:
    @app.get("/v1/minigate/tasks", tags=["minigate"], summary="The task catalogue: ids, names, sizes, signatures.",
             responses=error_responses(401, 403))
    async def list_tasks(request: Request) -> Response:
        runtime = holder.current
        runtime.keyring.authenticate(request.headers).require("read_calls")
        path = runtime.config.tasks.catalogue
        if path is None:
            body: dict[str, object] = {"object": "list", "data": [], "catalogue": None}
        else:
            from minigate.router.catalogue import catalogue_document, load_catalogue

            document = catalogue_document(await anyio.to_thread.run_sync(load_catalogue, path))
            body = {"object": "list", "data": document.pop("tasks"), "catalogue": document}
        return Response(orjson.dumps(body), media_type="application/json")
