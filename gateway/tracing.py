"""OpenTelemetry traces of chat requests: a SERVER span per request, a CLIENT span per upstream call.

Spans follow the GenAI semantic conventions (`gen_ai.*`) plus minigate's own `minigate.*` attributes,
and go to an OTLP/HTTP collector in batches (BatchSpanProcessor, a background thread). A client's
`traceparent` is continued; each upstream call carries its CLIENT span's `traceparent`.

What a call used (its tokens) is only known once its reply is parsed, and the call log's writer
already parses it, off the request path. So a routed call's last spans are left open when the
response ends and closed when the writer hands over the sealed record (`complete`), with the end time
taken when the response ended: no reply is parsed for a span. With telemetry off there is no
`Tracing` at all, and the request path creates no span objects.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from minigate.errors import RequestError, UpstreamError
from minigate.gateway.settings import TelemetrySection
from minigate.logger.records import CallRecord
from minigate.router.decision import Target
from minigate.serving.settings import OpenAIUpstream, Upstream
from minigate.serving.upstream import ChatUpstream, Operation, UpstreamReply
from minigate.version import __version__

__all__ = ["CallTrace", "Tracing"]

_PROPAGATOR = TraceContextTextMapPropagator()
# The reply's own top-level `"id"` and `"model"` members: every OpenAI-protocol server writes them
# before `choices`, and `{` or `,` before a key can't occur unescaped inside a JSON string.
_MEMBER = {key: re.compile(rb'[{,]\s*"' + key.encode() + rb'"\s*:\s*("(?:[^"\\]|\\.)*")') for key in ("id", "model")}
_HEAD_BYTES = 2048
# The GenAI semantic conventions' well-known `gen_ai.operation.name` values.
_OPERATION_NAMES: dict[Operation, str] = {"chat": "chat", "embeddings": "embeddings", "completions": "text_completion",
                                          "responses": "chat"}


class Tracing:
    """The tracer of one gateway, and the spans waiting for their call's record.

    >>> tracing = Tracing(TelemetrySection(otlp_endpoint="http://otel-collector:4318"))  # doctest: +SKIP
    >>> trace = tracing.begin(request_id, request.headers, runtime.config.upstreams)  # doctest: +SKIP
    """

    def __init__(self, section: TelemetrySection) -> None:
        url = section.traces_url
        if url is None:
            raise ValueError("telemetry.otlp_endpoint is not set: tracing is off")
        resource = Resource.create({"service.name": section.service_name, "service.version": __version__})
        self.provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(section.sampling_ratio)))
        headers = {name: value.get_secret_value() for name, value in section.headers.items()}
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=url, headers=headers, timeout=section.timeout_s))
        )
        self.tracer = self.provider.get_tracer("minigate.gateway", __version__)
        # Request id -> a routed call's spans, until its record closes them. Bounded like the call log's
        # queue: every routed call gets a record, and every record reaches `complete`.
        self.waiting: dict[str, tuple[CallTrace, int, bytes | None]] = {}

    def begin(self, request_id: str, headers: Mapping[str, str], upstreams: Mapping[str, Upstream]) -> CallTrace:
        """Open a request's SERVER span, continuing the client's trace when it sent a `traceparent`."""
        span = self.tracer.start_span("chat", context=_PROPAGATOR.extract(headers), kind=SpanKind.SERVER,
                                      attributes={"gen_ai.operation.name": "chat", "minigate.request_id": request_id})
        return CallTrace(self, request_id, span, upstreams)

    def complete(self, record: CallRecord) -> None:
        """Close a routed call's spans with what its sealed record knows (the call log's `observe`)."""
        waiting = self.waiting.pop(record.request_id, None)
        if waiting is not None:
            call, end_ns, head = waiting
            call.close(record, end_ns, head)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter thread; blocks, so call it from a worker thread."""
        self.provider.shutdown()


