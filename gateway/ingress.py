"""One call, whatever protocol the client speaks: authenticate, parse once, decide, dispatch, answer, record.

Every ingress (chat completions, Responses, Anthropic Messages) is this handler with a `Dialect`: the
dialect turns the client's body into a chat completions request (`ChatRequest`, the form upstreams,
the router, the cascade and the call log all read) and the chat-shaped answer back into its own protocol.
So routing, task matching, rules, escalation, fallbacks, shadows, metrics, traces and the call record
are one code path for every ingress; the call log keeps every call in its chat form, the form the
conversion loop trains miniatures on.

Chat completions relay bytes: a non-streamed reply reaches the client exactly as the upstream sent it,
and a stream is forwarded chunk by chunk as it arrives, never re-framed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from minigate.errors import (
    ClientClosedRequest,
    InvalidRequest,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    UpstreamError,
    UpstreamUnavailable,
)
from minigate.gateway.dispatch import Dispatcher, Interrupted, NormalisedRequest, Outcome, Reply
from minigate.gateway.auth import Caller
from minigate.gateway.errors import error_body
from minigate.gateway.limits import Limiter
from minigate.gateway.metrics import GatewayMetrics
from minigate.gateway.protocol import ChatRequest
from minigate.gateway.runtime import Runtime, RuntimeHolder
from minigate.gateway.shadow import Shadower, ShadowJob
from minigate.gateway.waste import abandoned_stream
from minigate.logger.pipeline import CallLog
from minigate.logger.records import AttemptRecord, CallRecord
from minigate.router.agreement import Kind, as_kind
from minigate.router.cascade import NO_CONTRACT, TaskContract
from minigate.router.decision import Decision
from minigate.router.matcher import UNKNOWN_TASK
from minigate.router.prices import PriceBook
from minigate.serving.upstream import UpstreamReply

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when telemetry is on
    from minigate.gateway.tracing import CallTrace, Tracing

__all__ = ["Dialect", "Exchange", "Ingress", "StreamAnswer", "Untranslatable"]

log = logging.getLogger("minigate.gateway")

_CLIENT_CLOSED = ClientClosedRequest.status


class Untranslatable(Exception):
    """The upstream's reply can't be put in the client's protocol (not a chat completion): a 502, as an
    unreadable upstream reply is, or a stream's error event."""


class StreamAnswer(Protocol):
    """A streamed chat answer on its way to one client, in the client's protocol."""

    def feed(self, chunk: bytes) -> bytes:
        """The client's bytes for this chunk of the upstream's chat stream (b"" while an event is incomplete)."""

    def end(self) -> bytes:
        """What the client still needs once the upstream's stream has ended."""

    def fail(self, exc: UpstreamError) -> bytes:
        """The event that tells the client the stream broke off (headers are gone: no status can)."""


class Exchange(Protocol):
    """One parsed call: the chat request to dispatch, and how its chat-shaped answer reaches the client.

    `native`: the client's own body for an upstream that serves the client's protocol itself (see
    NormalisedRequest.native); a reply from one is in that protocol already (`native=True` below).
    """

    chat: ChatRequest

    @property
    def native(self) -> Callable[[str], bytes] | None:
        """The client's own body for an upstream model id; None: every upstream gets chat."""

    def whole(self, status: int, content: bytes, native: bool) -> bytes:
        """The client's body for a non-streamed reply (a chat completion, or an error in OpenAI's shape)."""

    def stream(self, native: bool) -> StreamAnswer:
        """A fresh translator for a streamed reply."""


class Dialect(Protocol):
    """A client protocol on the shared call path (gateway.openai_api, gateway.responses, gateway.messages)."""

    async def parse(self, raw: bytes, caller: Caller, request_id: str, path_model: str | None) -> Exchange:
        """The client's body as a chat request; a RequestError says what is wrong with it. `path_model`:
        the model the URL names (Azure's deployments), which takes the place of the body's."""

    def error(self, exc: RequestError, headers: Mapping[str, str]) -> Response:
        """An error before or instead of the answer, in the client's protocol."""


@dataclass(slots=True)
class _Call:
    """What the handler learns about one call as it goes, for headers, metrics and the call record."""

    request_id: str
    started: float  # perf_counter, for durations
    started_at: float  # wall clock, for the record
    key_name: str = ""
    decision: Decision | None = None
    outcome: Outcome | None = None  # what the dispatcher did (or had done when the client left)
    stream: bool = False
    body: bytes | None = None
    parsed: dict[str, Any] | None = None  # the body as parsed once, for a shadow call
    user: str | None = None
    first_byte: float | None = None  # perf_counter when the reply's first byte went to the client
    prices: PriceBook | None = None  # of the config generation that served the call
    task: str = UNKNOWN_TASK  # catalogue task id (records, metrics)
    task_name: str = UNKNOWN_TASK  # its name (headers, rules)
    kind: Kind | None = None  # its output kind, when the catalogue knows it (how a shadow judges the call)
    frontier_output_tokens: int | None = None  # its median frontier reply, when known (a miniature's counterfactual)
    trace: CallTrace | None = None  # its spans, when telemetry is on
    max_response_bytes: int | None = None  # server.max_response_bytes of the generation serving the call


