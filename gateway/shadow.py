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
from minigate.gateway.runtime import Runtime, RuntimeHolder
from minigate.logger.payloads import reply_from_body, reply_from_stream
from minigate.logger.pipeline import CallLog
from minigate.logger.records import AttemptRecord, CallRecord
from minigate.router.agreement import Comparison, Kind, Similarity, infer_kind, judge, judge_messages, judge_verdict
from minigate.router.cascade import ReplyView, parse_chat_reply
from minigate.router.decision import Shadow, Target
from minigate.router.signature import message_text

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
    reply: bytes | None = None  # non-streamed
    chunks: tuple[bytes, ...] | None = None  # streamed, as relayed
    kind: Kind | None = None  # the task's output kind, when the catalogue knows it (else inferred from the replies)


class Shadower:
    """The queue of shadow jobs and the background loop that runs them; started and stopped by the lifespan.

    >>> shadower = Shadower(holder, metrics, calls)  # doctest: +SKIP
    >>> if shadower.draws(decision.shadow): shadower.offer(job)  # after the client's reply; never waits  # doctest: +SKIP
    """

    def __init__(self, holder: RuntimeHolder, metrics: GatewayMetrics, calls: CallLog) -> None:
        self.holder = holder
        self.metrics = metrics
        self.calls = calls
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(QUEUE_SIZE)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    @staticmethod
    def draws(shadow: Shadow) -> bool:
        """Whether this call is in the shadow's sample (asked first, so unsampled calls cost no job)."""
        return random.random() < shadow.sample

    def offer(self, job: ShadowJob) -> None:
        """Queue the job; drop and count it when the queue is full."""
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
        called = await _call(runtime, target, _unstreamed(job.body, target.upstream_model))
        # A sampled free-text pair goes to the judge model; the others to MiniLM, when the matcher holds it.
        judged = job.shadow.judge is not None and random.random() < job.shadow.judge_sample
        similarity = runtime.tasks.similarity() if runtime.tasks is not None and not judged else None
        content = called.content if called.status == 200 else None
        # Only an embedding is slow enough for a worker thread; parsing and exact comparisons are microseconds.
        pair = (_compare(job, content, None) if similarity is None
                else await anyio.to_thread.run_sync(_compare, job, content, similarity))
        comparison = await self._judge(runtime, job, pair) if judged and pair.needs_judge else pair.comparison
        candidate = target.name if _judges_shadow(job.served, target) else job.served.name
        self.metrics.shadow_comparisons.labels(job.task, candidate, comparison.verdict).inc()
        self._record(runtime, job, target, called, "shadow", comparison.verdict, candidate)

    async def _judge(self, runtime: Runtime, job: ShadowJob, pair: _Pair) -> Comparison:
        """Ask the shadow's judge model whether a free-text pair agrees; its call is logged beside the shadow's."""
        judge = job.shadow.judge
        assert judge is not None and pair.reference.content and pair.candidate.content
        body = {"model": judge.upstream_model, "temperature": 0, "max_tokens": 4,
                "messages": judge_messages(_question(job.body), pair.reference.content, pair.candidate.content)}
        called = await _call(runtime, judge, orjson.dumps(body))
        self._record(runtime, job, judge, called, "judge", None, None, request=orjson.dumps(body))
        word = parse_chat_reply(called.content) if called.status == 200 and called.content else None
        return Comparison(judge_verdict(word.content if word is not None else None), "free_text")

    def _record(self, runtime: Runtime, job: ShadowJob, target: Target, called: _Called, rule: str,
                verdict: str | None, candidate: str | None, request: bytes | None = None) -> None:
        """A call minigate made of its own, logged and priced like any, linked to the call it shadowed.

        A shadow's request is the shadowed call's, already logged with it: it is not redacted, encrypted and
        stored a second time (that was most of a shadow's CPU). A judge's request is its own."""
        self.calls.submit(CallRecord(
            request_id=uuid.uuid4().hex, started_at=called.started_at, key_name=job.key_name, route=job.route,
            model=target.name, tier=target.tier, task=job.task, rule=rule, upstream=target.upstream,
            status=called.status or 502, latency_s=called.latency_s, stream=False,
            attempts=[AttemptRecord(upstream=target.upstream, model=target.upstream_model, status=called.status,
                                    latency_s=round(called.latency_s, 6), error=called.error)],
            request_body=request, reply=called.content, rate=runtime.prices.rates(job.route, target.name)[0],
            shadow_of=job.request_id, verdict=verdict, candidate=candidate,
        ))


@dataclass(frozen=True, slots=True)
class _Called:
    """One call minigate made of its own: when, how long, and what came back (or why nothing did)."""

    started_at: float
    latency_s: float
    status: int | None = None
    content: bytes | None = None
    error: str | None = None


async def _call(runtime: Runtime, target: Target, body: bytes) -> _Called:
    started_at, sent = time.time(), time.perf_counter()
    try:
        reply = await runtime.pool[target.upstream].chat(body)
        content = await reply.read(runtime.config.server.max_response_bytes)
    except KeyError:  # a reload removed the model's upstream since the call
        return _Called(started_at, time.perf_counter() - sent, error="unknown_upstream")
    except UpstreamError as exc:
        return _Called(started_at, time.perf_counter() - sent, error=exc.kind)
    return _Called(started_at, time.perf_counter() - sent, reply.status, content)


@dataclass(frozen=True, slots=True)
class _Pair:
    comparison: Comparison
    reference: ReplyView
    candidate: ReplyView

    @property
    def needs_judge(self) -> bool:
        """A free-text pair no embedding judged, with both texts to show a judge."""
        return (self.comparison.kind == "free_text" and self.comparison.verdict == "unjudged"
                and bool(self.reference.content) and bool(self.candidate.content))


def _compare(job: ShadowJob, shadow_reply: bytes | None, similarity: Similarity | None) -> _Pair:
    """Judge the pair (in a worker thread when a free-text judgement embeds two texts)."""
    served = _view(reply_from_body(job.reply) if job.reply is not None else reply_from_stream(list(job.chunks or ())))
    if shadow_reply is None:
        return _Pair(Comparison("error", job.kind or "free_text"), served, ReplyView(None))
    shadow = _view(reply_from_body(shadow_reply))
    reference, candidate = (served, shadow) if _judges_shadow(job.served, job.shadow.target) else (shadow, served)
    kind = job.kind or infer_kind(job.body, reference)
    return _Pair(judge(reference, candidate, kind, request=job.body, similarity=similarity), reference, candidate)


def _question(body: Mapping[str, Any]) -> str:
    """The request as a judge reads it: the last user turn's text."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


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
