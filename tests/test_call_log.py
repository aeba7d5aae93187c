"""Every call leaves one record in the store, written off the request path and flushed at shutdown."""

from __future__ import annotations

import base64
import re
import sqlite3
from pathlib import Path

import httpx
import orjson
import pytest

from minigate.logger.crypto import PayloadCipher, generate_key
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}


def test_records_match_responses_and_survive_shutdown(upstream: ScriptedUpstream, tmp_path: Path,
                                                      store_url: str) -> None:
    config = gateway_config(upstream.base_url, logging={"store": store_url, "flush_interval_s": 5,
                                                        "spool": str(tmp_path / "spool")})
    path = write_config(tmp_path / "minigate.yaml", config)
    seen: dict[str, int] = {}
    with run_gateway(path) as gateway:
        for i in range(20):
            body = {"model": "cheap" if i % 2 else "gpt-4.1", "messages": [{"role": "user", "content": f"n {i}"}],
                    "stream": i % 5 == 0}
            response = httpx.post(f"{gateway.v1}/chat/completions", json=body, headers=AUTH)
            seen[response.headers["x-minigate-request-id"]] = response.status_code
        upstream.script(status=500)
        failed = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                            json={"model": "cheap", "messages": [{"role": "user", "content": "x"}]})
        seen[failed.headers["x-minigate-request-id"]] = failed.status_code
    # The flush interval (5 s) had not passed: these rows were written by the shutdown drain.
    rows = fetch(store_url, "SELECT request_id, status, route, model, tier, key_name, stream, input_tokens,"
                            " output_tokens, attempts FROM calls")
    assert {row[0]: row[1] for row in rows} == seen
    by_id = {row[0]: row for row in rows}
    failed_row = by_id[failed.headers["x-minigate-request-id"]]
    assert failed_row[1:6] == (502, "cheap", "mini", "miniature", "agents")
    [attempt] = orjson.loads(failed_row[9])
    assert attempt["upstream"] == "scripted" and attempt["status"] == 500 and attempt["latency_s"] > 0
    non_streamed_ok = [row for row in rows if row[1] == 200 and not row[6]]
    assert non_streamed_ok and all(row[7] and row[8] for row in non_streamed_ok)


def test_log_metrics_are_exported(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/c.db", "flush_interval_s": 0.05})
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        for _ in range(3):
            httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                       json={"model": "cheap", "messages": [{"role": "user", "content": "x"}]})
        # The first batch may wait for the sealing worker to start.
        eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 3)
        assert gateway.metric("minigate_log_records_written_total") == 3
        assert gateway.metric("minigate_log_queue_depth") == 0
        assert gateway.metric("minigate_log_records_dropped_total") == 0


def test_payloads_are_redacted_then_encrypted(upstream: ScriptedUpstream, tmp_path: Path, store_url: str) -> None:
    key = generate_key()
    config = gateway_config(upstream.base_url, logging={"store": store_url, "encryption_key": key,
                                                                 "spool": str(tmp_path / "spool")})
    path = write_config(tmp_path / "minigate.yaml", config)
    secret = "Refund jane.doe@example.com, card 4111 1111 1111 1111, and ping jane.doe@example.com again"
    upstream.enqueue(Script(reply="Done for jane.doe@example.com"))
    with run_gateway(path) as gateway:
        plain = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json={
            "model": "gpt-4.1", "user": "customer-42", "messages": [{"role": "user", "content": secret}]})
        streamed = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json={
            "model": "cheap", "stream": True, "messages": [{"role": "user", "content": "hello"}]})
    cipher = PayloadCipher(key)
    rows = {row[0]: row[1:] for row in fetch(
        store_url, "SELECT request_id, client_id, request_payload, response_payload, input_tokens FROM calls")}

    client_id, request_blob, response_blob, _ = rows[plain.headers["x-minigate-request-id"]]
    request_id = plain.headers["x-minigate-request-id"].encode()
    request = orjson.loads(cipher.decrypt(bytes(request_blob), request_id))
    assert request["messages"][0]["content"] == "Refund <EMAIL_1>, card <CREDIT_CARD_1>, and ping <EMAIL_1> again"
    response = orjson.loads(cipher.decrypt(bytes(response_blob), request_id))
    assert response["choices"][0]["message"]["content"] == "Done for <EMAIL_1>"
    assert re.fullmatch(r"[0-9a-f]{32}", client_id) and "customer-42" not in str(rows)
    if store_url.startswith("sqlite:///"):
        raw = b"".join(p.read_bytes() for p in tmp_path.rglob("calls.db*") if p.is_file())
        assert b"jane.doe" not in raw and b"customer-42" not in raw

    _, _, stream_blob, stream_tokens = rows[streamed.headers["x-minigate-request-id"]]
    stream_id = streamed.headers["x-minigate-request-id"].encode()
    joined = orjson.loads(cipher.decrypt(bytes(stream_blob), stream_id))
    assert joined["choices"][0]["message"]["content"] == "hello"
    assert joined["choices"][0]["finish_reason"] == "stop" and stream_tokens


def test_without_a_key_the_sqlite_default_generates_a_private_key_file(upstream: ScriptedUpstream,
                                                                        tmp_path: Path) -> None:
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/c.db"})
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        response = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                              json={"model": "cheap", "messages": [{"role": "user", "content": "mail a@b.co"}]})
    key_file = tmp_path / "c.db.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    [key] = [line for line in key_file.read_text().splitlines() if not line.startswith("#")]
    [(request_id, blob, key_id)] = fetch(f"sqlite:///{tmp_path}/c.db",
                                         "SELECT request_id, request_payload, key_id FROM calls")
    assert request_id == response.headers["x-minigate-request-id"] and key_id == PayloadCipher(key).key_id
    request = orjson.loads(PayloadCipher(key).decrypt(bytes(blob), request_id.encode()))
    assert request["messages"][0]["content"] == "mail <EMAIL_1>"