class Ingress:
    """The handler for one dialect, bound to the runtime holder, the metrics it updates, the call log it
    feeds and the tracer (None: telemetry off, and not one span object is made)."""

    def __init__(self, dialect: Dialect, holder: RuntimeHolder, metrics: GatewayMetrics, calls: CallLog,
                 limiter: Limiter, tracing: Tracing | None = None, shadower: Shadower | None = None) -> None:
        self.dialect = dialect
        self.holder = holder
        self.metrics = metrics
        self.calls = calls
        self.limiter = limiter
        self.tracing = tracing
        self.shadower = shadower

    async def __call__(self, request: Request) -> Response:
        call = _Call(uuid.uuid4().hex, time.perf_counter(), time.time())
        request.state.request_id = call.request_id
        headers = {"x-minigate-request-id": call.request_id}
        try:
            runtime = self.holder.current
            server = runtime.config.server
            call.prices, call.max_response_bytes = runtime.prices, server.max_response_bytes
            if self.tracing is not None:
                call.trace = self.tracing.begin(call.request_id, request.headers, runtime.config.upstreams)
            caller = runtime.keyring.authenticate(request.headers)
            call.key_name = caller.name
            caller.require("infer")
            raw = await _read_body(request, server.max_body_bytes, server.body_timeout_s)
            exchange = await self.dialect.parse(raw, caller, call.request_id, request.path_params.get("deployment"))
            chat = exchange.chat
            call.stream, call.body, call.parsed = chat.stream, chat.raw, chat.body
            headers.update(await self.limiter.admit(caller, chat.model))
            user = chat.body.get("user")
            call.user = user if isinstance(user, str) else None
            return await _unless_client_leaves(request, self._answer(runtime, exchange, call, headers, request))
        except RequestError as exc:
            response = self.dialect.error(exc, {**exc.headers, **headers})
            # The record keeps the error as the client got it.
            self._finish(call, exc.status, reply=bytes(response.body))
            return response

    async def _answer(self, runtime: Runtime, exchange: Exchange, call: _Call, headers: dict[str, str],
                      request: Request) -> Response:
        """Match, decide, dispatch (escalating and falling back as the route says) and start the answer."""
        chat = exchange.chat
        if chat.operation != "chat":  # no messages: neither tasks nor rules can read it
            decision = call.decision = runtime.router.default(chat.model)
        else:
            if runtime.tasks is not None:
                call.task = await runtime.tasks.match(chat.body)
                call.task_name = runtime.tasks.name_of(call.task)
                call.frontier_output_tokens = runtime.tasks.frontier_output_tokens(call.task)
            decision = call.decision = _with_task_shadow(
                runtime, call.task, runtime.router.decide(chat.model, chat.body, request.headers, call.task_name,
                                                          runtime.pool.loads))
        dispatcher = Dispatcher(runtime.pool, self.metrics, call.max_response_bytes, call.trace)
        contract = runtime.tasks.contract(call.task) if runtime.tasks is not None else NO_CONTRACT
        call.kind = as_kind(contract.kind)
        try:
            outcome = call.outcome = await dispatcher.dispatch(_normalised(exchange, contract), decision)
        except Interrupted as exc:  # the client left mid-call: its record shows what was tried
            call.outcome = exc.outcome
            raise
        headers.update(_outcome_headers(decision, outcome, call.task_name))
        if outcome.error is not None:
            raise outcome.error
        assert outcome.reply is not None
        upstream = outcome.reply.upstream
        if chat.stream and upstream.status == 200:
            return StreamingResponse(self._relay(outcome.reply, call, exchange.stream(outcome.reply.native)),
                                     headers=_merge(upstream, headers))
        return await self._complete(upstream, call, headers, exchange, outcome.reply.native)

    async def _complete(self, reply: UpstreamReply, call: _Call, headers: dict[str, str],
                        exchange: Exchange, native: bool) -> Response:
        try:
            content = await reply.read(call.max_response_bytes)
        except UpstreamError as exc:  # cut, timed out or too large on the way in
            self._count(exc)
            raise
        call.first_byte = time.perf_counter()
        if reply.status >= 500:  # counted as it arrived (gateway.dispatch)
            # An upstream's 5xx body is for operators: it can quote internals (stack traces, hosts, keys).
            log.warning("upstream %r answered HTTP %d: %s", reply.upstream, reply.status,
                        content[:300].decode("utf-8", "replace"))
            raise UpstreamUnavailable(
                f"upstream {reply.upstream!r} answered HTTP {reply.status}; the gateway's log has its reply",
                upstream=reply.upstream,
                kind=f"status_{reply.status}",
            )
        merged = _merge(reply, headers)
        if reply.status >= 400 and not _is_openai_error(content):
            content = _as_openai_error(reply, content)
            merged["content-type"] = "application/json"
        try:
            answer = exchange.whole(reply.status, content, native)
        except Untranslatable as exc:
            raise _unreadable(reply.upstream, exc) from exc
        self._finish(call, reply.status, content)
        return Response(answer, reply.status, headers=merged)

    async def _relay(self, reply: Reply, call: _Call, answer: StreamAnswer) -> AsyncIterator[bytes]:
        status = _CLIENT_CLOSED
        cut: str | None = None  # why the upstream's stream broke off, when it did
        relayed: list[bytes] = []  # as the upstream sent them, usage included, for the call record
        try:
            try:
                async for chunk in reply.chunks():
                    relayed.append(chunk)
                    if out := answer.feed(chunk):
                        call.first_byte = call.first_byte or time.perf_counter()
                        yield out
                if rest := answer.end():
                    yield rest
            except Untranslatable as exc:
                raise _unreadable(reply.upstream.upstream, exc) from exc
            status = 200
        except UpstreamError as exc:
            # Headers are gone already: the failure can only travel as an event the SDKs understand.
            status, cut = exc.status, exc.kind
            self._count(exc)
            relayed.append(b"data: " + error_body(exc.message, exc.type, exc.code) + b"\n\n")
            yield answer.fail(exc)
        finally:
            self._finish(call, status, chunks=relayed, cut=cut)

    def _count(self, exc: UpstreamError) -> None:
        """An upstream failure met while relaying; the dispatcher counts those before it."""
        self.metrics.upstream_errors.labels(exc.upstream, exc.kind).inc()

    def _finish(self, call: _Call, status: int, reply: bytes | None = None, chunks: list[bytes] | None = None,
                cut: str | None = None) -> None:
        """Count the call and hand its record to the log; neither waits for anything."""
        elapsed = time.perf_counter() - call.started
        decision = call.decision
        if call.trace is not None:
            call.trace.finish(status, chunks[0] if chunks else reply, recorded=decision is not None)
        if decision is None:  # refused before routing (auth, malformed body, unknown model)
            self.metrics.requests.labels("", "", "", UNKNOWN_TASK, str(status)).inc()
            return
        outcome = call.outcome or Outcome(decision.target)
        target = outcome.served
        ttft = None if call.first_byte is None else call.first_byte - call.started
        self.metrics.observe(decision.route, target.name, target.tier, call.task, status, elapsed,
                             ttft=ttft if call.stream and status == 200 else None)
        rate, counterfactual = call.prices.rates(decision.route, target.name) if call.prices else (None, None)
        wasted = outcome.wasted
        # A stream its client left still cost what the upstream generated: estimated, its usage never came.
        left = status == _CLIENT_CLOSED and bool(chunks)
        input_tokens, output_tokens = abandoned_stream(chunks or (), call.parsed or {}) if left else (None, None)
        self.calls.submit(CallRecord(
            request_id=call.request_id, started_at=call.started_at, key_name=call.key_name, route=decision.route,
            model=target.name, tier=target.tier, task=call.task, rule=decision.rule, upstream=target.upstream,
            status=status, latency_s=elapsed, stream=call.stream, ttft_s=ttft,
            attempts=_recorded_attempts(outcome, cut), escalated=outcome.escalated,
            request_body=call.body, user=call.user, reply=reply, chunks=chunks,
            rate=rate, counterfactual_rate=counterfactual, input_tokens=input_tokens, output_tokens=output_tokens,
            # Without minigate the frontier would have written the reply: as long as it usually does.
            counterfactual_output_tokens=call.frontier_output_tokens if target.tier == "miniature" else None,
            wasted_rate=call.prices.rate(wasted.model) if wasted and call.prices else None,
            wasted_input_tokens=wasted.input_tokens if wasted else None,
            wasted_output_tokens=wasted.output_tokens if wasted else None,
        ))
        if decision.shadow is not None and status == 200 and self.shadower is not None:
            self._shadow(call, decision, outcome, reply, chunks)

    def _shadow(self, call: _Call, decision: Decision, outcome: Outcome, reply: bytes | None,
                chunks: list[bytes] | None) -> None:
        """Offer the answered call to the shadower, unless the shadow model is the one that answered
        (an escalation or a fallback already put the other model's reply in front of the client)."""
        assert decision.shadow is not None and self.shadower is not None
        if (outcome.escalated or outcome.fell_back or outcome.served.name == decision.shadow.target.name
                or not self.shadower.draws(decision.shadow)):
            return
        self.shadower.offer(ShadowJob(
            request_id=call.request_id, route=decision.route, task=call.task, key_name=call.key_name,
            served=outcome.served, shadow=decision.shadow, body=call.parsed or {}, reply=reply,
            chunks=tuple(chunks) if chunks is not None else None, kind=call.kind,
        ))


