"""What an attacker or a careless client can't do to the gateway: each test is a defect a robustness
pass found (issue 13), replayed against a real gateway and a scripted upstream."""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import RunningGateway, write_config
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
ANALYST = {"authorization": f"Bearer {ANALYST_KEY}"}
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


def post(gateway: RunningGateway, content: bytes, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", content=content,
                      headers={**AUTH, "content-type": "application/json"}, **kwargs)


def nested(depth: int) -> bytes:
    return (b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "metadata": '
            + b'{"a": ' * (depth - 1) + b"1" + b"}" * (depth - 1) + b"}")


def stored(db: Path, request_id: str) -> dict[str, Any] | None:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM calls WHERE request_id = ?", (request_id,)).fetchone()
    return None if row is None else dict(row)


@pytest.fixture
def gateway(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(gateway_config(upstream.base_url))


# -- the request body -------------------------------------------------------------------------------


def test_a_body_nested_past_the_limit_is_refused_naming_it(gateway: RunningGateway) -> None:
    assert post(gateway, nested(63)).status_code == 200  # the metadata object sits at depth 2
    for depth in (66, 300, 5000):
        response = post(gateway, nested(depth))
        assert response.status_code == 400
        error = response.json()["error"]
        assert "64 levels" in error["message"] and error["type"] == "invalid_request_error"
    assert post(gateway, orjson.dumps(CHAT)).status_code == 200  # and the gateway serves on


@pytest.mark.parametrize("body", [
    b'{"model": "SMUGGLED", "model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "SMUGGLED", "mod\\u0065l": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"stream": true, "model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "stream": false}',
])
def test_a_repeated_top_level_key_is_refused(gateway: RunningGateway, upstream: ScriptedUpstream, body: bytes) -> None:
    response = post(gateway, body)
    assert response.status_code == 400 and "repeats a top-level key" in response.json()["error"]["message"]
    assert not [r for r in upstream.requests if r.path.endswith("/chat/completions")]


def test_keys_repeated_inside_strings_and_nested_objects_are_fine(gateway: RunningGateway) -> None:
    body = (b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "\\"model\\": 1, {\\"model\\": [,]}"}],'
            b' "metadata": {"model": "a", "x": {"model": "b"}}}')
    assert post(gateway, body).status_code == 200


