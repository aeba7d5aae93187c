"""Reload on file change and on SIGHUP is atomic: a bad file keeps the old config serving."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import start_gateway_process, write_config
from tests.support.servers import RunningGateway
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}


def routes(base_url: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{base_url}/v1/models", headers=AUTH).json()["data"]]


def reloads(base_url: str, result: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(f'minigate_config_reloads_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_file_change_reloads_and_bad_file_keeps_old(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    config = gateway_config(upstream.base_url)
    gateway = make_gateway(config, watch=True)
    path = next(Path(p) for p in [gateway.app.state.holder.path])
    config["routes"]["added"] = {"default": "mini"}
    write_config(path, config)
    eventually(lambda: "added" in routes(gateway.base_url))

    path.write_text(path.read_text().replace("default: mini", "default: no-such-model"))
    eventually(lambda: reloads(gateway.base_url, "rejected") >= 1)
    ready = httpx.get(f"{gateway.base_url}/readyz", headers={"authorization": f"Bearer {ANALYST_KEY}"}).json()
    assert "routes.cheap.default: unknown model 'no-such-model'" in ready["last_reload_error"]
    assert ready["config_generation"] == 2
    response = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                          json={"model": "added", "messages": [{"role": "user", "content": "still here"}]})
    assert response.status_code == 200


@pytest.mark.integration
def test_sighup_reloads(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url))
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:
        before = reloads(gateway.base_url, "unchanged")
        gateway.signal(signal.SIGHUP)
        eventually(lambda: reloads(gateway.base_url, "unchanged") == before + 1)
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0


@pytest.mark.slow
def test_rename_on_save_reloads_and_log_writes_beside_the_config_do_not(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    config = gateway_config(upstream.base_url)
    gateway = make_gateway(config, watch=True)  # its SQLite call log lives in the config's folder
    path = gateway.app.state.holder.path
    for _ in range(5):
        httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                   json={"model": "cheap", "messages": [{"role": "user", "content": "x"}]})
    time.sleep(1.5)  # the writer flushes every 0.5 s; the watcher debounces 1.6 s at most
    assert reloads(gateway.base_url, "unchanged") == 0 and reloads(gateway.base_url, "applied") == 0

    config["routes"]["renamed-in"] = {"default": "mini"}
    staged = write_config(path.with_name(".minigate.yaml.swp"), config)  # how editors save: write, rename
    staged.rename(path)
    eventually(lambda: "renamed-in" in routes(gateway.base_url))
