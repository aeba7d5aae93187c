"""Keys and roles: 401 without a valid key, 403 for a role that may not, loopback-only without keys."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import RunningGateway, write_config
from tests.support.upstream import ScriptedUpstream

HELLO = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic abc", "Bearer"])
def test_missing_or_wrong_key_is_401(gateway: RunningGateway, upstream: ScriptedUpstream, authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization else {}
    response = httpx.post(f"{gateway.v1}/chat/completions", json=HELLO, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert "Bearer" in error["message"] or "Incorrect API key" in error["message"]
    assert upstream.requests == []


def test_sdk_sees_authentication_error(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.v1, api_key="nope", max_retries=0).models.list()


def test_roles(gateway: RunningGateway) -> None:
    def chat(key: str) -> int:
        return httpx.post(f"{gateway.v1}/chat/completions", json=HELLO, headers={"authorization": f"Bearer {key}"}).status_code

    assert chat(AGENT_KEY) == 200
    assert chat(ADMIN_KEY) == 200
    assert chat(ANALYST_KEY) == 403


def test_metrics_can_require_a_role(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    gateway = make_gateway(gateway_config(upstream.base_url, metrics={"require_role": "analyst"}))
    url = f"{gateway.base_url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": f"Bearer {AGENT_KEY}"}).status_code == 403
    assert httpx.get(url, headers={"authorization": f"Bearer {ANALYST_KEY}"}).status_code == 200


def test_no_keys_serves_loopback(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    gateway = make_gateway(gateway_config(upstream.base_url, auth={"keys": []}))
    assert httpx.post(f"{gateway.v1}/chat/completions", json=HELLO).status_code == 200


@pytest.mark.integration
def test_no_keys_on_a_public_address_is_refused(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    path = write_config(tmp_path / "open.yaml", gateway_config(upstream.base_url, auth={"keys": []}))
    result = subprocess.run(
        [sys.executable, "-m", "minigate.cli", "serve", "--config", str(path), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3
    assert "no API keys are configured" in result.stderr and "auth.keys" in result.stderr
