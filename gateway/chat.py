"""`POST /v1/chat/completions`: authenticate, parse once, decide, call the upstream, relay its answer.

Bodies are relayed as bytes: a non-streamed reply reaches the client exactly as the upstream sent it,
and a stream is forwarded chunk by chunk as it arrives, never re-framed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    UpstreamTimeout,
    UpstreamUnavailable,
)
from minigate.gateway.errors import error_body, error_response
from minigate.gateway.metrics import GatewayMetrics
from minigate.gateway.protocol import ChatRequest, parse_chat_request
from minigate.gateway.runtime import Runtime, RuntimeHolder
from minigate.gateway.usage_stream import UsageStripper
from minigate.logger.pipeline import CallLog
from minigate.logger.records import CallRecord
from minigate.router.cascade import CONTENT_CHECKS, StreamCheck, check_reply
from minigate.router.decision import Decision, Target
from minigate.router.matcher import UNKNOWN_TASK
from minigate.serving.pool import UpstreamPool
from minigate.serving.pricing import PriceBook
from minigate.serving.replicas import Attempt
from minigate.serving.upstream import UpstreamReply

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when telemetry is on
    from minigate.gateway.tracing import CallTrace, Tracing

__all__ = ["ChatEndpoint"]

log = logging.getLogger("minigate.gateway")

_CLIENT_CLOSED = ClientClosedRequest.status


@dataclass(slots=True)
class _Call:
    """What the handler learns about one call as it goes, for headers, metrics and the call record."""

    request_id: str
    started: float  # perf_counter, for durations
    started_at: float  # wall clock, for the record
    key_name: str = ""
    decision: Decision | None = None
    stream: bool = False
    body: bytes | None = None
    user: str | None = None
    first_byte: float | None = None  # perf_counter when the reply's first byte went to the client
    attempts: list[dict[str, object]] = field(default_factory=list)
    escalated: str | None = None  # why the chosen miniature was replaced, when it was
    prices: PriceBook | None = None  # of the config generation that served the call
    task: str = UNKNOWN_TASK  # catalogue task id (records, metrics)
    task_name: str = UNKNOWN_TASK  # its name (headers, rules)
    trace: CallTrace | None = None  # its spans, when telemetry is on
    fell_back: list[str] = field(default_factory=list)  # "model=kind" for each model a route fallback replaced
    max_response_bytes: int | None = None  # server.max_response_bytes of the generation serving the call


@dataclass(slots=True)
class _Reply:
    """The reply to relay. A checked stream arrives part-read: its held chunks, then the rest."""

    upstream: UpstreamReply
    limit: int | None = None  # bytes the whole stream may carry
    held: list[bytes] = field(default_factory=list)
    rest: AsyncGenerator[bytes, None] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.held:
            yield chunk
        async for chunk in self.rest if self.rest is not None else self.upstream.chunks(self.limit):
            yield chunk


class ChatEndpoint:
    """The handler, bound to the runtime holder, the metrics it updates, the call log it feeds and the
    tracer (None: telemetry off, and not one span object is made)."""

    def __init__(self, holder: RuntimeHolder, metrics: GatewayMetrics, calls: CallLog,
                 tracing: Tracing | None = None) -> None:
        self.holder = holder
        self.metrics = metrics
        self.calls = calls
        self.tracing = tracing

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
            caller = runtime.keyring.authenticate(request.headers.get("authorization"))
            call.key_name = caller.name
            caller.require("infer")
            chat = parse_chat_request(await _read_body(request, server.max_body_bytes, server.body_timeout_s))
            call.stream, call.body = chat.stream, chat.raw
            user = chat.body.get("user")
            call.user = user if isinstance(user, str) else None
            return await _unless_client_leaves(request, self._answer(runtime, chat, call, headers, request))
        except RequestError as exc:
            if isinstance(exc, UpstreamError):
                self.metrics.upstream_errors.labels(exc.upstream, exc.kind).inc()
            if call.fell_back:
                headers["x-minigate-fallback"] = ", ".join(call.fell_back)
            response = error_response(exc, headers)
            self._finish(call, exc.status, reply=bytes(response.body))
            return response

    async def _answer(self, runtime: Runtime, chat: ChatRequest, call: _Call, headers: dict[str, str],
                      request: Request) -> Response:
        """Match, decide, call (escalating and falling back as the route says) and start the answer."""
        if runtime.tasks is not None:
            call.task = await runtime.tasks.match(chat.body)
            call.task_name = runtime.tasks.name_of(call.task)
        call.decision = runtime.router.decide(chat.model, chat.body, request.headers, call.task_name,
                                              runtime.pool.loads)
        headers.update(_decision_headers(call.decision, call.task_name))
        strip_usage = chat.stream and not chat.wants_usage
        reply = await self._call_with_fallbacks(runtime.pool, chat, call, strip_usage)
        headers.update(_decision_headers(call.decision, call.task_name))
        if call.escalated:
            headers["x-minigate-escalated"] = call.escalated
        if call.fell_back:
            headers["x-minigate-fallback"] = ", ".join(call.fell_back)
        if chat.stream and reply.upstream.status == 200:
            stripper = UsageStripper() if strip_usage else None
            return StreamingResponse(self._relay(reply, call, stripper), headers=_merge(reply.upstream, headers))
        return await self._complete(reply.upstream, call, headers)

    async def _call_with_fallbacks(self, pool: UpstreamPool, chat: ChatRequest, call: _Call,
                                   strip_usage: bool) -> _Reply:
        """`_call`, then the route's fallbacks in order while the model's upstream fails after its own
        retries, before any byte reached the client: unreachable, timed out, 5xx, or 429.

        Every failure is counted (upstream_errors_total) and stays in the record as attempts of this one
        request; only the reply relayed is billed. The last fallback's failure reaches the client.
        """
        decision = call.decision
        assert decision is not None
        tried = {decision.target.name}
        sending = self._call(pool, chat, call, strip_usage)
        while True:
            reply: _Reply | None = None
            error: UpstreamError | None = None
            try:
                reply = await sending
                failure = _fallback_reason(reply.upstream.status)
            except UpstreamError as exc:
                error, failure = exc, exc.kind
            failed = (call.decision or decision).target  # escalation may have replaced the chosen model
            tried.add(failed.name)
            fallback = next((t for t in decision.fallbacks if t.name not in tried), None) if failure else None
            if fallback is None or failure is None:
                if error is not None:
                    raise error
                assert reply is not None
                return reply
            if reply is not None:
                await reply.upstream.close()
            self.metrics.upstream_errors.labels(failed.upstream, failure).inc()
            call.fell_back.append(f"{failed.name}={failure}")
            call.decision = Decision(decision.route, fallback, decision.rule)
            sending = self._reply(pool, chat, call, fallback, strip_usage)

    async def _reply(self, pool: UpstreamPool, chat: ChatRequest, call: _Call, target: Target,
                     strip_usage: bool) -> _Reply:
        return _Reply(await self._send(pool, chat, call, target, strip_usage), call.max_response_bytes)

    async def _call(self, pool: UpstreamPool, chat: ChatRequest, call: _Call, strip_usage: bool) -> _Reply:
        """Call the chosen model; a miniature that fails its rule's checks is replaced by the escalation model.

        Non-streamed replies are checked whole before any byte leaves; streams are held only until
        the chunk that settles the checks (router.cascade.StreamCheck), then relayed.
        """
        decision = call.decision
        assert decision is not None
        try:
            async with asyncio.timeout(decision.timeout_s):
                reply = await self._reply(pool, chat, call, decision.target, strip_usage)
                reason = await self._failure(chat, decision, reply)
        except UpstreamError as exc:
            reason = "timeout" if exc.kind == "timeout" else "error"
            if reason not in decision.escalate_on:
                raise
            self.metrics.upstream_errors.labels(exc.upstream, exc.kind).inc()
        except TimeoutError:
            if "timeout" not in decision.escalate_on:
                raise UpstreamTimeout(f"model {decision.target.name!r} exceeded its rule's timeout_s",
                                      upstream=decision.target.upstream, kind="timeout") from None
            reason = "timeout"
        if reason is None:
            return reply
        assert decision.escalate_to is not None
        self.metrics.escalations.labels(decision.route, reason).inc()
        call.escalated = reason
        if call.trace is not None:
            call.trace.escalate(reason)
        call.decision = Decision(decision.route, decision.escalate_to, decision.rule)
        return await self._reply(pool, chat, call, decision.escalate_to, strip_usage)

    async def _send(self, pool: UpstreamPool, chat: ChatRequest, call: _Call, target: Target,
                    strip_usage: bool) -> UpstreamReply:
        body = chat.with_usage(target.upstream_model) if strip_usage else chat.with_model(target.upstream_model)
        sent_at = time.perf_counter()
        client = pool[target.upstream]
        try:
            reply = await (call.trace.chat(client, target, body) if call.trace else client.chat(body))
        except UpstreamError as exc:
            call.attempts += _attempts(target, getattr(exc, "attempts", []), sent_at, None, exc.kind)
            raise
        except asyncio.CancelledError:  # the client left (or the gateway stops): the record still shows the call
            call.attempts += _attempts(target, [], sent_at, None, "client_closed")
            raise
        call.attempts += _attempts(target, reply.attempts, sent_at, reply.status, None)
        return reply

    async def _failure(self, chat: ChatRequest, decision: Decision, reply: _Reply) -> str | None:
        """Why this reply must not reach the client, by the decision's escalate_on; None when it may."""
        upstream = reply.upstream
        if not decision.escalate_on:
            return None
        if upstream.status >= 500 and "error" in decision.escalate_on:
            await upstream.close()
            self.metrics.upstream_errors.labels(upstream.upstream, f"status_{upstream.status}").inc()
            return "error"
        if upstream.status != 200:
            return None
        if chat.stream:
            return await self._settle(chat, decision, reply) if decision.escalate_on & CONTENT_CHECKS else None
        return check_reply(chat.body, await upstream.read(reply.limit), decision.escalate_on)

    @staticmethod
    async def _settle(chat: ChatRequest, decision: Decision, reply: _Reply) -> str | None:
        """Hold the stream's first chunks until they settle the checks; they are relayed first if it passes."""
        check = StreamCheck(chat.body, decision.escalate_on)
        chunks = reply.upstream.chunks(reply.limit)
        verdict = None
        try:
            async for chunk in chunks:
                reply.held.append(chunk)
                if verdict := check.feed(chunk):
                    break
            else:
                verdict = check.end()
        except BaseException:  # a cut or the rule's timeout while holding: nothing reached the client
            await chunks.aclose()
            raise
        if verdict == "relay":
            reply.rest = chunks
            return None
        await chunks.aclose()
        return verdict

    async def _complete(self, reply: UpstreamReply, call: _Call, headers: dict[str, str]) -> Response:
        content = await reply.read(call.max_response_bytes)
        call.first_byte = time.perf_counter()
        if reply.status >= 500:
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
        self._finish(call, reply.status, content)
        return Response(content, reply.status, headers=merged)

    async def _relay(self, reply: _Reply, call: _Call, stripper: UsageStripper | None) -> AsyncIterator[bytes]:
        status = _CLIENT_CLOSED
        relayed: list[bytes] = []  # as the upstream sent them, usage included, for the call record
        try:
            async for chunk in reply.chunks():
                relayed.append(chunk)
                out = stripper.feed(chunk) if stripper else chunk
                if out:
                    call.first_byte = call.first_byte or time.perf_counter()
                    yield out
            if stripper and (rest := stripper.flush()):
                yield rest
            status = 200
        except UpstreamError as exc:
            # Headers are gone already: the failure can only travel as an SSE event the SDKs understand.
            status = exc.status
            self.metrics.upstream_errors.labels(exc.upstream, exc.kind).inc()
            if call.attempts:
                call.attempts[-1]["error"] = exc.kind
            # A cut can fall mid-event: end what the client holds so the error parses as its own event.
            partial = stripper is None and bool(relayed) and not relayed[-1].endswith(b"\n\n")
            event = (b"\n\n" if partial else b"") + b"data: " + error_body(exc.message, exc.type, exc.code) + b"\n\n"
            relayed.append(event)
            yield event
        finally:
            self._finish(call, status, chunks=relayed)

    def _finish(self, call: _Call, status: int, reply: bytes | None = None, chunks: list[bytes] | None = None) -> None:
        """Count the call and hand its record to the log; neither waits for anything."""
        elapsed = time.perf_counter() - call.started
        decision = call.decision
        if call.trace is not None:
            call.trace.finish(status, chunks[0] if chunks else reply, recorded=decision is not None)
        if decision is None:  # refused before routing (auth, malformed body, unknown model)
            self.metrics.requests.labels("", "", "", UNKNOWN_TASK, str(status)).inc()
            return
        target = decision.target
        ttft = None if call.first_byte is None else call.first_byte - call.started
        self.metrics.observe(decision.route, target.name, target.tier, call.task, status, elapsed,
                             ttft=ttft if call.stream and status == 200 else None)
        rate, counterfactual = call.prices.rates(decision.route, target.name) if call.prices else (None, None)
        self.calls.submit(
            CallRecord(
                call.request_id, call.started_at, call.key_name, decision.route, target.name, target.tier,
                call.task, decision.rule, target.upstream, status, elapsed, call.stream,
                ttft_s=ttft,
                attempts=call.attempts or None, escalated=call.escalated,
                request_body=call.body, user=call.user, reply=reply, chunks=chunks,
                rate=rate, counterfactual_rate=counterfactual,
            )
        )


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


