"""One call to the upstreams for any ingress: the decided model, escalated and fallen back as the route says.

An ingress (chat completions today; Responses and Anthropic Messages translate into the same form)
parses its request, asks the router for a decision, and hands both to a `Dispatcher`. It gets back an
`Outcome`, a value that says everything the call did: the model that served, why the chosen miniature
was escalated (and the tokens of the reply it discarded), which fallbacks replaced failing models, every
upstream attempt, and the reply to relay or the error that ends the call. The ingress keeps its
protocol: headers, relay, the call record.

Each upstream failure is counted (`minigate_upstream_errors_total`) here, where it happens; a failure
while relaying, after the outcome, is the ingress's to count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from minigate.errors import UpstreamError, UpstreamTimeout
from minigate.gateway.metrics import GatewayMetrics
from minigate.gateway.waste import Wasted, wasted_reply, wasted_stream
from minigate.logger.records import AttemptRecord
from minigate.router.cascade import (
    CONTENT_CHECKS,
    NO_CONTRACT,
    StreamCheck,
    TaskContract,
    check_reply,
    parse_chat_reply,
)
from minigate.router.decision import Decision, Target
from minigate.serving.pool import UpstreamPool
from minigate.serving.replicas import Attempt
from minigate.serving.upstream import Operation, UpstreamReply

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when telemetry is on
    from minigate.gateway.tracing import CallTrace

__all__ = ["Dispatcher", "Interrupted", "NormalisedRequest", "Outcome", "Reply"]


@dataclass(frozen=True, slots=True)
class NormalisedRequest:
    """A request as every ingress hands it over: in OpenAI's chat shape, which is what upstreams speak.

    `encode(upstream_model, include_usage)` gives the bytes to send to an upstream; a stream always asks
    for its usage chunk (the call record counts tokens from it), and the ingress strips it again when
    its client did not ask. `contract` is what the matched task's replies must be (the matcher's
    `contract`): the cascade checks a miniature's reply against it too, beyond what the body asks.
    """

    body: Mapping[str, Any]  # what the cascade checks read: tools, response_format
    stream: bool
    encode: Callable[[str, bool], bytes]
    contract: TaskContract = NO_CONTRACT
    operation: Operation = "chat"  # embeddings and text completions take the same way, unchecked
    # The client's own body, model replaced, for upstreams that serve its protocol themselves (a Responses
    # call to an upstream with `responses: native`); None: every upstream gets `encode`'s chat body.
    native: Callable[[str], bytes] | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The reply to relay. A checked stream arrives part-read: its held chunks, then the rest."""

    upstream: UpstreamReply
    limit: int | None = None  # bytes the whole reply may carry (server.max_response_bytes)
    held: tuple[bytes, ...] = ()
    rest: AsyncGenerator[bytes, None] | None = None
    native: bool = False  # in the client's own protocol (NormalisedRequest.native), not chat

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.held:
            yield chunk
        async for chunk in self.rest if self.rest is not None else self.upstream.chunks(self.limit):
            yield chunk


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one dispatch did. Exactly one of `reply` and `error` is set, except in `Interrupted`'s.

    >>> from minigate.router.decision import Target
    >>> Outcome(Target("mini", "local", "mini-lora", "miniature")).fell_back
    ()
    """

    served: Target  # the model whose reply (or failure) the client gets
    escalated: str | None = None  # why the chosen miniature was replaced, when it was
    fell_back: tuple[str, ...] = ()  # "model=kind" for each model a route fallback replaced
    attempts: tuple[AttemptRecord, ...] = ()
    reply: Reply | None = None
    error: UpstreamError | None = None
    wasted: Wasted | None = None  # the escalated miniature's reply, when it wrote one: the call paid for it


class Interrupted(asyncio.CancelledError):
    """The dispatch was cancelled (the client left, or the gateway stops); `outcome` is what it had done,
    an upstream call it cut short marked `client_closed`, so the call record still shows the call.

    Raised only by `dispatch` itself, never inside a rule's `asyncio.timeout`: Python 3.11 turns only a
    plain CancelledError into the TimeoutError that escalates on `timeout`.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__()
        self.outcome = outcome


@dataclass(slots=True)
class _Trail:
    """What one dispatch has done so far: private to it, handed out only as an `Outcome`."""

    target: Target  # the model being called
    escalated: str | None = None
    fell_back: list[str] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    wasted: Wasted | None = None

    def outcome(self, reply: Reply | None, error: UpstreamError | None) -> Outcome:
        return Outcome(self.target, self.escalated, tuple(self.fell_back), tuple(self.attempts), reply, error,
                       self.wasted)


