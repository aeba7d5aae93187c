"""`minigate keys`: generate a log key, rotate the stored payloads to a new one, on both stores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from minigate.logger.crypto import PayloadCipher, generate_key, key_id, validate_key
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import ScriptedUpstream


def minigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, timeout=120)


def serve_calls(path: Path, count: int) -> list[str]:
    ids = []
    with run_gateway(path) as gateway:
        for i in range(count):
            response = httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                                  json={"model": "cheap", "messages": [{"role": "user", "content": f"call {i}"}]})
            assert response.status_code == 200
            ids.append(response.headers["x-minigate-request-id"])
    return ids


def test_generate_prints_a_valid_fresh_key() -> None:
    first, second = minigate("keys", "generate"), minigate("keys", "generate")
    assert first.returncode == 0
    validate_key(first.stdout.strip())
    assert first.stdout != second.stdout


@pytest.mark.slow
def test_rotate_rewraps_every_record_under_the_new_configured_key(upstream: ScriptedUpstream, tmp_path: Path,
                                                                   store_url: str) -> None:
    old, new = generate_key(), generate_key()
    logging = {"store": store_url, "spool": str(tmp_path / "spool"), "encryption_key": old}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    ids = serve_calls(path, 3)
    blobs_before = dict(fetch(store_url, "SELECT request_id, request_payload FROM calls"))

    write_config(path, gateway_config(upstream.base_url, logging={**logging, "encryption_key": new,
                                                                  "previous_keys": [old]}))
    result = minigate("keys", "rotate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"3 records re-wrapped under key {key_id(new)}" in result.stderr

    rows = fetch(store_url, "SELECT request_id, request_payload, response_payload, key_id FROM calls ORDER BY started_at")
    assert [row[0] for row in rows] == ids
    only_new = PayloadCipher(new)  # the old key is no longer needed
    for request_id, request_blob, response_blob, kid in rows:
        assert kid == key_id(new)
        assert bytes(request_blob)[65:] == bytes(blobs_before[request_id])[65:]  # ciphertext untouched
        request = orjson.loads(only_new.decrypt(bytes(request_blob), request_id.encode()))
        assert request["messages"][0]["content"].startswith("call ")
        assert only_new.decrypt(bytes(response_blob), request_id.encode())

    again = minigate("keys", "rotate", "--config", str(path))
    assert again.returncode == 0 and "0 records re-wrapped" in again.stderr


def test_rotate_with_the_default_key_file_prepends_a_new_key(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/calls.db"
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging={"store": store}))
    [request_id] = serve_calls(path, 1)
    key_file = tmp_path / "calls.db.key"
    [old] = [line for line in key_file.read_text().splitlines() if not line.startswith("#")]

    result = minigate("keys", "rotate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    new, previous = [line for line in key_file.read_text().splitlines() if not line.startswith("#")]
    assert previous == old and new != old and key_file.stat().st_mode & 0o777 == 0o600
    [(blob, kid)] = fetch(store, "SELECT request_payload, key_id FROM calls")
    assert kid == key_id(new)
    assert orjson.loads(PayloadCipher(new).decrypt(bytes(blob), request_id.encode()))["messages"]

    serve_calls(path, 1)  # the gateway reads the rotated file: new records under the new key
    assert {kid for (kid,) in fetch(store, "SELECT key_id FROM calls")} == {key_id(new)}


@pytest.mark.integration
def test_rotate_without_any_key_or_with_a_broken_key_file_says_what_to_fix(upstream: ScriptedUpstream,
                                                                           tmp_path: Path) -> None:
    logging = {"store": f"sqlite:///{tmp_path}/calls.db"}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    missing = minigate("keys", "rotate", "--config", str(path))
    assert missing.returncode == 2 and "no log key is configured" in missing.stderr

    (tmp_path / "calls.db.key").write_text("# keys\nnot-a-key\n")
    broken = minigate("keys", "rotate", "--config", str(path))
    assert broken.returncode == 2
    message = " ".join(broken.stderr.split())  # rich wraps long lines
    assert f"{tmp_path / 'calls.db.key'}:2: the encryption key is not urlsafe base64" in message
    assert "readable by other users (mode 644)" in message
    serve = minigate("serve", "--config", str(path), "--port", "0")
    assert serve.returncode == 3 and "calls.db.key:2" in " ".join(serve.stderr.split())
