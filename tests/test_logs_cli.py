"""`minigate logs migrate` and `minigate logs export` against real stores."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from minigate.logger.crypto import generate_key
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import ScriptedUpstream


def minigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_export_writes_every_call_with_redacted_payloads(upstream: ScriptedUpstream, tmp_path: Path, store_url: str) -> None:
    logging = {"store": store_url, "encryption_key": generate_key(), "spool": str(tmp_path / "spool")}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    ids = []
    with run_gateway(path) as gateway:
        for i in range(3):
            response = httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                                  json={"model": "cheap", "messages": [{"role": "user", "content": f"{i}: 192.168.1.{i}"}]})
            ids.append(response.headers["x-minigate-request-id"])
    result = minigate("logs", "export", "--config", str(path))
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["request_id"] for line in lines] == ids
    assert lines[1]["request"]["messages"][0]["content"] == "1: <IP_1>"
    assert lines[1]["route"] == "cheap" and lines[1]["input_tokens"]
    assert "3 calls exported" in result.stderr
    assert fetch(store_url, "SELECT count(*) FROM audit WHERE actor LIKE 'cli:%'") == [(1,)]

    future = minigate("logs", "export", "--config", str(path), "--since", str(time.time() + 3600))
    assert future.returncode == 0 and future.stdout == ""
    bad = minigate("logs", "export", "--config", str(path), "--since", "last tuesday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


def test_migrate_creates_the_schema(upstream: ScriptedUpstream, tmp_path: Path, store_url: str) -> None:
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging={"store": store_url}))
    result = minigate("logs", "migrate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert fetch(store_url, "SELECT count(*) FROM calls") == [(0,)]


@pytest.mark.slow
def test_export_to_parquet_keeps_every_column_typed(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    logging = {"store": f"sqlite:///{tmp_path}/calls.db", "encryption_key": generate_key()}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    with run_gateway(path) as gateway:
        ids = [httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                          json={"model": "cheap", "messages": [{"role": "user", "content": f"mail me at x{i}@y.org"}]}
                          ).headers["x-minigate-request-id"] for i in range(2)]
    result = minigate("logs", "export", "--config", str(path), "--format", "parquet", "-o", str(tmp_path / "c.parquet"))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "c.parquet")
    assert table.column("request_id").to_pylist() == ids
    assert str(table.schema.field("input_tokens").type) == "int64" and str(table.schema.field("stream").type) == "bool"
    request = orjson.loads(table.column("request").to_pylist()[0])
    assert request["messages"][0]["content"] == "mail me at <EMAIL_1>"

    no_file = minigate("logs", "export", "--config", str(path), "--format", "parquet")
    assert no_file.returncode == 2 and "--output" in no_file.stderr
