"""A real OTLP/HTTP trace receiver for tests: what an OpenTelemetry collector does with `POST /v1/traces`.

The gateway's exporter is tested end to end: it posts protobuf `ExportTraceServiceRequest`s over HTTP
to this server, which decodes them with opentelemetry-proto's generated classes (the collector's own
schema) and keeps every span for the test to read.

Example:

    with OtlpReceiver() as receiver:
        config["telemetry"] = {"otlp_endpoint": receiver.endpoint}
        ...
        spans = receiver.wait_for(2)
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = ["OtlpReceiver", "ReceivedSpan"]


@dataclass
class ReceivedSpan:
    """One span as the collector got it; ids are lower-case hex, as in a `traceparent`."""

    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    start_ns: int
    end_ns: int
    status: str  # UNSET, OK or ERROR
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


@dataclass
class _Export:
    headers: dict[str, str]  # lower-case names
    spans: list[ReceivedSpan] = field(default_factory=list)


class OtlpReceiver:
    """`POST /v1/traces` (protobuf, optionally gzip) on 127.0.0.1 at a free port, in a thread."""

    def __init__(self) -> None:
        self.exports: list[_Export] = []
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""  # http://127.0.0.1:PORT, what `telemetry.otlp_endpoint` takes

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return [span for export in self.exports for span in export.spans]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedSpan]:
        """The spans received, once there are at least `count` (or the timeout passed: the test then fails)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(len(e.spans) for e in self.exports) < count and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
        return self.spans

    def start(self) -> OtlpReceiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _keep(self, export: _Export) -> None:
        with self._changed:
            self.exports.append(export)
            self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path != "/v1/traces":
                    self._answer(404, b"", "text/plain")
                    return
                if self.headers.get("content-type") != "application/x-protobuf":
                    self._answer(415, b"only application/x-protobuf", "text/plain")
                    return
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver._keep(_Export(headers, _decode(ExportTraceServiceRequest.FromString(body))))
                self._answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                pass  # quiet: pytest shows stderr of failing tests, and these lines would drown it

        return Handler


def _decode(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    name=span.name,
                    kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                    attributes=_attributes(span.attributes),
                    resource=resource,
                    scope=scope_spans.scope.name,
                ))
    return spans


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)
