"""Fuzzing the gateway: generated requests for every operation of its served OpenAPI schema
(schemathesis), and a corpus of malformed requests sent as raw bytes (tests/fuzz_corpus.py).

Both run against a real gateway in front of an echoing scripted upstream, so every 5xx is the
gateway's own fault. What must hold: no 5xx, no hang, answers the schema documents, OpenAI's error
shape on every error, and a call log that still records every routed request afterwards.
Run with `-s` to see the counts by status.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Err, Ok

from tests.conftest import ADMIN_KEY, AGENT_KEY, gateway_config
from tests.fuzz_corpus import CORPUS, Malformed
from tests.stores import fetch
from tests.support.servers import RunningGateway
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

ANSWER_WITHIN_S = 10.0  # per request: far above any honest answer here, far below a hang
BODY_TIMEOUT_S = 2.0  # server.body_timeout_s: a body that never completes is answered 408 this soon
EXAMPLES = 100  # per operation and generation mode: ~400 requests, about 20 s on two cores
STORED_WITHIN_S = 30.0
ROUTES = ("gpt-4.1", "cheap")


@dataclass
class Fuzzed:
    gateway: RunningGateway
    store: str  # the call log's store URL

    def stored_ids(self) -> set[str]:
        return {row[0] for row in fetch(self.store, "SELECT request_id FROM calls")}


@pytest.fixture
def fuzzed(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> Fuzzed:
    store = f"sqlite:///{tmp_path}/fuzz.db"
    config = gateway_config(upstream.base_url, server={"body_timeout_s": BODY_TIMEOUT_S},
                            logging={"store": store})
    return Fuzzed(make_gateway(config), store)


# Schemathesis: every operation in /openapi.json, positive and negative cases.


@pytest.mark.slow
def test_generated_requests_get_documented_answers(fuzzed: Fuzzed) -> None:
    gateway = fuzzed.gateway
    schema = schemathesis.openapi.from_url(f"{gateway.base_url}/openapi.json")
    statuses: Counter[str] = Counter()
    routed: list[str] = []
    operations = [_operation(result) for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/minigate/calls", "/healthz"}
    for operation in operations:
        for mode in _modes(operation):
            _fuzz_operation(operation, mode, gateway.base_url, statuses, routed)
    print(f"\nschemathesis: {sum(statuses.values())} requests over {len(operations)} operations; by status: "
          + ", ".join(f"{key}: {n}" for key, n in sorted(statuses.items())))
    assert statuses, "schemathesis generated no request"
    _assert_log_intact(fuzzed, routed)


def _operation(result: Ok[Any] | Err[Any]) -> Any:
    """An operation of the schema; one schemathesis cannot read fails the test with its reason."""
    if isinstance(result, Err):
        raise AssertionError(f"the served schema has an invalid operation: {result.err()}")
    return result.ok()


_CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
           schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]


def _modes(operation: Any) -> list[GenerationMode]:
    """Valid requests for every operation; invalid ones too where there is an input to get wrong. A path
    parameter is not one: every string names something, found or not (404), so none can be generated."""
    inputs = (operation.query, operation.headers, operation.body)
    negatable = any(len(parameters) for parameters in inputs)
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if negatable else [GenerationMode.POSITIVE]


def _fuzz_operation(operation: Any, mode: GenerationMode, base_url: str, statuses: Counter[str],
                    routed: list[str]) -> None:
    """Run EXAMPLES generated cases of one operation; derandomized, so a failure reproduces exactly."""

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), route=st.sampled_from((*ROUTES, None)))
    def run(case: Any, route: str | None) -> None:
        if isinstance(case.body, dict):
            assume(_answerable(case.body))
            if route is not None:  # a generated model name is almost never a route: reach the upstream too
                case.body = {**case.body, "model": route}
        response = case.call(base_url=base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"},
                             timeout=ANSWER_WITHIN_S)
        statuses[f"{operation.method.upper()} {operation.path} {response.status_code}"] += 1
        case.validate_response(response, checks=_CHECKS)
        if operation.path == "/v1/messages":
            _assert_anthropic_error(response.status_code, response.content, case.as_curl_command())
        else:
            _assert_openai_error(response.status_code, response.headers, response.content, case.as_curl_command())
        if "x-minigate-model" in response.headers:  # schemathesis keeps each header's values as a list
            routed.extend(response.headers["x-minigate-request-id"])

    run()


def _answerable(body: dict[str, Any]) -> bool:
    """The scripted upstream builds all `n` choices it is asked for; OpenAI refuses n > 128 before that."""
    n = body.get("n")
    return not isinstance(n, int) or n <= 128


def test_every_path_answers_other_methods_with_405_and_allow(fuzzed: Fuzzed) -> None:
    paths = httpx.get(f"{fuzzed.gateway.base_url}/openapi.json", timeout=ANSWER_WITHIN_S).json()["paths"]
    for path, operations in paths.items():
        allowed = {method.upper() for method in operations}
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - allowed):
            response = httpx.request(method, f"{fuzzed.gateway.base_url}{path}", timeout=ANSWER_WITHIN_S,
                                     headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert response.status_code == 405, f"{method} {path}"
            assert set(response.headers["allow"].replace(" ", "").split(",")) - {"HEAD"} == allowed, f"{method} {path}"
            _assert_openai_error(405, response.headers, response.content, f"{method} {path}")


# The malformed-input corpus, as raw bytes.


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


@pytest.mark.slow
def test_malformed_corpus_gets_quick_openai_shaped_4xx(fuzzed: Fuzzed) -> None:
    gateway = fuzzed.gateway
    statuses: Counter[int] = Counter()
    routed: list[str] = []
    problems: list[str] = []
    for case in CORPUS:
        try:
            answer = _exchange(gateway.base_url, case.request(urlsplit(gateway.base_url).netloc, ADMIN_KEY))
        except TimeoutError:
            problems.append(f"{case.name}: no answer within {ANSWER_WITHIN_S:g} s")
            continue
        statuses[answer.status] += 1
        problems += _problems(case, answer)
        if "x-minigate-model" in answer.headers:
            routed.append(answer.headers["x-minigate-request-id"])
    print(f"\ncorpus: {len(CORPUS)} cases sent; by status: "
          + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items())))
    assert not problems, "\n".join(problems)
    _assert_log_intact(fuzzed, routed)


def _problems(case: Malformed, answer: Answer) -> list[str]:
    found = []
    if answer.status >= 500:
        found.append(f"{case.name}: gateway answered {answer.status}: {answer.body[:300]!r}")
    if case.expect is not None and answer.status != case.expect:
        found.append(f"{case.name}: expected {case.expect}, got {answer.status}: {answer.body[:300]!r}")
    try:
        _assert_openai_error(answer.status, answer.headers, answer.body, case.name)
    except AssertionError as exc:
        found.append(str(exc))
    return found


def _exchange(base_url: str, request: bytes) -> Answer:
    """Send `request` on a new connection and read one response; TimeoutError when none comes in time.

    The body is written from a second thread: a gateway may answer (413) before reading it all, and a
    writer that waited for the whole body to leave would never get to read that answer.
    """
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=ANSWER_WITHIN_S) as sock:
        writer = threading.Thread(target=_send_quietly, args=(sock, request), daemon=True)
        writer.start()
        try:
            return _read_answer(_received(sock, time.monotonic() + ANSWER_WITHIN_S))
        finally:
            with contextlib.suppress(OSError):  # the gateway may have closed it already
                sock.shutdown(socket.SHUT_RDWR)
            writer.join(ANSWER_WITHIN_S)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # the gateway answered and closed before taking it all: the answer is what we test
        pass


def _received(sock: socket.socket, deadline: float) -> Iterator[bytes]:
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return
        if not data:
            return
        yield data


def _read_answer(stream: Iterator[bytes]) -> Answer:
    buffer = b""
    for data in stream:
        buffer += data
        if b"\r\n\r\n" in buffer:
            break
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = _read_body(headers, rest, stream)
    return Answer(int(status_line.split()[1]), headers, body)


def _read_body(headers: dict[str, str], rest: bytes, stream: Iterator[bytes]) -> bytes:
    if "content-length" in headers:
        size = int(headers["content-length"])
        while len(rest) < size:
            rest += next(stream, b"") or _short(rest, size)
        return rest[:size]
    if headers.get("transfer-encoding") == "chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            rest += next(stream, b"") or _short(rest, -1)
        return _unchunk(rest)
    return rest + b"".join(stream)


def _short(received: bytes, size: int) -> bytes:
    raise AssertionError(f"the connection closed after {len(received)} bytes of a {size}-byte body")


def _unchunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2:]


# What both fuzzers assert.


def _assert_openai_error(status: int, headers: Any, body: bytes, what: str) -> None:
    """Every error is OpenAI's `{"error": {"message", "type", "param", "code"}}`; a 405 says what is allowed."""
    if status < 400:
        return
    try:
        error = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise AssertionError(f"{what}: {status} is not OpenAI-shaped: {body[:300]!r}") from None
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, f"{what}: {error}"
    assert isinstance(error["message"], str) and error["message"], f"{what}: {error}"
    if status == 405:
        assert headers.get("allow"), f"{what}: 405 without Allow"


def _assert_anthropic_error(status: int, body: bytes, what: str) -> None:
    """Errors on Anthropic's endpoint are Anthropic's `{"type": "error", "error": {"type", "message"}}`."""
    if status < 400:
        return
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{what}: {status} is not JSON: {body[:300]!r}") from None
    assert document.get("type") == "error" and isinstance(document.get("error"), dict), f"{what}: {document}"
    assert document["error"].get("type") and document["error"].get("message"), f"{what}: {document}"


def _assert_log_intact(fuzzed: Fuzzed, routed: list[str]) -> None:
    """Afterwards the gateway still serves, dropped nothing, and the log holds every routed request."""
    gateway = fuzzed.gateway
    client = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0, timeout=ANSWER_WITHIN_S)
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "still there?"}])
    assert reply.parse().choices[0].message.content == "still there?"
    expected = {*routed, reply.headers["x-minigate-request-id"]}
    eventually(lambda: expected <= fuzzed.stored_ids(), STORED_WITHIN_S, interval=0.2,
               what=f"all {len(expected)} routed calls stored")
    assert gateway.metric("minigate_log_records_dropped_total") == 0