class CallTrace:
    """One request's spans, driven by the chat handler."""

    __slots__ = ("_open", "_provider", "_request_id", "_status", "_tracing", "_upstreams", "server")

    def __init__(self, tracing: Tracing, request_id: str, server: Span, upstreams: Mapping[str, Upstream]) -> None:
        self._tracing = tracing
        self._request_id = request_id
        self._upstreams = upstreams
        self.server = server
        self._open: Span | None = None  # the latest upstream call's span, until it ends
        self._status = 0  # the HTTP status of its reply (0: none yet)
        self._provider = ""  # gen_ai.provider.name of the latest upstream called

    async def call(self, client: ChatUpstream, target: Target, operation: Operation, body: bytes) -> UpstreamReply:
        """`client.send(operation, body)` inside a CLIENT span whose `traceparent` travels with the call."""
        if self._open is not None:  # a reply the route's fallback replaces: its error status is on it
            self._open.end()
        self._provider = _provider(self._upstreams.get(target.upstream))
        span = self._tracing.tracer.start_span(
            f"{_OPERATION_NAMES[operation]} {target.upstream_model}", context=trace.set_span_in_context(self.server),
            kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": _OPERATION_NAMES[operation], "gen_ai.provider.name": self._provider,
                        "gen_ai.request.model": target.upstream_model, **_address(client.base_url),
                        "minigate.upstream": target.upstream, "minigate.model": target.name,
                        "minigate.tier": target.tier},
        )
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        self._open, self._status = span, 0  # open across the await: a rule's timeout ends it in `escalate`
        try:
            reply = await client.send(operation, body, headers)
        except RequestError as exc:
            _fail(span, exc.kind if isinstance(exc, UpstreamError) else exc.code or type(exc).__name__)
            span.end()
            self._open = None
            raise
        self._status = reply.status
        span.set_attribute("http.response.status_code", reply.status)
        if reply.status >= 400:
            _fail(span, str(reply.status))
        return reply

    def escalate(self, reason: str) -> None:
        """The call failed its rule's checks for `reason`: its span ends here, the next call gets its own."""
        if self._open is not None:
            if self._status < 400:  # an error status already says what went wrong
                _fail(self._open, reason)
            self._open.end()
            self._open = None
        self.server.set_attribute("minigate.escalated", reason)

    def finish(self, status: int, head: bytes | None, recorded: bool) -> None:
        """The response has ended. A call that gets a record waits for it (`Tracing.complete`); one
        refused before routing gets none and ends here. `head`: the reply's first bytes."""
        if recorded:
            self._tracing.waiting[self._request_id] = (self, time.time_ns(), head)
            return
        self.server.set_attribute("http.response.status_code", status)
        if status >= 500:
            _fail(self.server, str(status))
        self.server.end()

    def close(self, record: CallRecord, end_ns: int, head: bytes | None) -> None:
        """End the spans still open with the record's usage and outcome."""
        answered = {"gen_ai.response.id": _member(head, "id"), "gen_ai.response.model": _member(head, "model"),
                    "gen_ai.usage.input_tokens": record.input_tokens,
                    "gen_ai.usage.output_tokens": record.output_tokens}
        error = record.attempts[-1].error if record.attempts else None
        if self._open is not None:
            _set(self._open, answered)
            if error:
                _fail(self._open, str(error))
            self._open.end(end_ns)
        self.server.update_name(f"chat {record.route}")
        _set(self.server, {
            **answered, "gen_ai.request.model": record.route, "gen_ai.provider.name": self._provider or None,
            "gen_ai.request.stream": record.stream,
            "gen_ai.response.time_to_first_chunk": record.ttft_s if record.stream else None,
            "http.response.status_code": record.status, "minigate.route": record.route, "minigate.rule": record.rule,
            "minigate.task": record.task, "minigate.tier": record.tier, "minigate.model": record.model,
            "minigate.upstream": record.upstream,
        })
        if record.status >= 500:
            _fail(self.server, str(error or record.status))
        self.server.end(end_ns)


def _set(span: Span, attributes: Mapping[str, str | int | float | bool | None]) -> None:
    span.set_attributes({key: value for key, value in attributes.items() if value is not None})


def _fail(span: Span, kind: str) -> None:
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR))


def _member(head: bytes | None, key: str) -> str | None:
    """A top-level string member of the reply, from its first bytes: a bounded search, no parse."""
    found = _MEMBER[key].search(head, 0, _HEAD_BYTES) if head else None
    value = orjson.loads(found.group(1)) if found else None
    return value if isinstance(value, str) else None


def _provider(spec: Upstream | None) -> str:
    """gen_ai.provider.name: the semantic conventions' name where one applies, else the upstream's kind."""
    if spec is None:
        return "unknown"
    if isinstance(spec, OpenAIUpstream) and spec.api_version:
        return "azure.ai.openai"
    return "llama_cpp" if spec.kind == "llamacpp" else spec.kind


@functools.lru_cache(maxsize=256)
def _address(base_url: str) -> dict[str, str | int]:
    """server.address and server.port of an upstream's base URL; none when a library picks it ("")."""
    parts = urlsplit(base_url)
    if not parts.hostname:
        return {}
    return {"server.address": parts.hostname, "server.port": parts.port or (443 if parts.scheme == "https" else 80)}
