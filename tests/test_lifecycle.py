"""Graceful shutdown drains in-flight work; a client that leaves cancels its upstream call."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import RunningGateway, start_gateway_process, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
STREAM = {"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g h"}]}


@pytest.mark.integration
def test_sigterm_finishes_in_flight_stream_then_exits_0(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script(chunk_delay_s=0.15)
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url))
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:
        received: list[bytes] = []

        def consume() -> None:
            with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=STREAM, headers=AUTH, timeout=30) as r:
                received.extend(r.iter_bytes())

        client = threading.Thread(target=consume)
        client.start()
        time.sleep(0.4)  # the stream is under way
        gateway.signal(signal.SIGTERM)
        client.join(timeout=30)
        assert b"".join(received).endswith(b"data: [DONE]\n\n")
        assert gateway.wait() == 0
        try:
            httpx.get(f"{gateway.base_url}/healthz", timeout=2)
            raise AssertionError("the gateway still accepts connections after exit")
        except httpx.ConnectError:
            pass


def test_client_disconnect_cancels_upstream_stream(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply=" ".join(["word"] * 200), chunk_delay_s=0.05)
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json=STREAM, headers=AUTH) as response:
        next(response.iter_bytes())
    # The upstream stream would take 10 s; it must end soon after the client left.
    eventually(lambda: upstream.open_streams == 0, timeout=5, what="the upstream stream is cancelled")
    assert gateway.metric("minigate_requests_total", {"route": "gpt-4.1", "model": "gpt-4.1", "tier": "frontier",
                                                      "task": "unknown", "status": "499"}) == 1
