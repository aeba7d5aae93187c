"""minigate in front of a real vLLM server (the CPU build): chat, streams, health, load, LoRA adapters.

vLLM takes minutes and gigabytes to install and start, so this runs only when `MINIGATE_TEST_VLLM_URL`
names a running server (its root, e.g. http://127.0.0.1:8000); `scripts/vllm-cpu` builds one, serving
SmolLM2-135M-Instruct as `smollm2` with runtime LoRA updates on, and runs this file against it with
`MINIGATE_TEST_VLLM_ADAPTER` naming a rank-8 adapter that `minigate finetune` trained on a BANKING77
classifier task (docs/serving-vllm.md); its accuracy through the gateway is checked on the held-out
examples its card names.

Besides minigate's own behaviour, these pin the vLLM answers serving/lora.py relies on (the status and
message of a second load, of an unknown unload, of a path with no adapter).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from minigate.router import rules
from minigate.serving.settings import ModelEntry
from tests.conftest import AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import RunningGateway
from tests.support.waiting import eventually

VLLM_URL = os.environ.get("MINIGATE_TEST_VLLM_URL", "").rstrip("/")
BASE_MODEL = os.environ.get("MINIGATE_TEST_VLLM_MODEL", "smollm2")
ADAPTER_PATH = os.environ.get("MINIGATE_TEST_VLLM_ADAPTER", "")
ANALYST = {"authorization": f"Bearer {ANALYST_KEY}"}

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not VLLM_URL, reason="no real vLLM server: set MINIGATE_TEST_VLLM_URL, or run scripts/vllm-cpu"
)]
# Adapters from config and load in rules came to the `vllm` kind together; before that, only the
# endpoints themselves are tested (directly, with httpx).
needs_vllm_extras = pytest.mark.skipif(
    "adapter" not in ModelEntry.model_fields or not hasattr(rules, "LOAD_NAMES"),
    reason="minigate's vllm kind loads no adapters from config and reads no load yet",
)

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in one word."}
]
MAX_TOKENS = 16  # replies are greedy (temperature 0) and short: they depend only on the weights


def adapter_path() -> str:
    if not ADAPTER_PATH or not Path(ADAPTER_PATH, "adapter_config.json").is_file():
        pytest.skip("no LoRA adapter: set MINIGATE_TEST_VLLM_ADAPTER to a PEFT adapter directory")
    return ADAPTER_PATH


def vllm_config(models: dict[str, Any]) -> dict[str, Any]:
    """A gateway config whose one upstream is the real vLLM server; each model is a route of its own name."""
    config = gateway_config(VLLM_URL)
    config["upstreams"] = {"vllm-a": {"kind": "vllm", "base_url": f"{VLLM_URL}/v1"}}
    config["models"] = models
    config["routes"] = {name: {"default": name} for name in models}
    return config


def miniature(model: str) -> dict[str, Any]:
    return {"upstream": "vllm-a", "model": model, "tier": "miniature"}


def client_of(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0, timeout=300)


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(vllm_config({"mini": miniature(BASE_MODEL)}))


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return client_of(gateway)


def served_models() -> set[str]:
    reply = httpx.get(f"{VLLM_URL}/v1/models", timeout=30)
    reply.raise_for_status()
    return {model["id"] for model in reply.json()["data"]}


def lora_call(action: str, name: str, path: str | None = None) -> httpx.Response:
    body = {"lora_name": name} if path is None else {"lora_name": name, "lora_path": path}
    return httpx.post(f"{VLLM_URL}/v1/{action}_lora_adapter", json=body, timeout=120)


def ask(client: openai.OpenAI, model: str, *, logprobs: bool = False,
        max_tokens: int = MAX_TOKENS) -> tuple[ChatCompletion, httpx.Headers]:
    """QUESTION, answered greedily through the gateway: the reply and the response headers."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=QUESTION, temperature=0,
                                                           max_tokens=max_tokens, logprobs=logprobs)
    return raw.parse(), raw.headers


