"""The local miniature's server process: llama-cpp-python's OpenAI server plus LoRA adapters at run time.

minigate runs this file by path in the child (serving/llamacpp.py), so it imports only the standard
library, llama_cpp, and chat_render.py beside it (by path): the child's interpreter need not have
minigate installed.

llama_cpp.server serves one model, or several by loading a whole model per request that names
another, which for adapters of one base would mean a reload per request. Here the base model is
loaded once and every adapter is applied to its one context (llama.cpp applies LoRA adapters at
graph time, per context, so switching costs nothing but the prompt cache). The endpoints are vLLM's,
so the gateway drives both kinds with the same code (serving/lora.py):

- `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: 200 plain text; 400 for a name already
  loaded (or the base model's); 404 when no adapter file is at `lora_path`; 400 when llama.cpp
  refuses the file (not a LoRA adapter of this base model).
- `POST /v1/unload_lora_adapter {"lora_name"}`: 200 plain text; 400 for a name not loaded.
- A chat or completion whose `model` names an adapter is answered with that adapter applied; any
  other name gets the base model. `GET /v1/models` lists the base model and then the adapters.

Chats are rendered by serving/chat_render.py, the format `minigate finetune` trains on (SmolLM2's own
for chats without tools), and sampled with no repeat penalty unless a request asks for one, as an
OpenAI client expects.

One generation runs at a time (llama_cpp.server's lock), so changing the context's adapter before
one is safe; loading and unloading take the same lock, so they never change a generation under way.

The KV cache holds one adapter's prompt at a time, so a switch would re-read a long shared prefix (tool
definitions) on every call when adapters interleave. Each adapter (and the base model) therefore gets
its last prompt's KV cache saved when the context switches away from it, and restored when it switches
back; llama.cpp then evaluates only what the new prompt adds to that prefix, as vLLM's prefix caching
does per LoRA. An adapter answers as a child serving it alone would, whatever ran between its calls:
asked again the prompt it last evaluated, llama.cpp evaluates only that prompt's last token again, on its
own, which can change a greedy answer slightly, with or without a switch. See `_PromptCache` for why not
llama-cpp-python's `LlamaRAMCache`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import sys
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import llama_cpp
import llama_cpp.server.types as request_types
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_chat_format import ChatFormatterResponse, chat_formatter_to_chat_completion_handler


def _no_repeat_penalty_by_default() -> None:
    """OpenAI's API has no repeat penalty; llama_cpp.server applies 1.1 unless a request says otherwise, which
    pushes a classifier away from the very labels its system prompt lists. Default to none (1.0), as OpenAI
    clients expect; a request may still send `repeat_penalty`. Done before the server's routes are built."""
    for model in (request_types.CreateChatCompletionRequest, request_types.CreateCompletionRequest):
        model.model_fields["repeat_penalty"].default = 1.0
        model.model_rebuild(force=True)


_no_repeat_penalty_by_default()

import llama_cpp.server.app as server_app  # noqa: E402  (after the defaults above)
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.model import LlamaProxy
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings
from starlette.concurrency import run_in_threadpool