def _attempts(target: Target, calls: list[Attempt], sent_at: float, status: int | None,
              error: str | None) -> list[dict[str, object]]:
    """The upstream calls behind one send, as the record keeps them (latency to the reply's headers).

    An upstream that retried (another replica, a 429 honoured) made several calls: each is its own
    attempt, with its base URL, so a retried request shows as attempts of one request, billed once.
    """
    if len(calls) <= 1:
        return [{"upstream": target.upstream, "model": target.upstream_model, "status": status,
                 "latency_s": round(time.perf_counter() - sent_at, 6), "error": error}]
    return [{"upstream": target.upstream, "model": target.upstream_model, "base_url": attempt.base_url,
             "status": attempt.status, "latency_s": round(attempt.latency_s, 6), "error": attempt.error}
            for attempt in calls]


def _fallback_reason(status: int) -> str | None:
    """A reply a route's fallback replaces: 5xx, or 429 that the upstream's own retries could not get past."""
    return f"status_{status}" if status >= 500 or status == 429 else None


def _decision_headers(decision: Decision, task_name: str) -> dict[str, str]:
    return {
        "x-minigate-model": decision.target.name,
        "x-minigate-tier": decision.target.tier,
        "x-minigate-task": task_name,
        "x-minigate-rule": decision.rule,
    }


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
