"""The floor for a Python gateway: receive a POST, forward it, return the upstream's reply.

No auth, no parsing, no logging: what is left is the cost of uvicorn + Starlette + one pooled
httpx client, which is what any gateway built on them pays before doing any work of its own.
The request path is forwarded as is, so `/sse/v1/chat/completions` reaches the upstream's
streaming location; event streams are relayed chunk by chunk, other bodies read whole.

    MINIMAL_PROXY_UPSTREAM=http://127.0.0.1:8081 uvicorn minimal_proxy:app --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("MINIMAL_PROXY_UPSTREAM", "http://127.0.0.1:8081")
# Enough keep-alive connections for the benchmark's highest concurrency, so none is reopened.
LIMITS = httpx.Limits(max_connections=128, max_keepalive_connections=128)
client = httpx.AsyncClient(base_url=UPSTREAM, limits=LIMITS, timeout=30.0, trust_env=False)


async def forward(request: Request) -> Response:
    headers = {"content-type": request.headers.get("content-type", "application/json")}
    outbound = client.build_request("POST", request.url.path, content=await request.body(), headers=headers)
    upstream = await client.send(outbound, stream=True)
    media_type = upstream.headers.get("content-type")
    if media_type is not None and media_type.startswith("text/event-stream"):
        return StreamingResponse(upstream.aiter_raw(), upstream.status_code, media_type=media_type,
                                 background=BackgroundTask(upstream.aclose))
    body = await upstream.aread()
    await upstream.aclose()
    return Response(body, upstream.status_code, media_type=media_type)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await client.aclose()


app = Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])], lifespan=lifespan)