async def _unless_client_leaves(request: Request, answer: Coroutine[Any, Any, Response]) -> Response:
    """`answer`, cancelled the moment the client disconnects: an upstream call nobody will read stops
    now, not at its read timeout, and the call is recorded as 499. A stream's relay, once started, is
    watched by Starlette's StreamingResponse itself.

    The answer runs in the handler's own task (a watcher task cancels it), not in a task of its own:
    an upstream stream opened in one task must be read in the same one (litellm's are not portable).
    """
    task = asyncio.current_task()
    assert task is not None
    watching = True

    def on_leave(leaving: asyncio.Task[None]) -> None:
        if watching and not leaving.cancelled():
            task.cancel()

    leaving = asyncio.ensure_future(_disconnected(request))
    leaving.add_done_callback(on_leave)
    try:
        return await answer
    except asyncio.CancelledError:
        if not leaving.done() or leaving.cancelled():
            raise  # the gateway is stopping, not the client leaving
        task.uncancel()
        raise ClientClosedRequest("The client closed the connection before the answer was ready.") from None
    finally:
        watching = False
        leaving.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read by then: nothing else is received)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest(f"Invalid Content-Length header {declared!r}.")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(size, limit)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout_s:g} s (server.body_timeout_s); send it at once."
        ) from None
    except ClientDisconnect:
        raise ClientClosedRequest("The client closed the connection while sending the body.") from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body ({size} bytes) exceeds this gateway's limit of {limit} bytes; "
        "send a smaller request or raise server.max_body_bytes."
    )