def test_payloads_false_logs_metadata_only(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    logging = {"store": f"sqlite:///{tmp_path}/c.db", "payloads": False, "encryption_key": generate_key()}
    config = gateway_config(upstream.base_url, logging=logging)
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                   json={"model": "cheap", "messages": [{"role": "user", "content": "x"}]})
    [(request_payload, response_payload, input_tokens, key_id)] = fetch(
        f"sqlite:///{tmp_path}/c.db", "SELECT request_payload, response_payload, input_tokens, key_id FROM calls")
    assert request_payload is None and response_payload is None and key_id is None and input_tokens
    assert not (tmp_path / "c.db.key").exists()


def test_bad_input_is_logged_safely(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    """Huge payloads, invalid UTF-8 from the upstream and inline images: recorded, never crashing the writer."""
    key = generate_key()
    store = f"sqlite:///{tmp_path}/c.db"
    config = gateway_config(upstream.base_url, logging={"store": store, "encryption_key": key},
                            server={"max_body_bytes": 32 * 1024 * 1024})
    image = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 400).decode()
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        def chat(body: dict[str, object]) -> str:
            response = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json=body, timeout=60)
            assert response.status_code == 200
            return response.headers["x-minigate-request-id"]

        huge = chat({"model": "cheap", "messages": [{"role": "user", "content": "a@b.co " + "x" * 8_000_000}]})
        pictured = chat({"model": "cheap", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": image}}]}]})
        invalid_utf8 = b'{"choices": [{"message": {"tool_calls": [{"function": {"arguments": "' + bytes([0xFF, 0xFE]) + b'"}}]}}]}'
        upstream.enqueue(Script(body=invalid_utf8))
        broken = chat({"model": "cheap", "messages": [{"role": "user", "content": "x"}]})
    cipher = PayloadCipher(key)
    rows = {row[0]: row[1:] for row in fetch(store, "SELECT request_id, request_payload, response_payload FROM calls")}
    assert set(rows) == {huge, pictured, broken}
    big = orjson.loads(cipher.decrypt(bytes(rows[huge][0]), huge.encode()))
    assert big["messages"][0]["content"].startswith("<EMAIL_1> xxx") and len(big["messages"][0]["content"]) > 8_000_000
    parts = orjson.loads(cipher.decrypt(bytes(rows[pictured][0]), pictured.encode()))["messages"][0]["content"]
    assert re.fullmatch(r"<data:image/png;base64 102400 bytes sha256:[0-9a-f]{16}>", parts[1]["image_url"]["url"])
    reply = orjson.loads(cipher.decrypt(bytes(rows[broken][1]), broken.encode()))
    assert "\ufffd" in orjson.dumps(reply).decode()


def test_retention_purges_old_records_at_start(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/c.db"
    config = gateway_config(upstream.base_url, logging={"store": store, "retention_days": 7})
    path = write_config(tmp_path / "minigate.yaml", config)
    with run_gateway(path) as gateway:
        httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                   json={"model": "cheap", "messages": [{"role": "user", "content": "x"}]})
    with sqlite3.connect(tmp_path / "c.db") as db:  # age the record by 30 days
        db.execute("UPDATE calls SET started_at = started_at - 30 * 86400")
    with run_gateway(path):
        eventually(lambda: fetch(store, "SELECT count(*) FROM calls") == [(0,)], what="the aged record is purged")
    assert fetch(store, "SELECT count(*) FROM calls") == [(0,)]


def test_cost_and_counterfactual_cost_from_config_prices(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    """A miniature call costs its tokens at the miniature's price; without minigate they would have gone to
    the route's frontier model (escalate_to) at its price."""
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/c.db"})
    config["models"]["gpt-4.1"]["price"] = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
    config["models"]["mini"]["price"] = {"input_per_mtok": 0.1, "output_per_mtok": 0.4}
    config["routes"]["cheap"]["escalate_to"] = "gpt-4.1"
    config["routes"]["unpriced"] = {"default": "mini"}
    del config["models"]["mini"]["price"]
    config["models"]["mini-priced"] = {"upstream": "scripted", "model": "mini-lora", "tier": "miniature",
                                       "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}}
    config["routes"]["cheap"]["default"] = "mini-priced"
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        for route in ("cheap", "gpt-4.1", "unpriced"):
            httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                       json={"model": route, "messages": [{"role": "user", "content": "one two three"}]})
    rows = {route: rest for route, *rest in fetch(
        f"sqlite:///{tmp_path}/c.db", "SELECT route, input_tokens, output_tokens, cost_usd, counterfactual_cost_usd FROM calls")}
    tokens_in, tokens_out, cost, counterfactual = rows["cheap"]
    assert tokens_in and tokens_out
    assert cost == pytest.approx((tokens_in * 0.1 + tokens_out * 0.4) / 1e6)
    assert counterfactual == pytest.approx((tokens_in * 2.0 + tokens_out * 8.0) / 1e6)
    tokens_in, tokens_out, cost, counterfactual = rows["gpt-4.1"]  # a frontier default is its own counterfactual
    assert cost == counterfactual == pytest.approx((tokens_in * 2.0 + tokens_out * 8.0) / 1e6)
    assert rows["unpriced"][2:] == [None, None]
