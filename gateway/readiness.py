"""`GET /readyz`: whether a load balancer should send this replica traffic, and, for operators, why.

Readiness is about what only this replica can get wrong: a call log that can persist nothing (then the
pod should be drained, or answered calls go unrecorded), or limits it can't check while `limits.fail` is
closed (limited keys would only be refused). An unreachable upstream does not make the pod
unready: every replica shares it, and other routes still serve.

Anyone may ask (probes carry no key), so the answer to an anonymous caller is the status alone; the
details (upstreams and their errors, the config generation, the last reload error, the log's problem)
are for keys that may read metrics. Upstreams are probed at most once per `_PROBE_TTL_S` whatever the
request rate, with one probe round in flight at a time, so /readyz can't be used to flood them.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from minigate.gateway.limits import Limiter
from minigate.gateway.runtime import Runtime, RuntimeHolder
from minigate.logger.pipeline import CallLog

__all__ = ["Readiness"]

_PROBE_TTL_S = 5.0


class Readiness:
    """Answers /readyz for one gateway.

    >>> readiness = Readiness(holder, calls, limiter)  # doctest: +SKIP
    >>> response = await readiness.respond(request)  # doctest: +SKIP
    """

    def __init__(self, holder: RuntimeHolder, calls: CallLog, limiter: Limiter) -> None:
        self.holder = holder
        self.calls = calls
        self.limiter = limiter
        self._probed: tuple[int, float, dict[str, str]] | None = None  # generation, when, results
        self._probing: asyncio.Lock = asyncio.Lock()

    async def respond(self, request: Request) -> Response:
        runtime = self.holder.current
        presented = any(name in request.headers for name in ("authorization", "x-api-key", "api-key"))
        problem = self.calls.problem
        ready = problem is None and not self.limiter.refusing
        body: dict[str, object] = {"status": "ready" if ready else "not_ready"}
        if runtime.keyring.is_open or presented:
            runtime.keyring.authenticate(request.headers).require("read_metrics")
            limits = self.limiter.problem or ("checked in Redis" if self.limiter.shared else "checked in process")
            body.update(
                config_generation=self.holder.generation,
                last_reload_error=self.holder.last_reload_error,
                call_log=problem or "persisting",
                limits=limits,
                upstreams=await self._upstreams(runtime),
            )
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")

    async def _upstreams(self, runtime: Runtime) -> dict[str, str]:
        async with self._probing:  # callers arriving during a probe round share its results
            generation = self.holder.generation
            if self._probed is not None:
                probed_generation, at, results = self._probed
                if probed_generation == generation and time.monotonic() - at < _PROBE_TTL_S:
                    return results
            names = list(runtime.pool.clients)
            problems = await asyncio.gather(*(runtime.pool[name].probe() for name in names))
            results = {name: problem or "reachable" for name, problem in zip(names, problems, strict=True)}
            self._probed = (generation, time.monotonic(), results)
            return results