def _normalised(exchange: Exchange, contract: TaskContract) -> NormalisedRequest:
    """The chat request as the dispatcher takes it (chat completions are the normalised form already),
    with its matched task's contract for the cascade."""
    chat = exchange.chat
    return NormalisedRequest(chat.body, chat.stream, chat.encode, contract, chat.operation, exchange.native)


def _with_task_shadow(runtime: Runtime, task: str, decision: Decision) -> Decision:
    """The decision, shadowed as the task's catalogue entry says when its rule names no shadow of its own."""
    spec = runtime.tasks.shadow(task) if decision.shadow is None and runtime.tasks is not None else None
    if spec is None or spec.model not in runtime.router.targets or (spec.judge or spec.model) not in runtime.router.targets:
        return decision
    return replace(decision, shadow=runtime.router.shadow_of(spec))


def _outcome_headers(decision: Decision, outcome: Outcome, task_name: str) -> dict[str, str]:
    """Who answered and why: the served model, not necessarily the chosen one."""
    headers = {
        "x-minigate-model": outcome.served.name,
        "x-minigate-tier": outcome.served.tier,
        "x-minigate-task": task_name,
        "x-minigate-rule": decision.rule,
    }
    if outcome.escalated:
        headers["x-minigate-escalated"] = outcome.escalated
    if outcome.fell_back:
        headers["x-minigate-fallback"] = ", ".join(outcome.fell_back)
    return headers


def _recorded_attempts(outcome: Outcome, cut: str | None) -> list[AttemptRecord] | None:
    """The outcome's attempts, the last one marked with the failure that cut its stream short."""
    attempts = list(outcome.attempts)
    if cut is not None and attempts:
        attempts[-1] = replace(attempts[-1], error=cut)
    return attempts or None


def _unreadable(upstream: str, exc: Untranslatable) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"upstream {upstream!r} sent a reply that is not a chat completion ({exc})",
                               upstream=upstream, kind="invalid_reply")


def _merge(reply: UpstreamReply, ours: dict[str, str]) -> dict[str, str]:
    """The upstream's headers a client may see, then ours. An upstream can't speak for minigate
    (`x-minigate-*`) or set cookies on the gateway's origin."""
    merged = {name: value for name, value in reply.headers if _is_relayable(name.lower())}
    merged.update(ours)
    return merged


def _is_relayable(name: str) -> bool:
    return not name.startswith("x-minigate-") and name not in ("set-cookie", "set-cookie2")


def _is_openai_error(content: bytes) -> bool:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def _as_openai_error(reply: UpstreamReply, content: bytes) -> bytes:
    """An upstream's 4xx that isn't OpenAI-shaped (an HTML page, plain text), in the shape clients parse."""
    excerpt = content[:300].decode("utf-8", "replace")
    return error_body(f"upstream {reply.upstream!r} answered HTTP {reply.status}: {excerpt}",
                      "invalid_request_error", f"upstream_status_{reply.status}")