class Dispatcher:
    """Calls one request's decided model through the pool of the config generation serving it.

    Made per request: it binds that generation's pool and reply limit and the request's trace (None:
    telemetry off). `dispatch` returns the outcome: an upstream's failure is in it, not raised; only a
    cancellation is (`Interrupted`).

    >>> outcome = await Dispatcher(runtime.pool, metrics, limit=None).dispatch(request, decision)  # doctest: +SKIP
    >>> outcome.served.name, outcome.escalated, outcome.fell_back  # doctest: +SKIP
    ('gpt-4.1', 'invalid_json', ())
    """

    __slots__ = ("limit", "metrics", "pool", "trace")

    def __init__(self, pool: UpstreamPool, metrics: GatewayMetrics, limit: int | None,
                 trace: CallTrace | None = None) -> None:
        self.pool = pool
        self.metrics = metrics
        self.limit = limit
        self.trace = trace

    async def dispatch(self, request: NormalisedRequest, decision: Decision) -> Outcome:
        trail = _Trail(decision.target)
        try:
            reply, error = await self._with_fallbacks(request, decision, trail)
        except asyncio.CancelledError as exc:
            raise Interrupted(trail.outcome(None, None)) from exc
        return trail.outcome(reply, error)

    async def _with_fallbacks(self, request: NormalisedRequest, decision: Decision,
                              trail: _Trail) -> tuple[Reply | None, UpstreamError | None]:
        """The chosen model (escalated as its rule says), then the route's fallbacks in order while the
        model's upstream fails after its own retries, before any byte reached the client: unreachable,
        timed out, 5xx, or 429. Only the reply relayed is billed; the last fallback's failure is the client's.
        """
        reply, error = await _settled(self._escalating(request, decision, trail))
        tried = {decision.target.name}
        while (failure := _failure(reply, error)) is not None:
            failed = trail.target  # escalation may have replaced the chosen model
            tried.add(failed.name)
            fallback = next((t for t in decision.fallbacks if t.name not in tried), None)
            if fallback is None:
                break
            if reply is not None:
                await reply.upstream.close()
                if reply.upstream.status == 429:  # not a failure until no retry got past it (5xx: counted on arrival)
                    self._count(failed.upstream, failure)
            trail.fell_back.append(f"{failed.name}={failure}")
            reply, error = await _settled(self._reply(request, fallback, trail))
        return reply, error

    async def _escalating(self, request: NormalisedRequest, decision: Decision, trail: _Trail) -> Reply:
        """Call the chosen model; a miniature that fails its rule's checks is replaced by the escalation model.

        Non-streamed replies are checked whole before any byte leaves; streams are held only until
        the chunk that settles the checks (router.cascade.StreamCheck), then relayed.
        """
        try:
            async with asyncio.timeout(decision.timeout_s):
                reply = await self._reply(request, decision.target, trail)
                reason, reply, trail.wasted = await self._check(request, decision, reply)
        except UpstreamError as exc:
            reason = "timeout" if exc.kind == "timeout" else "error"
            if reason not in decision.escalate_on:
                raise
        except TimeoutError:
            _timed_out(trail)
            if "timeout" not in decision.escalate_on:
                self._count(decision.target.upstream, "timeout")
                raise UpstreamTimeout(f"model {decision.target.name!r} exceeded its rule's timeout_s",
                                      upstream=decision.target.upstream, kind="timeout") from None
            reason = "timeout"
        if reason is None:
            return reply
        assert decision.escalate_to is not None
        self.metrics.escalations.labels(decision.route, reason).inc()
        trail.escalated = reason
        if self.trace is not None:
            self.trace.escalate(reason)
        return await self._reply(request, decision.escalate_to, trail)

    async def _reply(self, request: NormalisedRequest, target: Target, trail: _Trail) -> Reply:
        native = request.native is not None and self.pool[target.upstream].native_responses
        return Reply(await self._send(request, target, trail, native), self.limit, native=native)

    async def _send(self, request: NormalisedRequest, target: Target, trail: _Trail, native: bool) -> UpstreamReply:
        trail.target = target
        operation: Operation = "responses" if native else request.operation
        if native:
            assert request.native is not None
            body = request.native(target.upstream_model)
        else:
            body = request.encode(target.upstream_model, request.stream)
        sent_at = time.perf_counter()
        client = self.pool[target.upstream]
        try:
            reply = await (self.trace.call(client, target, operation, body) if self.trace
                           else client.send(operation, body))
        except UpstreamError as exc:
            trail.attempts += _attempts(target, getattr(exc, "attempts", []), sent_at, None, exc.kind)
            self._count(exc.upstream, exc.kind)
            raise
        except asyncio.CancelledError:  # the client left (or the gateway stops): the record still shows the call
            trail.attempts += _attempts(target, [], sent_at, None, "client_closed")
            raise
        trail.attempts += _attempts(target, reply.attempts, sent_at, reply.status, None)
        if reply.status >= 500:
            self._count(reply.upstream, f"status_{reply.status}")
        return reply

    async def _check(self, request: NormalisedRequest, decision: Decision,
                     reply: Reply) -> tuple[str | None, Reply, Wasted | None]:
        """Why this reply must not reach the client, by the decision's escalate_on (None when it may),
        the reply to relay if it may (a checked stream's held chunks come first), and what the reply
        cost if it may not (an error reply wrote nothing)."""
        upstream = reply.upstream
        if not decision.escalate_on:
            return None, reply, None
        if upstream.status >= 500 and "error" in decision.escalate_on:
            await upstream.close()
            return "error", reply, None
        if upstream.status != 200 or reply.native:  # the content checks read chat replies only
            return None, reply, None
        if request.stream and not decision.escalate_on & CONTENT_CHECKS:
            return None, reply, None
        try:
            if request.stream:
                return await self._settle(request, decision, reply)
            content = await upstream.read(reply.limit)
        except UpstreamError as exc:  # cut, or too large, while reading what the checks need
            self._count(exc.upstream, exc.kind)
            raise
        reason = check_reply(request.body, parse_chat_reply(content), decision.escalate_on, request.contract)
        return reason, reply, wasted_reply(decision.target.name, content) if reason else None

    @staticmethod
    async def _settle(request: NormalisedRequest, decision: Decision,
                      reply: Reply) -> tuple[str | None, Reply, Wasted | None]:
        """Hold the stream's first chunks until they settle the checks; they are relayed first if it passes."""
        check = StreamCheck(request.body, decision.escalate_on, request.contract)
        chunks = reply.upstream.chunks(reply.limit)
        held: list[bytes] = []
        verdict = None
        try:
            async for chunk in chunks:
                held.append(chunk)
                if verdict := check.feed(chunk):
                    break
            else:
                verdict = check.end()
        except BaseException:  # a cut or the rule's timeout while holding: nothing reached the client
            await chunks.aclose()
            raise
        if verdict == "relay":
            return None, dataclasses.replace(reply, held=tuple(held), rest=chunks), None
        await chunks.aclose()
        return verdict, reply, wasted_stream(decision.target.name, held)

    def _count(self, upstream: str, kind: str) -> None:
        self.metrics.upstream_errors.labels(upstream, kind).inc()


