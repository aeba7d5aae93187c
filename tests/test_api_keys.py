"""`minigate keys create / list / revoke`: keys kept (hashed) in the log store, taken up by a running gateway,
refused once revoked or expired, limited like the config's keys; on both stores."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from tests.conftest import gateway_config
from tests.stores import fetch
from tests.support.servers import RunningGateway, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually
from tests.test_keys_cli import minigate

HI = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


def config_for(upstream: ScriptedUpstream, store_url: str, tmp_path: Path) -> dict[str, object]:
    config = gateway_config(upstream.base_url)
    config["auth"]["keys"] = config["auth"]["keys"][1:]  # the agent key comes from the store
    config["auth"]["refresh_s"] = 0.2
    config["logging"] = {"store": store_url, "spool": str(tmp_path / "spool"), "flush_interval_s": 0.05}
    return config


def chat(gateway: RunningGateway, key: str) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", json=HI, headers={"authorization": f"Bearer {key}"})




def test_a_created_key_serves_and_a_revoked_one_is_refused_within_seconds(
        upstream: ScriptedUpstream, store_url: str, tmp_path: Path,
        make_gateway: Callable[..., RunningGateway]) -> None:
    config = config_for(upstream, store_url, tmp_path)
    path = write_config(tmp_path / "minigate.yaml", config)
    gateway = make_gateway(config)

    made = minigate("keys", "create", "ci-bot", "--role", "agent", "--rpm", "100", "--config", str(path))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("mg-") and "only time it is shown" in made.stderr
    stored = fetch(store_url, "SELECT name, digest, role FROM api_keys")
    assert stored[0][0] == "ci-bot" and stored[0][2] == "agent" and key not in str(stored)

    eventually(lambda: chat(gateway, key).status_code == 200)
    answered = chat(gateway, key)
    assert answered.headers["x-ratelimit-limit-requests"] == "100"  # the stored key's limits apply
    eventually(lambda: any(row[0] == "ci-bot" for row in fetch(store_url, "SELECT key_name FROM calls")))

    listed = minigate("keys", "list", "--json", "--config", str(path))
    assert [(k["name"], k["role"], k["limits"], k["active"]) for k in orjson.loads(listed.stdout)] == [
        ("ci-bot", "agent", {"rpm": 100}, True)]

    revoked = minigate("keys", "revoke", "ci-bot", "--config", str(path))
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    eventually(lambda: chat(gateway, key).status_code == 401)
    took = time.monotonic() - started
    assert took < 5
    assert "'ci-bot' was revoked at " in chat(gateway, key).json()["error"]["message"]
    assert orjson.loads(minigate("keys", "list", "--json", "--config", str(path)).stdout)[0]["active"] is False


def test_an_expired_key_is_refused_and_says_so(upstream: ScriptedUpstream, tmp_path: Path,
                                                make_gateway: Callable[..., RunningGateway]) -> None:
    store = f"sqlite:///{tmp_path}/calls.db"
    config = config_for(upstream, store, tmp_path)
    path = write_config(tmp_path / "minigate.yaml", config)
    gateway = make_gateway(config)
    key = minigate("keys", "create", "shortlived", "--expires", "2026-01-01T00:00:00Z", "--config", str(path))
    assert key.returncode == 2 and "is in the past" in key.stderr
    made = minigate("keys", "create", "shortlived", "--expires", "0.02m", "--config", str(path))  # 1.2 s
    key_text = made.stdout.strip()
    eventually(lambda: chat(gateway, key_text).status_code == 200)
    eventually(lambda: chat(gateway, key_text).status_code == 401)
    assert "'shortlived' expired at " in chat(gateway, key_text).json()["error"]["message"]


def test_create_refuses_what_it_cannot_store_safely(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/calls.db"
    path = write_config(tmp_path / "minigate.yaml", config_for(upstream, store, tmp_path))
    assert minigate("keys", "create", "ok", "--config", str(path)).returncode == 0
    again = minigate("keys", "create", "ok", "--config", str(path))
    assert again.returncode == 2 and "exists and is not revoked" in again.stderr
    clash = minigate("keys", "create", "dashboards", "--config", str(path))
    assert clash.returncode == 2 and "the config already has a key named 'dashboards'" in clash.stderr
    route = minigate("keys", "create", "x", "--limits", '{"routes": {"gpt-5": {"rpm": 1}}}', "--config", str(path))
    assert route.returncode == 2 and "unknown route(s) gpt-5" in route.stderr
    bad = minigate("keys", "create", "a b", "--config", str(path))
    assert bad.returncode == 2 and "use 1-64 letters" in bad.stderr
    role = minigate("keys", "create", "y", "--role", "root", "--config", str(path))
    assert role.returncode == 2 and "choose agent, analyst or admin" in role.stderr
    missing = minigate("keys", "revoke", "nobody", "--config", str(path))
    assert missing.returncode == 2 and "no unrevoked stored key is named 'nobody'" in missing.stderr
    # A revoked name may be used again: a new key, the old one still refused.
    assert minigate("keys", "revoke", "ok", "--config", str(path)).returncode == 0
    assert minigate("keys", "create", "ok", "--config", str(path)).returncode == 0
    table = minigate("keys", "list", "--config", str(path))
    assert "ok" in table.stdout and "active" in table.stdout


def test_a_stored_keys_budget_is_enforced(upstream: ScriptedUpstream, tmp_path: Path,
                                          make_gateway: Callable[..., RunningGateway]) -> None:
    config = config_for(upstream, f"sqlite:///{tmp_path}/calls.db", tmp_path)
    config["models"]["gpt-4.1"]["price"] = {"input_per_mtok": 1e6, "output_per_mtok": 1e6}  # type: ignore[index]
    path = write_config(tmp_path / "minigate.yaml", config)
    gateway = make_gateway(config)
    key = minigate("keys", "create", "spender", "--limits", '{"usd_per_day": 5}', "--config", str(path))
    key_text = key.stdout.strip()
    eventually(lambda: chat(gateway, key_text).status_code != 401)
    eventually(lambda: chat(gateway, key_text).status_code == 429)
    assert chat(gateway, key_text).json()["error"]["code"] == "budget_exceeded"