def ask_streamed(client: openai.OpenAI, model: str, *, include_usage: bool = False) -> list[ChatCompletionChunk]:
    stream = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=MAX_TOKENS,
                                            stream=True, stream_options={"include_usage": include_usage})
    return list(stream)


def first_logprob(reply: ChatCompletion) -> float:
    assert reply.choices[0].logprobs is not None and reply.choices[0].logprobs.content
    return reply.choices[0].logprobs.content[0].logprob


@pytest.fixture
def adapter_name() -> Iterator[str]:
    """A fresh adapter name; whatever loaded it, it is unloaded from vLLM after the test."""
    name = f"plumbing-{uuid.uuid4().hex[:8]}"
    yield name
    if name in served_models():
        lora_call("unload", name)


@pytest.fixture
def adapter(adapter_name: str) -> str:
    """The adapter loaded into vLLM at run time, by the test itself."""
    loaded = lora_call("load", adapter_name, adapter_path())
    assert loaded.status_code == 200, loaded.text
    return adapter_name


def test_chat_through_minigate(client: openai.OpenAI) -> None:
    reply, headers = ask(client, "mini")
    assert headers["x-minigate-tier"] == "miniature" and headers["x-minigate-model"] == "mini"
    assert reply.model == BASE_MODEL and reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.choices[0].message.content and reply.choices[0].message.content.strip()
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_stream_through_minigate(client: openai.OpenAI) -> None:
    chunks = ask_streamed(client, "mini", include_usage=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert text.strip()
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # relayed as it came
    assert len(usage) == 1 and usage[0].completion_tokens > 0


def test_stream_matches_the_non_streamed_reply(client: openai.OpenAI) -> None:
    whole = ask(client, "mini")[0].choices[0].message.content
    streamed = ask_streamed(client, "mini")
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == whole


def test_health_and_readiness(gateway: RunningGateway) -> None:
    assert httpx.get(f"{VLLM_URL}/health", timeout=30).status_code == 200
    ready = httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST, timeout=30).json()
    assert ready["upstreams"] == {"vllm-a": "reachable"}


def test_metrics_report_the_queue(client: openai.OpenAI) -> None:
    ask(client, "mini")
    lines = httpx.get(f"{VLLM_URL}/metrics", timeout=30).text.splitlines()
    waiting = [line for line in lines if line.startswith("vllm:num_requests_waiting{")]
    assert waiting and all(float(line.rsplit(" ", 1)[1]) >= 0 for line in waiting)
    assert any(line.startswith("vllm:kv_cache_usage_perc{") for line in lines)


def test_adapter_loaded_at_run_time_serves_and_unloads(make_gateway: Callable[..., RunningGateway],
                                                        adapter: str) -> None:
    assert adapter in served_models()
    client = client_of(make_gateway(vllm_config({"mini": miniature(BASE_MODEL), "tuned": miniature(adapter)})))
    base, _ = ask(client, "mini", logprobs=True)
    tuned, headers = ask(client, "tuned", logprobs=True)
    assert headers["x-minigate-model"] == "tuned" and tuned.model == adapter
    # The adapter's weights are random, not zero, so vLLM applying it shows in the first token's logprob
    # (the greedy text itself may well stay the same).
    assert first_logprob(tuned) != first_logprob(base)

    unloaded = lora_call("unload", adapter)
    assert unloaded.status_code == 200, unloaded.text
    assert adapter not in served_models()
    with pytest.raises(openai.NotFoundError) as gone:
        ask(client, "tuned")
    assert isinstance(gone.value.body, dict) and adapter in gone.value.body["message"]


def test_vllm_answers_adapter_calls_as_minigate_expects(adapter: str) -> None:
    again = lora_call("load", adapter, adapter_path())
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    assert lora_call("unload", f"{adapter}-unknown").status_code == 404
    nowhere = lora_call("load", f"{adapter}-nowhere", str(Path(adapter_path()) / "missing"))
    assert nowhere.status_code == 404 and f"{adapter}-nowhere" not in served_models()


