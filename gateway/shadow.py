"""Shadow calls (S6): a sample of a rule's calls also goes to a second model, and the two replies are compared.

A shadow starts only after the client has its whole reply, runs in the background, and can neither
delay nor fail the call it shadows. `offer` never waits: jobs beyond a bounded queue are dropped and
counted (`minigate_shadow_dropped_total`), and at most `max_concurrency` shadow calls per model run at
once. Each shadow is logged as a call record of its own (`shadow_of` = the shadowed request's id), with
the verdict and the model it judges (`candidate`), so its tokens, latency and cost are metered like any
call's, and scorecards read verdicts straight from the call log.

The reference is the frontier's reply and the candidate the miniature's, whichever the client got:
shadowing a frontier-served call with a miniature measures the miniature before promotion; shadowing a
miniature-served call with the frontier (a reverse shadow) keeps measuring it after.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from minigate.errors import UpstreamError
from minigate.gateway.metrics import GatewayMetrics
from minigate.gateway.runtime import RuntimeHolder
from minigate.logger.payloads import reply_from_body, reply_from_stream
from minigate.logger.pipeline import CallLog
from minigate.logger.records import AttemptRecord, CallRecord
from minigate.router.agreement import Comparison, Kind, Similarity, infer_kind, judge
from minigate.router.cascade import ReplyView
from minigate.router.decision import Shadow, Target

__all__ = ["QUEUE_SIZE", "ShadowJob", "Shadower"]

log = logging.getLogger("minigate.gateway")

QUEUE_SIZE = 256  # shadow jobs waiting for a free slot; beyond it they are dropped and counted


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One answered call to shadow: what the client sent and what it got."""

    request_id: str
    route: str
    task: str  # catalogue id
    key_name: str
    served: Target
    shadow: Shadow
    body: Mapping[str, Any]
    raw: bytes  # the client's request, for the shadow's own record
    reply: bytes | None = None  # non-streamed
    chunks: tuple[bytes, ...] | None = None  # streamed, as relayed
    kind: Kind | None = None  # the task's output kind, when the catalogue knows it (else inferred from the replies)


class Shadower:
    """The queue of shadow jobs and the background loop that runs them; started and stopped by the lifespan.

    >>> shadower = Shadower(holder, metrics, calls)  # doctest: +SKIP
    >>> shadower.offer(job)  # after the client has its reply; never waits  # doctest: +SKIP
    """

    def __init__(self, holder: RuntimeHolder, metrics: GatewayMetrics, calls: CallLog,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.holder = holder
        self.metrics = metrics
        self.calls = calls
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(queue_size)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    def offer(self, job: ShadowJob) -> None:
        """Queue the job if the sample draws it; drop and count it when the queue is full."""
        if random.random() >= job.shadow.sample:
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.labels(job.shadow.target.name).inc()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop().create_task(self._take_forever())

    async def stop(self) -> None:
        """Cancel waiting and running shadows: they are minigate's own traffic, and a stop must not wait on them."""
        for task in [self._loop, *self._running]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._loop, *self._running] if t is not None], return_exceptions=True)

    async def _take_forever(self) -> None:
        while True:
            job = await self._queue.get()
            target = job.shadow.target
            slots = self._slots.setdefault(target.name, asyncio.Semaphore(job.shadow.max_concurrency))
            await slots.acquire()
            task = asyncio.get_running_loop().create_task(self._run(job))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _run(self, job: ShadowJob) -> None:
        try:
            await self._shadow(job)
        except Exception:  # a bug here must never reach a client or stop later shadows
            log.exception("shadow call for request %s failed", job.request_id)

    async def _shadow(self, job: ShadowJob) -> None:
        runtime = self.holder.current
        target = job.shadow.target
        started_at, sent = time.time(), time.perf_counter()
        status: int | None = None
        content: bytes | None = None
        error: str | None = None
        try:
            client = runtime.pool[target.upstream]
            reply = await client.chat(_unstreamed(job.body, target.upstream_model))
            status = reply.status
            content = await reply.read(runtime.config.server.max_response_bytes)
        except KeyError:  # a reload removed the model's upstream since the call
            error = "unknown_upstream"
        except UpstreamError as exc:
            error = exc.kind
        latency = time.perf_counter() - sent
        similarity = runtime.tasks.similarity() if runtime.tasks is not None else None
        comparison = await anyio.to_thread.run_sync(_compare, job, content if status == 200 else None, similarity)
        candidate = target.name if _judges_shadow(job.served, target) else job.served.name
        self.metrics.shadow_comparisons.labels(job.task, candidate, comparison.verdict).inc()
        rate = runtime.prices.rates(job.route, target.name)[0]
        self.calls.submit(CallRecord(
            request_id=uuid.uuid4().hex, started_at=started_at, key_name=job.key_name, route=job.route,
            model=target.name, tier=target.tier, task=job.task, rule="shadow", upstream=target.upstream,
            status=status or 502, latency_s=latency, stream=False,
            attempts=[AttemptRecord(upstream=target.upstream, model=target.upstream_model, status=status,
                                    latency_s=round(latency, 6), error=error)],
            request_body=job.raw, reply=content, rate=rate,
            shadow_of=job.request_id, verdict=comparison.verdict, candidate=candidate,
        ))



def _compare(job: ShadowJob, shadow_reply: bytes | None, similarity: Similarity | None) -> Comparison:
    """Judge the pair (in a worker thread: a free-text judgement embeds two texts)."""
    served = _view(reply_from_body(job.reply) if job.reply is not None else reply_from_stream(list(job.chunks or ())))
    if shadow_reply is None:
        return Comparison("error", job.kind or "free_text")
    shadow = _view(reply_from_body(shadow_reply))
    reference, candidate = (served, shadow) if _judges_shadow(job.served, job.shadow.target) else (shadow, served)
    kind = job.kind or infer_kind(job.body, reference)
    return judge(reference, candidate, kind, request=job.body, similarity=similarity)


def _judges_shadow(served: Target, shadow: Target) -> bool:
    """Whether the shadow's reply is the one judged (the candidate), against the client's. It is, except in
    a reverse shadow: a miniature served the client and the frontier checks it."""
    return not (served.tier == "miniature" and shadow.tier == "frontier")


def _view(reply: Any) -> ReplyView:
    message = reply.choices[0].get("message", {}) if reply.choices else {}
    content = message.get("content")
    calls = message.get("tool_calls")
    return ReplyView(content if isinstance(content, str) else None, tuple(calls) if isinstance(calls, list) else ())


def _unstreamed(body: Mapping[str, Any], upstream_model: str) -> bytes:
    """The client's request for the shadow model, answered whole: the comparison needs the full reply."""
    request = {key: value for key, value in body.items() if key != "stream_options"}
    return orjson.dumps({**request, "model": upstream_model, "stream": False})
