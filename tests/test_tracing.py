"""OpenTelemetry traces, end to end: the gateway exports over OTLP/HTTP to a real receiver that decodes
the protobuf payloads (tests/support/otlp_receiver.py); the scripted upstream records the
`traceparent` each upstream call carried.

Each test stops its gateway before reading spans: shutdown closes the spans waiting for their call
records and flushes the batch exporter, so everything is in the receiver by then.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from minigate.config import load_config
from minigate.errors import ConfigError
from minigate.gateway.settings import TelemetrySection
from tests.conftest import AGENT_KEY, gateway_config
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.servers import RunningGateway, run_gateway, write_config
from tests.support.upstream import Script, ScriptedUpstream

HEADERS = {"authorization": f"Bearer {AGENT_KEY}"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def traced_config(upstream: ScriptedUpstream, receiver: OtlpReceiver, tmp_path: Path,
                  **telemetry: Any) -> dict[str, Any]:
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/calls.db"})
    config["telemetry"] = {"otlp_endpoint": receiver.endpoint, "service_name": "minigate-test", **telemetry}
    return config


@contextmanager
def serving(config: dict[str, Any], tmp_path: Path) -> Iterator[RunningGateway]:
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        yield gateway


def kind(spans: list[ReceivedSpan], wanted: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.kind == wanted), key=lambda s: s.start_ns)


def traceparent(trace_id: str, span_id: str) -> str:
    """A sampled `traceparent` header, as a client that traces sends it."""
    return f"00-{trace_id}-{span_id}-01"


def parsed(header: str) -> tuple[str, str, bool]:
    """A `traceparent`'s trace id, parent span id and sampled flag (other flags, such as W3C level 2's
    `random`, may be set too)."""
    version, trace_id, span_id, flags = header.split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


def test_a_server_span_per_request_and_a_client_span_per_upstream_call(
    upstream: ScriptedUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    config = traced_config(upstream, receiver, tmp_path, headers={"x-collector-token": "t0k3n"})
    with serving(config, tmp_path) as gateway:
        raw = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY).chat.completions.with_raw_response.create(
            model="cheap", messages=[{"role": "user", "content": "Where is my parcel?"}])
        reply = raw.parse()
    spans = receiver.wait_for(2)

    [server], [client] = kind(spans, "SERVER"), kind(spans, "CLIENT")
    assert len(spans) == 2 and server.parent_span_id == ""
    assert client.trace_id == server.trace_id and client.parent_span_id == server.span_id
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert (server.name, client.name) == ("chat cheap", "chat mini-lora")
    assert server.resource["service.name"] == "minigate-test" and server.scope == "minigate.gateway"
    assert reply.usage is not None
    usage = {"gen_ai.usage.input_tokens": reply.usage.prompt_tokens,
             "gen_ai.usage.output_tokens": reply.usage.completion_tokens}
    assert server.attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "cheap",
        "gen_ai.response.model": reply.model, "gen_ai.response.id": reply.id, "gen_ai.request.stream": False,
        **usage, "http.response.status_code": 200, "minigate.request_id": raw.headers["x-minigate-request-id"],
        "minigate.route": "cheap", "minigate.rule": raw.headers["x-minigate-rule"], "minigate.task": "unknown",
        "minigate.tier": "miniature", "minigate.model": "mini", "minigate.upstream": "scripted",
    }
    assert client.attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "mini-lora",
        "gen_ai.response.model": reply.model, "gen_ai.response.id": reply.id, **usage,
        "server.address": "127.0.0.1", "server.port": upstream.port, "http.response.status_code": 200,
        "minigate.upstream": "scripted", "minigate.model": "mini", "minigate.tier": "miniature",
    }
    assert server.status == client.status == "UNSET"
    assert parsed(upstream.requests[-1].headers["traceparent"]) == (server.trace_id, client.span_id, True)
    assert {export.headers["x-collector-token"] for export in receiver.exports} == {"t0k3n"}


def test_a_clients_traceparent_is_continued_up_to_the_upstream(
    upstream: ScriptedUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    with serving(traced_config(upstream, receiver, tmp_path), tmp_path) as gateway:
        response = httpx.post(f"{gateway.v1}/chat/completions", timeout=30,
                              headers={**HEADERS, "traceparent": traceparent(trace_id, parent)},
                              json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200
    spans = receiver.wait_for(2)

    [server], [client] = kind(spans, "SERVER"), kind(spans, "CLIENT")
    assert (server.trace_id, server.parent_span_id) == (trace_id, parent)
    assert (client.trace_id, client.parent_span_id) == (trace_id, server.span_id)
    assert parsed(upstream.requests[-1].headers["traceparent"]) == (trace_id, client.span_id, True)


def test_an_escalation_is_two_client_spans_under_one_server_span(
    upstream: ScriptedUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    config = traced_config(upstream, receiver, tmp_path)
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
        {"name": "json", "when": {}, "use": "mini", "escalate_on": ["invalid_json"]}]}
    upstream.script(Script(invalid_json=True), model="mini-lora")
    upstream.script(reply='{"label": "billing"}')
    with serving(config, tmp_path) as gateway:
        reply = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY).chat.completions.create(
            model="gpt-4.1", response_format={"type": "json_object"}, messages=[{"role": "user", "content": "Label"}])
    spans = receiver.wait_for(3)

    [server], (miniature, frontier) = kind(spans, "SERVER"), kind(spans, "CLIENT")
    assert len(spans) == 3 and {miniature.parent_span_id, frontier.parent_span_id} == {server.span_id}
    assert miniature.end_ns <= frontier.start_ns
    assert (miniature.name, frontier.name) == ("chat mini-lora", "chat gpt-4.1")
    assert miniature.status == "ERROR" and miniature.attributes["error.type"] == "invalid_json"
    assert "gen_ai.usage.output_tokens" not in miniature.attributes, "the discarded reply's usage is never parsed"
    assert reply.usage is not None
    assert frontier.attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert frontier.status == "UNSET" and "error.type" not in frontier.attributes
    assert server.attributes["minigate.escalated"] == "invalid_json"
    assert (server.attributes["minigate.rule"], server.attributes["minigate.tier"]) == ("json", "frontier")
    assert server.attributes["gen_ai.response.model"] == reply.model == "gpt-4.1"
    assert [parsed(r.headers["traceparent"]) for r in upstream.requests] == [
        (server.trace_id, miniature.span_id, True), (server.trace_id, frontier.span_id, True)]


def test_a_fallback_is_a_client_span_of_its_own(
    upstream: ScriptedUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    config = traced_config(upstream, receiver, tmp_path)
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "fallbacks": ["mini"]}
    upstream.script(Script(status=503), model="gpt-4.1")
    with serving(config, tmp_path) as gateway:
        response = httpx.post(f"{gateway.v1}/chat/completions", headers=HEADERS, timeout=30,
                              json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200 and response.headers["x-minigate-model"] == "mini"
    spans = receiver.wait_for(3)

    [server], (failed, served) = kind(spans, "SERVER"), kind(spans, "CLIENT")
    assert len(spans) == 3 and {failed.parent_span_id, served.parent_span_id} == {server.span_id}
    assert (failed.name, failed.status, failed.attributes["error.type"]) == ("chat gpt-4.1", "ERROR", "503")
    assert failed.end_ns <= served.start_ns
    assert (served.name, served.status, server.status) == ("chat mini-lora", "UNSET", "UNSET")
    assert server.attributes["minigate.model"] == "mini"


def test_a_stream_span_has_its_usage_and_time_to_first_chunk(
    upstream: ScriptedUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    upstream.script(reply="one two three", chunk_delay_s=0.01)
    with serving(traced_config(upstream, receiver, tmp_path), tmp_path) as gateway:
        with openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY).chat.completions.create(
            model="cheap", messages=[{"role": "user", "content": "Count"}], stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            chunks = list(stream)
    spans = receiver.wait_for(2)

    [server], [client] = kind(spans, "SERVER"), kind(spans, "CLIENT")
    usage = chunks[-1].usage
    assert usage is not None
    assert server.attributes["gen_ai.request.stream"] is True
    assert 0 < server.attributes["gen_ai.response.time_to_first_chunk"] <= (server.end_ns - server.start_ns) / 1e9
    for span in (server, client):
        assert span.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
        assert span.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
        assert span.attributes["gen_ai.response.model"] == chunks[0].model


def test_failures_mark_both_spans(upstream: ScriptedUpstream, receiver: OtlpReceiver, tmp_path: Path) -> None:
    upstream.script(Script(status=500))
    with serving(traced_config(upstream, receiver, tmp_path), tmp_path) as gateway:
        failed = httpx.post(f"{gateway.v1}/chat/completions", headers=HEADERS, timeout=30,
                            json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
        refused = httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": "Bearer wrong"},
                             json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    assert (failed.status_code, refused.status_code) == (502, 401)
    spans = receiver.wait_for(3)

    failed_server, refused_server = kind(spans, "SERVER")
    [client] = kind(spans, "CLIENT")
    assert client.parent_span_id == failed_server.span_id
    assert client.status == "ERROR" and client.attributes["error.type"] == "500"
    assert client.attributes["http.response.status_code"] == 500
    assert failed_server.status == "ERROR" and failed_server.attributes["error.type"] == "502"
    assert failed_server.attributes["http.response.status_code"] == 502
    # Refused before routing: no record, no upstream call, and nothing from the client's request.
    assert refused_server.name == "chat" and refused_server.status == "UNSET"
    assert refused_server.attributes["http.response.status_code"] == 401
    assert "gen_ai.request.model" not in refused_server.attributes


def test_sampling_ratio_zero_keeps_only_traces_a_client_sampled(
    upstream: ScriptedUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    trace_id = secrets.token_hex(16)
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    with serving(traced_config(upstream, receiver, tmp_path, sampling_ratio=0.0), tmp_path) as gateway:
        for _ in range(3):
            assert httpx.post(f"{gateway.v1}/chat/completions", headers=HEADERS, json=body, timeout=30).is_success
        unsampled = [r.headers["traceparent"] for r in upstream.requests]
        sampled = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30,
                             headers={**HEADERS, "traceparent": traceparent(trace_id, secrets.token_hex(8))})
        assert sampled.is_success
    spans = receiver.wait_for(2)

    assert {span.trace_id for span in spans} == {trace_id} and len(spans) == 2
    # The unsampled calls still tell the upstream their trace, flagged as not sampled.
    assert len(unsampled) == 3 and not any(parsed(header)[2] for header in unsampled)
    assert len({parsed(header)[0] for header in unsampled}) == 3, "each request is a trace of its own"


@pytest.mark.slow
def test_without_telemetry_no_tracer_is_ever_loaded(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    """Neither the SDK nor the exporter is imported, so no span can be made (FastAPI imports the API itself)."""
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/calls.db"})
    path = write_config(tmp_path / "minigate.yaml", config)
    script = (
        "import sys, httpx\n"
        "from pathlib import Path\n"
        "from tests.support.servers import run_gateway\n"
        "with run_gateway(Path(sys.argv[1])) as gateway:\n"
        "    response = httpx.post(gateway.v1 + '/chat/completions', headers={'authorization': sys.argv[2]},\n"
        "                          json={'model': 'gpt-4.1', 'messages': [{'role': 'user', 'content': 'hi'}]})\n"
        "    loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))]\n"
        "    print(response.status_code, 'minigate.gateway.tracing' in sys.modules, sorted(loaded))\n"
    )
    repository = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script, str(path), HEADERS["authorization"]], cwd=repository,
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "200 False []"
    assert "traceparent" not in upstream.requests[-1].headers


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [(None, None), ("", None), ("http://collector:4318", "http://collector:4318/v1/traces"),
     ("https://otel.example.com/", "https://otel.example.com/v1/traces"),
     ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces")],
)
def test_the_endpoint_names_where_spans_go(endpoint: str | None, url: str | None) -> None:
    assert TelemetrySection(otlp_endpoint=endpoint).traces_url == url


@pytest.mark.parametrize(
    ("telemetry", "expected"),
    [("{sampling_ratio: 1.5}", "telemetry.sampling_ratio: Input should be less than or equal to 1"),
     ("{otlp_endpoint: collector:4318}", "telemetry.otlp_endpoint: String should match pattern"),
     ("{exporter: zipkin}", "telemetry.exporter: Extra inputs are not permitted")],
)
def test_telemetry_errors_name_line_and_field(upstream: ScriptedUpstream, tmp_path: Path, telemetry: str,
                                              expected: str) -> None:
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, f"telemetry: {telemetry}"]) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:{len(lines) + 1}: {expected}")