def _chat_render() -> Any:
    """serving/chat_render.py, loaded by path: the prompt format `minigate finetune` trains on."""
    spec = importlib.util.spec_from_file_location("minigate_chat_render", Path(__file__).with_name("chat_render.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_render = _chat_render()

__all__ = ["AdapterProxy", "chat_handler", "main", "with_tool_calls"]


@dataclass(frozen=True)
class _Adapter:
    path: str
    handle: Any  # llama.cpp's `llama_adapter_lora *`


# Four full contexts of the default 2,048 tokens: SmolLM2-135M's KV cache takes 23,040 bytes a token (30
# layers, K and V, 3 heads of 64, f16), 47 MB a context. The child shares the gateway's memory limit (1 GiB
# in the Helm chart), which the weights (100 MB) and llama_cpp.server's logits (400 MB) already half fill.
_PROMPT_CACHE_BYTES = 192 << 20


@dataclass(frozen=True)
class _Prompt:
    """A prompt as one adapter evaluated it: its tokens and sequence 0 of the KV cache."""
    tokens: npt.NDArray[np.intc]
    kv: ctypes.Array[ctypes.c_uint8]


class _PromptCache:
    """The last prompt of each adapter not on the context (None: the base model's), least recently saved
    dropped first beyond `capacity` bytes.

    Why not llama-cpp-python's `LlamaRAMCache`, one per adapter: `Llama.save_state` copies the logits of
    every prompt token (llama_cpp.server keeps them all, `logits_all`: 196 KB a token, 8.5 times the KV
    cache) while `LlamaRAMCache` counts only the KV cache against its capacity, so its bound is off
    ninefold; and `Llama._create_completion` saves a state after every completion, 0.1 to 0.8 s for a
    1,600-token prompt even when no other adapter ever runs. Here sequence 0 of the KV cache alone is
    copied, and only when the context switches away from an adapter.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._prompts: OrderedDict[str | None, _Prompt] = OrderedDict()

    def save(self, name: str | None, llama: llama_cpp.Llama) -> None:
        """Keep the prompt on `llama`'s context as `name`'s, which must be the adapter on it."""
        size = llama_cpp.llama_state_seq_get_size(llama.ctx, 0)
        if llama.n_tokens == 0 or size > self._capacity:
            return
        kv = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(llama.ctx, kv, size, 0) != size:
            return
        self._prompts[name] = _Prompt(llama.input_ids[: llama.n_tokens].copy(), kv)
        self._prompts.move_to_end(name)
        while sum(len(prompt.kv) for prompt in self._prompts.values()) > self._capacity:
            self._prompts.popitem(last=False)

    def restore(self, name: str | None, llama: llama_cpp.Llama) -> None:
        """Empty `llama`'s context, then give it `name`'s last prompt, if kept; `name` must be the adapter on it.

        The restored prefix has no logits: a request for prompt logprobs (`echo` with `logprobs`, which
        the gateway never sends) reads zeros for it, never another adapter's. llama.cpp evaluates at least
        the prompt's last token again (`reset` asks for it), so the next token's logits are always fresh.
        """
        llama.reset()  # type: ignore[no-untyped-call]
        prompt = self._prompts.pop(name, None)
        if prompt is None or not llama_cpp.llama_state_seq_set_data(llama.ctx, prompt.kv, len(prompt.kv), 0):
            return
        n_tokens = len(prompt.tokens)
        llama.input_ids[:n_tokens] = prompt.tokens
        llama.scores[:n_tokens] = 0.0
        llama.n_tokens = n_tokens

    def drop(self, name: str | None) -> None:
        self._prompts.pop(name, None)

    def clear(self) -> None:
        self._prompts.clear()


class AdapterProxy:
    """Stands in for llama_cpp.server's `LlamaProxy`: one loaded model, any number of LoRA adapters.

    The server's endpoints call it with the request's `model` and get the one `Llama`, with the
    adapter of that name applied to its context, or none.

    >>> proxy = AdapterProxy(LlamaProxy(models=[settings]))  # doctest: +SKIP
    >>> proxy.load("invoice-lora", "/adapters/invoice/adapter.gguf")  # doctest: +SKIP
    >>> proxy("invoice-lora").create_chat_completion(messages=[...])  # doctest: +SKIP
    """

    def __init__(self, proxy: LlamaProxy) -> None:
        self._proxy = proxy  # owns the model; kept so that `free` closes it as llama_cpp.server would
        self._llama: llama_cpp.Llama = proxy()
        self._llama.chat_handler = chat_handler()
        self.base_alias: str = next(iter(proxy))
        self._adapters: dict[str, _Adapter] = {}
        self._active: str | None = None  # the adapter on the context now
        self._prompts = _PromptCache(_PROMPT_CACHE_BYTES)

    def __call__(self, model: str | None = None) -> llama_cpp.Llama:
        self._activate(model if model in self._adapters else None)
        return self._llama

    def __iter__(self) -> Iterator[str]:
        yield self.base_alias
        yield from self._adapters

    def free(self) -> None:
        self._prompts.clear()
        self._proxy.free()  # type: ignore[no-untyped-call]

    def load(self, name: str, path: str) -> tuple[int, str]:
        """Load an adapter file under `name`: vLLM's status and message."""
        if name in self._adapters or name == self.base_alias:
            return 400, f"The lora adapter '{name}' has already been loaded."
        if not os.path.isfile(path):
            return 404, f"No adapter found for {path}"
        handle = llama_cpp.llama_adapter_lora_init(self._llama.model, path.encode())
        if not handle:
            base = os.path.basename(self.base_alias)
            return 400, f"llama.cpp cannot load {path}: not a GGUF LoRA adapter, or not one of the base model {base}"
        self._adapters[name] = _Adapter(path, handle)
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> tuple[int, str]:
        """Drop an adapter, freeing its weights: vLLM's status and message."""
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            return 400, f"The lora adapter '{name}' cannot be found."
        if self._active == name:
            self._activate(None)
        self._prompts.drop(name)  # a later adapter of this name has other weights
        llama_cpp.llama_adapter_lora_free(adapter.handle)
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def _activate(self, name: str | None) -> None:
        """Put this adapter (None: none) on the context, with the prompt it last evaluated.

        The KV cache on the context was computed with the other adapter's weights, so it is saved as that
        adapter's and never read by this one; this one gets only what it computed itself. llama_cpp.server
        calls this on its event loop: saving and restoring 1,700 tokens' KV cache blocks it for 45 ms, and
        spares the worker thread 14 s of evaluating them again (one core).
        """
        if name == self._active:
            return
        self._prompts.save(self._active, self._llama)
        if name is None:
            llama_cpp.llama_set_adapters_lora(self._llama.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[name].handle)
            scales = (ctypes.c_float * 1)(1.0)
            llama_cpp.llama_set_adapters_lora(self._llama.ctx, handles, 1, scales)
        self._prompts.restore(name, self._llama)
        self._active = name


def chat_handler() -> Callable[..., Any]:
    """Chats rendered as `minigate finetune` renders its examples (serving/chat_render.py): the base model's
    ChatML, plus the offered tools and earlier tool calls, which SmolLM2's own template drops. A
    non-streamed reply to a request with tools has its `<tool_call>` blocks turned into OpenAI tool calls;
    a streamed one is sent as the model writes it."""

    def format_chat(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    **_: Any) -> ChatFormatterResponse:
        prompt = _render.render_chat(messages, tools, add_generation_prompt=True)
        return ChatFormatterResponse(prompt=prompt, stop=_render.END_OF_TURN, added_special=True)  # no BOS

    render = chat_formatter_to_chat_completion_handler(cast(Any, format_chat))  # typed for llama_types' TypedDicts

    def handle(**request: Any) -> Any:
        answer = render(**request)
        return answer if request.get("stream") or not request.get("tools") else with_tool_calls(cast(Any, answer))

    return handle


def with_tool_calls(answer: dict[str, Any]) -> dict[str, Any]:
    """A chat completion whose text holds `<tool_call>` blocks, as OpenAI sends tool calls (in place)."""
    for choice in answer.get("choices", []):
        message = choice.get("message") or {}
        calls = _render.tool_calls_in_text(message.get("content") or "")
        if calls:
            message["content"] = None
            message["tool_calls"] = [
                {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
                for name, arguments in calls]
            choice["finish_reason"] = "tool_calls"
    return answer


@contextlib.asynccontextmanager
async def _exclusive() -> AsyncIterator[AdapterProxy]:
    """The model, held as a generation holds it: no generation runs meanwhile."""
    async with contextlib.asynccontextmanager(server_app.get_llama_proxy)() as proxy:
        yield proxy


async def _fields(request: Request, *names: str) -> list[str] | None:
    """The named fields of a JSON body, or None unless each is a non-empty string."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    values = [body.get(name) for name in names] if isinstance(body, dict) else []
    strings = [value for value in values if isinstance(value, str) and value]
    return strings if len(strings) == len(names) else None


def _answer(status: int, message: str) -> Response:
    """vLLM's answers: plain text on success, OpenAI's error shape otherwise."""
    if status == 200:
        return PlainTextResponse(message)
    kind = "NotFoundError" if status == 404 else "BadRequestError"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


async def _load_adapter(request: Request) -> Response:
    fields = await _fields(request, "lora_name", "lora_path")
    if fields is None:
        return _answer(400, "Both 'lora_name' and 'lora_path' must be provided.")
    async with _exclusive() as proxy:
        return _answer(*await run_in_threadpool(proxy.load, *fields))  # reading the weights blocks


async def _unload_adapter(request: Request) -> Response:
    fields = await _fields(request, "lora_name")
    if fields is None:
        return _answer(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
    async with _exclusive() as proxy:
        return _answer(*proxy.unload(fields[0]))


def create_app(server_settings: ServerSettings, model_settings: ModelSettings) -> tuple[FastAPI, AdapterProxy]:
    """llama_cpp.server's app for one model, its proxy swapped for an `AdapterProxy`, and the adapter endpoints.

    llama_cpp.server keeps its proxy in a module global (`_llama_proxy`) that every endpoint reads
    through `get_llama_proxy`; replacing that global is how its endpoints come to serve adapters.
    """
    app = server_app.create_app(server_settings=server_settings, model_settings=[model_settings])
    proxy = AdapterProxy(server_app._llama_proxy)  # type: ignore[arg-type]
    server_app._llama_proxy = proxy  # type: ignore[assignment]
    app.add_api_route("/v1/load_lora_adapter", _load_adapter, methods=["POST"])
    app.add_api_route("/v1/unload_lora_adapter", _unload_adapter, methods=["POST"])
    return app, proxy


def main() -> None:
    """Take llama_cpp.server's own command-line options and `--lora_adapter NAME=PATH`, and serve.

    Adapters given at start are loaded before the server listens: a child restarted after a crash
    then never answers a call for an adapter with the bare base model. One that fails to load is
    reported and skipped; the gateway's own load of it gets the reason.
    """
    parser = argparse.ArgumentParser(description="llama.cpp server with LoRA adapters (minigate)")
    add_args_from_model(parser, Settings)
    parser.add_argument("--lora_adapter", action="append", default=[], metavar="NAME=PATH",
                        help="a LoRA adapter (GGUF) to serve as model NAME; repeatable")
    args = parser.parse_args()
    # `parse_model_from_args` is annotated as returning the class it is given; it returns an instance.
    server_settings = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    app, proxy = create_app(server_settings, cast(ModelSettings, parse_model_from_args(ModelSettings, args)))
    for name, _, path in (spec.partition("=") for spec in args.lora_adapter):
        status, message = proxy.load(name, path)
        if status != 200:
            print(f"LoRA adapter {name!r}: {message}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=server_settings.host, port=server_settings.port)


if __name__ == "__main__":
    main()