@needs_vllm_extras
def test_adapter_named_in_config_is_loaded_at_start(make_gateway: Callable[..., RunningGateway],
                                                    adapter_name: str) -> None:
    tuned = {"upstream": "vllm-a", "adapter": adapter_name, "path": adapter_path(), "tier": "miniature"}
    gateway = make_gateway(vllm_config({"mini": miniature(BASE_MODEL), "tuned": tuned}))
    assert adapter_name in served_models()
    assert httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST, timeout=30).json()["upstreams"] == {"vllm-a": "reachable"}
    client = client_of(gateway)
    base, _ = ask(client, "mini", logprobs=True)
    reply, _ = ask(client, "tuned", logprobs=True)
    assert reply.model == adapter_name and first_logprob(reply) != first_logprob(base)


@needs_vllm_extras
def test_adapter_that_cannot_load_shows_in_readiness(make_gateway: Callable[..., RunningGateway],
                                                     adapter_name: str) -> None:
    broken = {"upstream": "vllm-a", "adapter": adapter_name, "path": str(Path(adapter_path()) / "missing"),
              "tier": "miniature"}
    gateway = make_gateway(vllm_config({"mini": miniature(BASE_MODEL), "broken": broken}))
    problem = httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST, timeout=30).json()["upstreams"]["vllm-a"]
    assert adapter_name in problem and "404" in problem
    assert ask(client_of(gateway), "mini")[0].model == BASE_MODEL  # the base model serves on


@needs_vllm_extras
def test_rules_read_the_servers_queue(make_gateway: Callable[..., RunningGateway]) -> None:
    config = vllm_config({"mini": miniature(BASE_MODEL), "spill": miniature(BASE_MODEL)})
    config["routes"]["mini"]["rules"] = [
        {"name": "saturated", "when": {"upstream_waiting": {"gt": 1000}}, "use": "spill"},
        {"name": "idle", "when": {"upstream_waiting": {"lte": 1000}}, "use": "mini"},
    ]
    client = client_of(make_gateway(config))
    # Without a fresh reading of /metrics (before the first, or after a failed poll), load tests are
    # false and the route's default serves: ask again, leaving the poller (once a second) time to read.
    seen: list[str] = []

    def is_idle() -> bool:
        seen.append(ask(client, "mini", max_tokens=1)[1]["x-minigate-rule"])
        return seen[-1] == "idle"

    eventually(is_idle, timeout=120, interval=1, what="a load-based rule matched")
    assert "saturated" not in seen, seen


@needs_vllm_extras
def test_a_finetuned_adapter_answers_its_held_out_examples_through_minigate(
        make_gateway: Callable[..., RunningGateway], adapter_name: str) -> None:
    card_path = Path(adapter_path(), "card.json")
    if not card_path.is_file():
        pytest.skip("the adapter has no card.json: not one `minigate finetune` wrote")
    card = json.loads(card_path.read_text())
    validation = Path(card["data"]["sources"][-1])
    examples = [json.loads(line) for line in validation.read_text().splitlines() if line.strip()]
    tuned = {"upstream": "vllm-a", "adapter": adapter_name, "path": adapter_path(), "tier": "miniature"}
    client = client_of(make_gateway(vllm_config({"mini": miniature(BASE_MODEL), "tuned": tuned})))

    def right(model: str) -> int:
        said = [client.chat.completions.create(model=model, messages=example["messages"][:-1], temperature=0,
                                               max_tokens=MAX_TOKENS).choices[0].message.content or ""
                for example in examples]
        return sum(text.strip() == example["messages"][-1]["content"] for text, example in zip(said, examples))

    base, trained = right("mini"), right("tuned")
    in_torch = card["validation"]["tuned"]["agreed"]
    print(f"held-out labels through minigate on vLLM: base {base}/{len(examples)}, tuned {trained}/{len(examples)} "
          f"(torch at training time: {in_torch}/{len(examples)})")
    # vLLM computes in bfloat16, torch evaluated in float32: a near-tie may flip, not more.
    assert trained >= in_torch - max(2, len(examples) // 20) and trained > base
