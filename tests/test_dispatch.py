"""The dispatcher on its own: a decision and a normalised request in, one immutable outcome out.

Real upstream clients (a pool opened from config) call the scripted upstream; the outcome is read as a
value, and each failure is counted once in a fresh registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
import pytest
from prometheus_client import CollectorRegistry

from minigate.errors import UpstreamError
from minigate.gateway.dispatch import Dispatcher, Interrupted, NormalisedRequest, Outcome
from minigate.gateway.metrics import GatewayMetrics
from minigate.router.decision import Decision, Target
from minigate.serving.pool import LocalServers, UpstreamPool
from minigate.serving.settings import OpenAIUpstream
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually_async

T = TypeVar("T")

BODY = {"model": "route", "messages": [{"role": "user", "content": "Where is my parcel?"}]}
MINI = Target("mini", "local", "mini-lora", "miniature")
FRONTIER = Target("gpt-4.1", "scripted", "gpt-4.1", "frontier")


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def normalised(stream: bool = False) -> NormalisedRequest:
    def encode(upstream_model: str, include_usage: bool) -> bytes:
        options = {"stream_options": {"include_usage": True}} if include_usage else {}
        return orjson.dumps({**BODY, "model": upstream_model, "stream": stream, **options})

    return NormalisedRequest(BODY, stream, encode)


def run(upstreams: dict[str, str], use: Callable[[Dispatcher], Awaitable[T]]) -> tuple[T, CollectorRegistry]:
    """`use` a dispatcher over a pool of these upstreams (name: base URL), closing the pool after."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)

    async def main() -> T:
        specs = {name: OpenAIUpstream(kind="openai", base_url=url) for name, url in upstreams.items()}
        pool = await UpstreamPool.open(specs, LocalServers())
        try:
            return await use(Dispatcher(pool, metrics, None))
        finally:
            for client in pool.clients.values():
                await client.aclose()

    return asyncio.run(main()), registry


async def relayed(outcome: Outcome) -> Outcome:
    """Read the reply, as a relay would, so the connection goes back to the pool."""
    if outcome.reply is not None:
        await outcome.reply.upstream.read()
    return outcome


def errors(registry: CollectorRegistry, upstream: str, kind: str) -> float | None:
    return registry.get_sample_value("minigate_upstream_errors_total", {"upstream": upstream, "kind": kind})


def test_an_escalated_miniature_is_in_the_outcome_not_in_shared_state(upstream: ScriptedUpstream) -> None:
    upstream.script(Script(status=503), model="mini-lora")
    decision = Decision("route", MINI, "strict", frozenset({"error"}), FRONTIER)

    async def use(dispatcher: Dispatcher) -> Outcome:
        return await relayed(await dispatcher.dispatch(normalised(), decision))

    outcome, registry = run({"local": upstream.base_url, "scripted": upstream.base_url}, use)
    assert (outcome.served, outcome.escalated, outcome.fell_back, outcome.error) == (FRONTIER, "error", (), None)
    assert outcome.reply is not None and outcome.reply.upstream.status == 200
    assert [(a.upstream, a.model, a.status, a.error) for a in outcome.attempts] == [
        ("local", "mini-lora", 503, None), ("scripted", "gpt-4.1", 200, None)]
    assert errors(registry, "local", "status_503") == 1
    assert registry.get_sample_value("minigate_escalations_total", {"route": "route", "reason": "error"}) == 1
    assert decision.target == MINI, "the decision is a value: the dispatcher replaced nothing in it"
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.served = MINI  # type: ignore[misc]


def test_a_fallback_replaces_an_unreachable_model_and_the_failure_is_counted_once(upstream: ScriptedUpstream) -> None:
    decision = Decision("route", MINI, "default", fallbacks=(FRONTIER,))

    async def use(dispatcher: Dispatcher) -> Outcome:
        return await relayed(await dispatcher.dispatch(normalised(), decision))

    outcome, registry = run({"local": closed_port_url(), "scripted": upstream.base_url}, use)
    assert (outcome.served, outcome.escalated, outcome.fell_back) == (FRONTIER, None, ("mini=connect_error",))
    assert [(a.model, a.status, a.error) for a in outcome.attempts] == [
        ("mini-lora", None, "connect_error"), ("gpt-4.1", 200, None)]
    assert errors(registry, "local", "connect_error") == 1


def test_the_failure_that_ends_the_call_is_returned_not_raised(upstream: ScriptedUpstream) -> None:
    upstream.script(Script(status=429))
    decision = Decision("route", FRONTIER, "default", fallbacks=(MINI,))

    async def use(dispatcher: Dispatcher) -> Outcome:
        return await dispatcher.dispatch(normalised(), decision)

    outcome, registry = run({"local": closed_port_url(), "scripted": upstream.base_url}, use)
    assert outcome.served == MINI and outcome.reply is None and outcome.fell_back == ("gpt-4.1=status_429",)
    assert isinstance(outcome.error, UpstreamError) and outcome.error.kind == "connect_error"
    assert (errors(registry, "scripted", "status_429"), errors(registry, "local", "connect_error")) == (1, 1)


def test_a_cancelled_dispatch_hands_over_what_it_did(upstream: ScriptedUpstream) -> None:
    upstream.script(Script(status=503), model="mini-lora")
    upstream.script(Script(latency_s=5.0), model="gpt-4.1")
    decision = Decision("route", MINI, "strict", frozenset({"error"}), FRONTIER)

    async def use(dispatcher: Dispatcher) -> Outcome:
        task = asyncio.ensure_future(dispatcher.dispatch(normalised(stream=True), decision))
        await eventually_async(lambda: len(upstream.requests) == 2, what="the escalation reached the upstream")
        task.cancel()
        with pytest.raises(Interrupted) as interrupted:
            await task
        return interrupted.value.outcome

    outcome, _ = run({"local": upstream.base_url, "scripted": upstream.base_url}, use)
    assert (outcome.served, outcome.escalated, outcome.reply, outcome.error) == (FRONTIER, "error", None, None)
    assert [(a.model, a.status, a.error) for a in outcome.attempts] == [
        ("mini-lora", 503, None), ("gpt-4.1", None, "client_closed")]
    assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}, "a stream asks for its usage"


def test_a_rule_timeout_is_recorded_as_a_timeout_not_as_the_client_leaving(upstream: ScriptedUpstream) -> None:
    upstream.script(Script(latency_s=5), model="mini-lora")
    decision = Decision("route", MINI, "strict", frozenset({"timeout"}), FRONTIER, timeout_s=0.3)
    outcome, _ = run({"local": upstream.base_url, "scripted": upstream.base_url},
                     lambda dispatcher: _dispatch_and_relay(dispatcher, decision))
    assert outcome.escalated == "timeout" and outcome.served == FRONTIER
    assert [a.error for a in outcome.attempts] == ["timeout", None]


async def _dispatch_and_relay(dispatcher: Dispatcher, decision: Decision) -> Outcome:
    return await relayed(await dispatcher.dispatch(normalised(), decision))