def test_a_post_to_a_trailing_slash_is_not_redirected(gateway: RunningGateway) -> None:
    response = httpx.post(f"{gateway.v1}/chat/completions/", json=CHAT, headers={**AUTH, "host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json()["error"]["message"]


def test_an_absurd_status_filter_is_a_400(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.v1}/minigate/calls", params={"status": "9" * 25}, headers=ANALYST)
    assert response.status_code == 400 and response.json()["error"]["param"]


# -- what the upstream sends back -------------------------------------------------------------------


def test_upstream_headers_cannot_speak_for_minigate_or_set_cookies(gateway: RunningGateway,
                                                                   upstream: ScriptedUpstream) -> None:
    upstream.script(headers={"x-minigate-tier": "miniature", "x-minigate-escalated": "forged",
                             "set-cookie": "session=stolen", "x-request-id": "up-1"})
    response = post(gateway, orjson.dumps(CHAT))
    assert response.status_code == 200
    assert response.headers["x-minigate-tier"] == "frontier" and "x-minigate-escalated" not in response.headers
    assert "set-cookie" not in response.headers
    assert response.headers["x-request-id"] == "up-1"  # the upstream's own headers still pass


def test_an_upstream_5xx_body_is_not_relayed(gateway: RunningGateway, upstream: ScriptedUpstream,
                                             caplog: pytest.LogCaptureFixture) -> None:
    upstream.script(status=500, body=b"Traceback: db password hunter2 at 10.0.0.7")
    with caplog.at_level(logging.WARNING, logger="minigate.gateway"):
        response = post(gateway, orjson.dumps(CHAT))
    assert response.status_code == 502
    assert "hunter2" not in response.text and "10.0.0.7" not in response.text
    assert "HTTP 500" in response.json()["error"]["message"]
    assert any("hunter2" in r.getMessage() for r in caplog.records)  # operators still see it


def test_an_upstream_4xx_is_relayed_in_openai_shape(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(status=422, body=b"<html>unprocessable</html>", headers={"content-type": "text/html"})
    response = post(gateway, orjson.dumps(CHAT))
    assert response.status_code == 422 and response.headers["content-type"] == "application/json"
    assert "unprocessable" in response.json()["error"]["message"]
    upstream.script(status=400)  # already OpenAI-shaped: relayed as it came
    response = post(gateway, orjson.dumps(CHAT))
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_credentials_in_an_upstream_url_reach_no_client_and_no_record(make_gateway: Callable[..., RunningGateway],
                                                                       tmp_path: Path) -> None:
    config = gateway_config("unused")
    config["upstreams"]["scripted"] = {"kind": "openai", "api_key": "sk-upstream", "retry": {},
                                       "base_urls": ["http://svcuser:s3cret@127.0.0.1:9/v1",
                                                     "http://svcuser:s3cret@127.0.0.1:10/v1"]}
    config["logging"] = {"store": f"sqlite:///{tmp_path}/calls.db"}
    gateway = make_gateway(config)
    response = post(gateway, orjson.dumps(CHAT))
    assert response.status_code == 502
    assert "s3cret" not in response.text and "svcuser" not in response.text
    assert response.json()["error"]["message"].startswith("cannot reach upstream 'scripted'")
    request_id = response.headers["x-minigate-request-id"]
    eventually(lambda: stored(tmp_path / "calls.db", request_id) is not None, 30)
    row = stored(tmp_path / "calls.db", request_id)
    assert row is not None and "s3cret" not in row["attempts"]
    assert {a["base_url"] for a in orjson.loads(row["attempts"])} == {"http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"}


def test_a_reply_over_max_response_bytes_is_a_502_naming_the_limit(make_gateway: Callable[..., RunningGateway],
                                                                    upstream: ScriptedUpstream) -> None:
    config = gateway_config(upstream.base_url, server={"host": "127.0.0.1", "port": 0, "max_response_bytes": 100_000})
    gateway = make_gateway(config)
    upstream.script(reply="x" * 200_000)
    response = post(gateway, orjson.dumps(CHAT))
    assert response.status_code == 502 and "100000 bytes" in response.json()["error"]["message"]
    streamed = post(gateway, orjson.dumps({**CHAT, "stream": True}))
    assert streamed.status_code == 200  # headers went before the limit was reached: the cut is an SSE event
    assert "max_response_bytes" in streamed.text and len(streamed.content) < 150_000
    upstream.script(reply="small")
    assert post(gateway, orjson.dumps(CHAT)).status_code == 200


# -- clients that leave or dawdle -------------------------------------------------------------------


def test_a_client_that_leaves_cancels_the_upstream_call(make_gateway: Callable[..., RunningGateway],
                                                        upstream: ScriptedUpstream, tmp_path: Path) -> None:
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/calls.db"})
    gateway = make_gateway(config)
    upstream.script(latency_s=30)
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, orjson.dumps(CHAT), timeout=httpx.Timeout(5, read=0.5))
    # Recorded as client-closed within seconds, not after the upstream's 30 s (or the 120 s read timeout).
    eventually(lambda: gateway.metric("minigate_requests_total", {"route": "gpt-4.1", "model": "gpt-4.1",
                                                                "tier": "frontier", "task": "unknown",
                                                                "status": "499"}) == 1, 10)
    with sqlite3.connect(tmp_path / "calls.db") as conn:
        eventually(lambda: conn.execute("SELECT count(*) FROM calls WHERE status = 499").fetchone()[0] == 1, 30)
        attempts = orjson.loads(conn.execute("SELECT attempts FROM calls WHERE status = 499").fetchone()[0])
    assert attempts[-1]["error"] == "client_closed"


def test_a_client_closing_mid_upload_is_a_quiet_499(gateway: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    host, port = gateway.base_url.removeprefix("http://").split(":")
    with caplog.at_level(logging.INFO):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + AGENT_KEY.encode()
                         + b"\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\": ")
            time.sleep(0.2)
        eventually(lambda: gateway.metric("minigate_requests_total", {"route": "", "model": "", "tier": "",
                                                                    "task": "unknown", "status": "499"}) == 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def guarded(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], **server: Any) -> tuple[str, int]:
    config = gateway_config(upstream.base_url, server={"host": "127.0.0.1", "port": 0, **server})
    gateway = make_gateway(config)
    host, port = gateway.base_url.removeprefix("http://").split(":")
    return host, int(port)


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing, or fails when it holds the connection past `seconds`."""
    sock.settimeout(seconds)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_headers_sent_too_slowly_lose_the_connection(upstream: ScriptedUpstream,
                                                     make_gateway: Callable[..., RunningGateway]) -> None:
    address = guarded(upstream, make_gateway, header_timeout_s=0.5)
    with socket.create_connection(address) as idle, socket.create_connection(address) as trickle:
        trickle.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        assert closed_within(idle, 5) == b""
        trickle.sendall(b"x-slow: 1\r\n")
        assert closed_within(trickle, 5) == b""


def test_a_body_sent_too_slowly_is_a_408(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    address = guarded(upstream, make_gateway, body_timeout_s=0.5)
    with socket.create_connection(address) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + AGENT_KEY.encode()
                     + b"\r\ncontent-length: 100\r\n\r\n{")
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408") and b"server.body_timeout_s" in answer


def test_connections_past_the_limit_get_an_openai_shaped_503(upstream: ScriptedUpstream,
                                                            make_gateway: Callable[..., RunningGateway]) -> None:
    address = guarded(upstream, make_gateway, max_connections=3)
    held = [socket.create_connection(address) for _ in range(3)]
    try:
        time.sleep(0.2)
        with socket.create_connection(address) as extra:
            answer = closed_within(extra, 5)
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 503")
        assert orjson.loads(body)["error"]["code"] == "too_many_connections"
    finally:
        for sock in held:
            sock.close()
    eventually(lambda: httpx.post(f"http://{address[0]}:{address[1]}/v1/chat/completions", json=CHAT,
                                headers=AUTH).status_code == 200)


# -- readiness and reloads --------------------------------------------------------------------------


def test_readyz_tells_anonymous_callers_the_status_only(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    anonymous = httpx.get(f"{gateway.base_url}/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    detailed = httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).json()
    assert detailed["upstreams"] == {"scripted": "reachable"} and detailed["call_log"] == "persisting"
    assert httpx.get(f"{gateway.base_url}/readyz", headers=AUTH).status_code == 403  # agents infer, no more


def test_readyz_probes_upstreams_at_most_once_per_interval(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    for _ in range(20):
        assert httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).status_code == 200
    assert len([r for r in upstream.requests if r.method == "GET"]) == 1


def test_a_reload_cannot_remove_every_key(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    config = gateway_config(upstream.base_url)
    gateway = make_gateway(config, watch=True)
    path = gateway.app.state.holder.path
    original = path.read_text()
    write_config(path, {**config, "auth": {"keys": []}})

    def refused() -> bool:
        error = httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).json()["last_reload_error"]
        return error is not None and "auth.keys" in error

    eventually(refused)
    assert httpx.get(f"{gateway.v1}/minigate/calls").status_code == 401  # still locked
    assert post(gateway, orjson.dumps(CHAT)).status_code == 200
    path.write_text(original)  # the file as it was: the old error is gone
    eventually(lambda: httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).json()["last_reload_error"] is None)


def test_an_admin_still_sees_details_on_an_open_gateway(make_gateway: Callable[..., RunningGateway],
                                                        upstream: ScriptedUpstream) -> None:
    config = gateway_config(upstream.base_url)
    config["auth"] = {"keys": []}
    gateway = make_gateway(config)
    body = httpx.get(f"{gateway.base_url}/readyz").json()  # no keys, loopback only: every caller is an admin
    assert body["status"] == "ready" and body["upstreams"] == {"scripted": "reachable"}