async def _settled(sending: Awaitable[Reply]) -> tuple[Reply | None, UpstreamError | None]:
    """The reply, or the upstream failure that stands in for it."""
    try:
        return await sending, None
    except UpstreamError as exc:
        return None, exc


def _attempts(target: Target, calls: list[Attempt], sent_at: float, status: int | None,
              error: str | None) -> list[AttemptRecord]:
    """The upstream calls behind one send, as the record keeps them (latency to the reply's headers).

    An upstream that retried (another replica, a 429 honoured) made several calls: each is its own
    attempt, with its base URL, so a retried request shows as attempts of one request, billed once.
    """
    if len(calls) <= 1:
        return [AttemptRecord(upstream=target.upstream, model=target.upstream_model, status=status,
                              latency_s=round(time.perf_counter() - sent_at, 6), error=error)]
    return [AttemptRecord(upstream=target.upstream, model=target.upstream_model, base_url=attempt.base_url,
                          status=attempt.status, latency_s=round(attempt.latency_s, 6), error=attempt.error)
            for attempt in calls]


def _failure(reply: Reply | None, error: UpstreamError | None) -> str | None:
    """What a route's fallback replaces: the upstream's failure, a 5xx, or 429 that the upstream's own
    retries could not get past. None: the reply is the client's."""
    if error is not None:
        return error.kind
    assert reply is not None
    status = reply.upstream.status
    return f"status_{status}" if status >= 500 or status == 429 else None


def _timed_out(trail: _Trail) -> None:
    """The rule's timeout works by cancelling the send, which recorded the attempt as the client's doing."""
    if trail.attempts and trail.attempts[-1].error == "client_closed":
        trail.attempts[-1] = dataclasses.replace(trail.attempts[-1], error="timeout")
