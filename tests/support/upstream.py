"""A scripted OpenAI-protocol server: the stand-in for frontier APIs and vLLM in tests.

The gateway must be tested against real HTTP (keep-alive, chunked SSE, connections that drop), so
this is a real uvicorn server on a free loopback port, run in a thread. A test scripts how it
behaves (fixed or echoed replies, latency, error statuses, invalid JSON, tool calls, a stream cut
after N chunks) and then reads back what it received (`requests`) and the exact bytes it sent
(`sent`). It speaks chat completions (also at Azure's deployment path), legacy text completions,
the Responses API (for gateways that pass it through to a native upstream), embeddings, model
listing and vLLM's LoRA endpoints.

Example:

    with ScriptedUpstream() as up:
        up.script(reply="Paris.")
        up.enqueue(Script(status=503))  # the next request fails once
        client = openai.OpenAI(base_url=up.base_url, api_key="x")
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.support.quick_server import QuickServer

__all__ = ["RecordedRequest", "Script", "ScriptedUpstream"]

INVALID_JSON_REPLY = '{"label": "bill'
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_EMBEDDING_DIMENSIONS = 16
_ARGUMENT_FRAGMENT = 8  # characters of tool-call arguments per streamed chunk


@dataclass
class Script:
    """How the server answers a chat, text completions, Responses or embeddings request.

    Example: `Script(reply="one two", chunk_delay_s=0.1)` streams two words a tenth of a second apart.
    """

    reply: str | None = None  # None: echo the last user message's text
    status: int = 200  # non-200: an OpenAI-shaped error body with this status
    body: bytes | None = None  # sent verbatim (with `status`), overriding everything else
    latency_s: float = 0.0  # before the response headers
    chunk_delay_s: float = 0.0  # between SSE events
    invalid_json: bool = False  # the content is truncated JSON, as a model cut off mid-object writes
    tool_call: dict[str, str] | None = None  # {"name", "arguments"}: answer with this tool call
    malformed_tool_call: bool = False  # a tool call with broken arguments (and, alone, an undeclared name)
    cut_after_chunks: int | None = None  # stream: drop the connection after N events; else before the body
    usage: bool = True  # non-stream and Responses: always; chat/completions stream: with stream_options.include_usage
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers


@dataclass
class RecordedRequest:
    """One request as it arrived; `headers` have lower-case names."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""  # the raw query string (Azure's api-version)

    def json(self) -> Any:
        return orjson.loads(self.body)


class _ConnectionCut(Exception):
    """Raised inside a started response: uvicorn then closes the socket without ending the body."""


class _BadRequest(Exception):
    """A request the server refuses with 400, as OpenAI and vLLM do."""

    def __init__(self, message: str, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.error_type = error_type


class _QuietCuts(logging.Filter):
    """Drops uvicorn's traceback for a scripted cut: the cut is the behaviour under test, not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_cut(record.exc_info[1]))


def _is_cut(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, _ConnectionCut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_cut(inner) for inner in exc.exceptions)
    return _is_cut(exc.__cause__ or exc.__context__)


class _HeadersThenDrop(Response):
    """Sends the status and headers (with the full Content-Length), then drops the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        raise _ConnectionCut


class ScriptedUpstream:
    """A real OpenAI-protocol server on 127.0.0.1, scripted by the test that owns it.

    Example:

        with ScriptedUpstream() as up:
            up.script(tool_call={"name": "get_weather", "arguments": '{"city": "Oslo"}'})
            ...
            assert up.requests[-1].json()["model"] == "gpt-4.1"
    """

    def __init__(self, models: Sequence[str] = ("scripted-base",), *, port: int = 0,
                 responder: Callable[[dict[str, Any]], Script | None] | None = None) -> None:
        self.models = list(models)  # base models listed by /v1/models (parents of LoRA adapters)
        # Answers a chat request from its body (a teacher that knows every call's reply); None: the queue, then
        # the defaults. Called on the server thread: it must only read what the test built before starting.
        self.responder = responder
        self.requests: list[RecordedRequest] = []
        self.sent: list[bytes] = []
        self.adapters: set[str] = set()
        self.missing_paths: set[str] = set()  # lora_paths that hold no adapter: loading them answers 404, as vLLM
        # vLLM's /health status and /metrics gauges, as a test sets them; `kv_metric` is the gauge's name
        # (`vllm:gpu_cache_usage_perc` before vLLM 0.10).
        self.health_status = 200
        self.waiting = 0
        self.running = 0
        self.kv_cache = 0.0
        self.kv_metric = "vllm:kv_cache_usage_perc"
        self.open_streams = 0  # SSE responses under way; a client that leaves must bring it back down
        self.base_url = ""
        self.port = port  # 0: a free one; a fixed port lets a test restart a server where clients expect it
        self._adapter_paths: dict[str, str] = {}
        self._defaults: dict[str | None, Script] = {None: Script()}
        self._queue: deque[Script] = deque()
        self._lock = threading.Lock()  # the test thread scripts while the server thread reads
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- scripting (test thread) --

    def script(self, script: Script | None = None, *, model: str | None = None, **fields: Any) -> None:
        """Set the default behaviour, for every request or only those whose body names `model`."""
        chosen = replace(script or Script(), **fields)
        with self._lock:
            self._defaults[model] = chosen

    def enqueue(self, *scripts: Script) -> None:
        """One-shot behaviours for the next scripted requests (any endpoint), in order, before the default."""
        with self._lock:
            self._queue.extend(scripts)

    def _next_script(self, model: object, payload: dict[str, Any] | None = None) -> Script:
        if self.responder is not None and payload is not None and (answer := self.responder(payload)) is not None:
            return answer
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if isinstance(model, str) and model in self._defaults:
                return self._defaults[model]
            return self._defaults[None]

    # -- lifecycle --

    def start(self) -> ScriptedUpstream:
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=1)
        error_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _QuietCuts) for f in error_log.filters):
            error_log.addFilter(_QuietCuts())
        self._server = QuickServer(config)
        self._thread = threading.Thread(target=self._server.run, name="scripted-upstream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the scripted upstream did not start")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():  # a stream that never ends: stop waiting for it
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ScriptedUpstream:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- HTTP (server thread) --

    def _app(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self._endpoint(self._chat), methods=["POST"]),
            Route("/openai/deployments/{deployment}/chat/completions", self._endpoint(self._chat), methods=["POST"]),
            Route("/v1/completions", self._endpoint(self._completions), methods=["POST"]),
            Route("/v1/responses", self._endpoint(self._responses), methods=["POST"]),
            Route("/v1/embeddings", self._endpoint(self._embeddings), methods=["POST"]),
            Route("/v1/models", self._endpoint(self._models), methods=["GET"]),
            Route("/v1/load_lora_adapter", self._endpoint(self._load_adapter), methods=["POST"]),
            Route("/v1/unload_lora_adapter", self._endpoint(self._unload_adapter), methods=["POST"]),
            Route("/health", self._endpoint(self._health), methods=["GET"]),
            Route("/metrics", self._endpoint(self._metrics), methods=["GET"]),
            Route("/{path:path}", self._endpoint(self._not_found), methods=_ALL_METHODS),
        ]
        return Starlette(routes=routes)

    def _endpoint(self, handler: Callable[[bytes], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Record the request before anything else, so a test sees it even when the reply fails."""

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            self.requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers.items()), body,
                                                 request.url.query))
            try:
                return await handler(body)
            except _BadRequest as exc:
                return self._respond(_error_body(str(exc), exc.error_type), 400)

        return endpoint

    def _respond(self, content: bytes, status: int = 200, headers: dict[str, str] | None = None, *,
                 media_type: str = "application/json", drop: bool = False) -> Response:
        self.sent.append(b"" if drop else content)
        kind = _HeadersThenDrop if drop else Response
        return kind(content, status_code=status, headers=headers, media_type=media_type)

    async def _scripted(self, script: Script, build: Callable[[], bytes]) -> Response:
        if script.latency_s:
            await asyncio.sleep(script.latency_s)
        if script.body is not None:
            content = script.body
        elif script.status != 200:
            content = _status_error(script.status)
        else:
            content = build()
        return self._respond(content, script.status, script.headers, drop=script.cut_after_chunks is not None)

    async def _chat(self, body: bytes) -> Response:
        payload = _parse(body)
        script = self._next_script(payload.get("model"), payload)
        completion = _Completion(payload, script)
        return await self._answer(payload, script, completion.body, completion.events)

    async def _completions(self, body: bytes) -> Response:
        payload = _parse(body)
        script = self._next_script(payload.get("model"))
        completion = _TextCompletion(payload, script)
        return await self._answer(payload, script, completion.body, completion.events)

    async def _responses(self, body: bytes) -> Response:
        payload = _parse(body)
        script = self._next_script(payload.get("model"))
        response = _ResponsesReply(payload, script)
        # The Responses API ends its stream with `response.completed`; only the older endpoints send [DONE].
        return await self._answer(payload, script, response.body, response.events, ends_with_done=False)

    async def _answer(self, payload: dict[str, Any], script: Script, body: Callable[[], bytes],
                      events: Callable[[], list[bytes]], *, ends_with_done: bool = True) -> Response:
        """One body, or SSE events when the request streams and the script lets it succeed."""
        if not payload.get("stream") or script.body is not None or script.status != 200:
            return await self._scripted(script, body)
        if script.latency_s:
            await asyncio.sleep(script.latency_s)
        self.sent.append(b"")
        stream = self._stream(events(), script, len(self.sent) - 1, ends_with_done)
        return StreamingResponse(stream, headers=script.headers, media_type="text/event-stream")

    async def _stream(self, events: list[bytes], script: Script, slot: int,
                      ends_with_done: bool) -> AsyncIterator[bytes]:
        """Write the events, updating `sent` before each leaves, so a client never sees more than it.

        A cut never lets the stream end properly: it drops the connection before [DONE], or after the last event
        of a stream that has none."""
        self.open_streams += 1
        written = bytearray()
        closing = [b"data: [DONE]\n\n"] if ends_with_done else []
        try:
            for number, event in enumerate([*events, *closing]):
                if script.cut_after_chunks is not None and (number >= script.cut_after_chunks or number == len(events)):
                    raise _ConnectionCut
                if number and script.chunk_delay_s:
                    await asyncio.sleep(script.chunk_delay_s)
                written += event
                self.sent[slot] = bytes(written)
                yield event
            if script.cut_after_chunks is not None:
                raise _ConnectionCut
        finally:
            self.open_streams -= 1

    async def _embeddings(self, body: bytes) -> Response:
        payload = _parse(body)
        script = self._next_script(payload.get("model"))
        return await self._scripted(script, lambda: _embeddings_body(payload))

    async def _models(self, body: bytes) -> Response:
        created = int(time.time())
        cards = [{"id": m, "object": "model", "created": created, "owned_by": "scripted", "root": m, "parent": None}
                 for m in self.models]
        cards += [{"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": path,
                   "parent": self.models[0] if self.models else None} for name, path in self._adapter_paths.items()]
        return self._respond(orjson.dumps({"object": "list", "data": cards}))

    async def _load_adapter(self, body: bytes) -> Response:
        """vLLM's runtime LoRA loading: plain-text success, 400 on a missing field or a duplicate."""
        payload = _parse(body)
        name, path = payload.get("lora_name"), payload.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
            raise _BadRequest("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.adapters:
            raise _BadRequest(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if path in self.missing_paths:
            return self._respond(_error_body(f"No adapter found for {path}", "NotFoundError"), 404)
        self.adapters.add(name)
        self._adapter_paths[name] = path
        return self._respond(f"Success: LoRA adapter '{name}' added successfully.".encode(), media_type="text/plain")

    async def _unload_adapter(self, body: bytes) -> Response:
        payload = _parse(body)
        name = payload.get("lora_name")
        if not isinstance(name, str) or not name:
            raise _BadRequest("'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        if name not in self.adapters:
            raise _BadRequest(f"The lora adapter '{name}' cannot be found.", "InvalidUserInput")
        self.adapters.discard(name)
        del self._adapter_paths[name]
        return self._respond(f"Success: LoRA adapter '{name}' removed successfully.".encode(), media_type="text/plain")

    async def _health(self, body: bytes) -> Response:
        return self._respond(b"", self.health_status, media_type="text/plain")

    async def _metrics(self, body: bytes) -> Response:
        """vLLM's Prometheus page, reduced to its load gauges (one engine) and one histogram around them."""
        labels = f'{{engine="0",model_name="{self.models[0] if self.models else "scripted-base"}"}}'
        gauges = [("vllm:num_requests_running", "Number of requests in model execution batches.", self.running),
                  ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", self.waiting),
                  (self.kv_metric, "KV-cache usage. 1 means 100 percent usage.", self.kv_cache)]
        lines = ["# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
                 "# TYPE vllm:time_to_first_token_seconds histogram",
                 f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf"}} {len(self.requests)}.0']
        for name, help_text, value in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{labels} {float(value)}"]
        return self._respond(("\n".join(lines) + "\n").encode(), media_type="text/plain; version=0.0.4")

    async def _not_found(self, body: bytes) -> Response:
        return self._respond(_error_body("Not Found", "invalid_request_error", "unknown_url"), 404)


class _Completion:
    """What one chat request is answered with, as a `chat.completion` body or as SSE events."""

    def __init__(self, payload: dict[str, Any], script: Script) -> None:
        self.payload = payload
        self.script = script
        self.id = "chatcmpl-" + secrets.token_hex(14)
        self.created = int(time.time())
        self.model = _model_of(payload)
        self.n = _choices_per_prompt(payload)
        self.tool_call = _tool_call(script)
        self.content = None if self.tool_call else _reply_text(script, _last_user_text(payload.get("messages")))
        self.finish_reason = "tool_calls" if self.tool_call else "stop"

    def body(self) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None, "annotations": []}
        if self.tool_call:
            message["tool_calls"] = [self.tool_call]
        choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
                   for i in range(self.n)]
        completion = {**self._envelope("chat.completion"), "choices": choices}
        if self.script.usage:
            completion["usage"] = self._usage()
        return orjson.dumps(completion)

    def events(self) -> list[bytes]:
        """Every SSE event but the closing `[DONE]`: role, content pieces, finish, then usage."""
        deltas = [self._first_delta(), *self._piece_deltas()]
        chunks = [self._chunk([(i, delta, None) for i in range(self.n)]) for delta in deltas]
        chunks.append(self._chunk([(i, {}, self.finish_reason) for i in range(self.n)]))
        if _wants_stream_usage(self.payload, self.script):
            chunks.append({**self._envelope("chat.completion.chunk"), "choices": [], "usage": self._usage()})
        return [_data_event(chunk) for chunk in chunks]

    def _first_delta(self) -> dict[str, Any]:
        if not self.tool_call:
            return {"role": "assistant", "content": "", "refusal": None}
        function = {"name": self.tool_call["function"]["name"], "arguments": ""}
        call = {"index": 0, "id": self.tool_call["id"], "type": "function", "function": function}
        return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}

    def _piece_deltas(self) -> list[dict[str, Any]]:
        if not self.tool_call:
            return [{"content": word} for word in _words(self.content or "")]
        arguments: str = self.tool_call["function"]["arguments"]
        pieces = [arguments[i:i + _ARGUMENT_FRAGMENT] for i in range(0, len(arguments), _ARGUMENT_FRAGMENT)]
        return [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces]

    def _chunk(self, choices: list[tuple[int, dict[str, Any], str | None]]) -> dict[str, Any]:
        chunk = {**self._envelope("chat.completion.chunk"),
                 "choices": [{"index": i, "delta": d, "logprobs": None, "finish_reason": f} for i, d, f in choices]}
        if _wants_stream_usage(self.payload, self.script):
            chunk["usage"] = None
        return chunk

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "service_tier": "default", "system_fingerprint": "fp_scripted"}

    def _usage(self) -> dict[str, Any]:
        """Rough counts, with the few tokens per message and per tool call that chat formats add."""
        messages = self.payload.get("messages")
        listed = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        prompt = 3 + sum(3 + _count_tokens(_text_of(m)) for m in listed)
        if self.tool_call:
            function = self.tool_call["function"]
            one = 7 + _count_tokens(function["name"] + function["arguments"])
        else:
            one = _count_tokens(self.content or "")
        return {"prompt_tokens": prompt, "completion_tokens": one * self.n, "total_tokens": prompt + one * self.n}


class _TextCompletion:
    """What one legacy `/v1/completions` request is answered with: a `text_completion` body or its SSE chunks.

    With no scripted reply each choice echoes its prompt (a token-array prompt echoes nothing); tool calls do not
    exist here. `n` choices per prompt, indexed prompt by prompt as OpenAI does."""

    def __init__(self, payload: dict[str, Any], script: Script) -> None:
        self.payload = payload
        self.script = script
        self.id = "cmpl-" + secrets.token_hex(14)
        self.created = int(time.time())
        self.model = _model_of(payload)
        prompts = _batch(payload, "prompt")
        n = _choices_per_prompt(payload)
        self.texts = [_reply_text(script, p if isinstance(p, str) else "") for p in prompts for _ in range(n)]
        self.prompt_tokens = sum(_tokens_of(p) for p in prompts)

    def body(self) -> bytes:
        choices = [{"text": text, "index": i, "logprobs": None, "finish_reason": "stop"}
                   for i, text in enumerate(self.texts)]
        completion = {**self._envelope(), "choices": choices}
        if self.script.usage:
            completion["usage"] = self._usage()
        return orjson.dumps(completion)

    def events(self) -> list[bytes]:
        """Every SSE event but the closing `[DONE]`: each choice's words, each choice's finish, then usage."""
        chunks = [self._chunk(i, word, None) for i, text in enumerate(self.texts) for word in _words(text)]
        chunks += [self._chunk(i, "", "stop") for i in range(len(self.texts))]
        if _wants_stream_usage(self.payload, self.script):
            chunks.append({**self._envelope(), "choices": [], "usage": self._usage()})
        return [_data_event(chunk) for chunk in chunks]

    def _chunk(self, index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        chunk = {**self._envelope(),
                 "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]}
        if _wants_stream_usage(self.payload, self.script):
            chunk["usage"] = None
        return chunk

    def _envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "system_fingerprint": "fp_scripted"}

    def _usage(self) -> dict[str, Any]:
        completion = sum(_count_tokens(text) for text in self.texts)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


class _ResponsesReply:
    """What one `/v1/responses` request is answered with: a `response` object with one output item (an assistant
    message, or a `function_call` when the script names a tool call), or the SSE events that build it.

    The stream is OpenAI's sequence, each event named on an `event:` line and numbered by `sequence_number`:
    response.created, response.in_progress, response.output_item.added, then for a message
    response.content_part.added, response.output_text.delta per word, response.output_text.done,
    response.content_part.done (for a call: response.function_call_arguments.delta per fragment and .done),
    response.output_item.done and response.completed; no [DONE]. With no scripted reply the message echoes the
    last user item of `input` (or `input` itself when it is a string)."""

    def __init__(self, payload: dict[str, Any], script: Script) -> None:
        self.payload = payload
        self.script = script
        self.id = "resp_" + secrets.token_hex(24)
        self.created = int(time.time())
        self.model = _model_of(payload)
        call = _tool_call(script)
        if call:
            function = call["function"]
            self.item: dict[str, Any] = {"type": "function_call", "id": "fc_" + secrets.token_hex(24),
                                         "call_id": call["id"], "name": function["name"],
                                         "arguments": function["arguments"], "status": "completed"}
        else:
            raw = payload.get("input")
            text = _reply_text(script, raw if isinstance(raw, str) else _last_user_text(raw))
            self.item = {"type": "message", "id": "msg_" + secrets.token_hex(24), "status": "completed",
                         "role": "assistant", "content": [_output_text(text)]}

    def body(self) -> bytes:
        return orjson.dumps(self._response("completed"))

    def events(self) -> list[bytes]:
        empty: dict[str, Any] = {"content": []} if self.item["type"] == "message" else {"arguments": ""}
        started = {**self.item, "status": "in_progress", **empty}
        steps: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": self._response("in_progress")}),
            ("response.in_progress", {"response": self._response("in_progress")}),
            ("response.output_item.added", {"output_index": 0, "item": started}),
            *(self._text_steps() if self.item["type"] == "message" else self._argument_steps()),
            ("response.output_item.done", {"output_index": 0, "item": self.item}),
            ("response.completed", {"response": self._response("completed")}),
        ]
        return [b"event: " + kind.encode() + b"\n" + _data_event({"type": kind, "sequence_number": number, **fields})
                for number, (kind, fields) in enumerate(steps)]

    def _text_steps(self) -> list[tuple[str, dict[str, Any]]]:
        where = {"item_id": self.item["id"], "output_index": 0, "content_index": 0}
        part = self.item["content"][0]
        deltas = [{**where, "delta": word, "logprobs": []} for word in _words(part["text"])]
        return [("response.content_part.added", {**where, "part": _output_text("")}),
                *[("response.output_text.delta", delta) for delta in deltas],
                ("response.output_text.done", {**where, "text": part["text"], "logprobs": []}),
                ("response.content_part.done", {**where, "part": part})]

    def _argument_steps(self) -> list[tuple[str, dict[str, Any]]]:
        where = {"item_id": self.item["id"], "output_index": 0}
        arguments: str = self.item["arguments"]
        pieces = [arguments[i:i + _ARGUMENT_FRAGMENT] for i in range(0, len(arguments), _ARGUMENT_FRAGMENT)]
        return [*[("response.function_call_arguments.delta", {**where, "delta": piece}) for piece in pieces],
                ("response.function_call_arguments.done", {**where, "name": self.item["name"], "arguments": arguments})]

    def _response(self, status: str) -> dict[str, Any]:
        """The `response` object; in progress it has no output and no usage yet. Request settings are echoed."""
        is_done = status == "completed"
        get = self.payload.get
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "completed_at": self.created if is_done else None, "background": False, "error": None,
                "incomplete_details": None, "instructions": get("instructions"),
                "max_output_tokens": get("max_output_tokens"), "model": self.model,
                "output": [self.item] if is_done else [], "parallel_tool_calls": get("parallel_tool_calls", True),
                "previous_response_id": get("previous_response_id"),
                "reasoning": get("reasoning") or {"effort": None, "summary": None}, "service_tier": "default",
                "store": get("store", True), "temperature": get("temperature", 1.0),
                "text": get("text") or {"format": {"type": "text"}}, "tool_choice": get("tool_choice", "auto"),
                "tools": get("tools") or [], "top_p": get("top_p", 1.0), "truncation": get("truncation", "disabled"),
                "usage": self._usage() if is_done and self.script.usage else None, "user": None,
                "metadata": get("metadata") or {}}

    def _usage(self) -> dict[str, Any]:
        """Rough counts: the instructions and every input item (messages, tool results, earlier calls)."""
        raw = self.payload.get("input")
        items = [{"content": raw}] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        items = [item for item in items if isinstance(item, dict)]
        instructions = self.payload.get("instructions")
        prompt = 3 + _count_tokens(instructions if isinstance(instructions, str) else "")
        prompt += sum(3 + _count_tokens(_text_of(i) or str(i.get("output") or i.get("arguments") or "")) for i in items)
        if self.item["type"] == "function_call":
            output = 7 + _count_tokens(self.item["name"] + self.item["arguments"])
        else:
            output = _count_tokens(self.item["content"][0]["text"])
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + output}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(payload, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return payload


def _error_body(message: str, error_type: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})


def _status_error(status: int) -> bytes:
    """An error body shaped like OpenAI's for that status."""
    error_type, code = {401: ("invalid_request_error", "invalid_api_key"),
                        404: ("invalid_request_error", "model_not_found"),
                        429: ("requests", "rate_limit_exceeded")}.get(status, ("invalid_request_error", None))
    if status >= 500:
        error_type, code = "server_error", None
    return _error_body(f"scripted upstream error (status {status})", error_type, code)


def _reply_text(script: Script, echoed: str) -> str:
    """The scripted reply, or `echoed` (the request's last user text, or its prompt) when there is none."""
    if script.invalid_json:
        return INVALID_JSON_REPLY
    return script.reply if script.reply is not None else echoed


def _last_user_text(messages: object) -> str:
    """The text of the last `role: user` entry of chat `messages` or Responses `input` items; "" without one."""
    if not isinstance(messages, list):
        return ""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return _text_of(users[-1]) if users else ""


def _model_of(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) else "scripted-base"


def _choices_per_prompt(payload: dict[str, Any]) -> int:
    n = payload.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _wants_stream_usage(payload: dict[str, Any], script: Script) -> bool:
    options = payload.get("stream_options")
    return script.usage and isinstance(options, dict) and options.get("include_usage") is True


def _words(text: str) -> list[str]:
    """Streamed pieces: each word with the whitespace before it."""
    return re.findall(r"\s*\S+|\s+$", text)


def _data_event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _batch(payload: dict[str, Any], name: str) -> list[Any]:
    """A field that takes one string or token array, or an array of them, always as a list (`input`, `prompt`)."""
    raw = payload.get(name)
    if isinstance(raw, str) or (isinstance(raw, list) and _is_batch_item(raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(_is_batch_item(item) for item in raw):
        raise _BadRequest(f"'{name}' must be a string, an array of strings, or of token arrays.")
    return raw


def _is_batch_item(item: Any) -> bool:
    """A string, or a non-empty array of token ids (`bool` is an `int` to Python, not to OpenAI)."""
    if isinstance(item, str):
        return True
    return isinstance(item, list) and bool(item) and all(isinstance(t, int) and not isinstance(t, bool) for t in item)


def _tokens_of(item: Any) -> int:
    """A batch item's token count: its words, or the length of a token array."""
    return _count_tokens(item) if isinstance(item, str) else len(item)


def _text_of(message: dict[str, Any]) -> str:
    """A message's text: the string content, or its text parts joined (images and audio carry none)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tool_call(script: Script) -> dict[str, Any] | None:
    if not script.tool_call and not script.malformed_tool_call:
        return None
    name = (script.tool_call or {}).get("name", "undeclared_tool")
    arguments = (script.tool_call or {}).get("arguments", '{"query": "x"}')
    if script.malformed_tool_call:
        arguments = arguments[: max(1, len(arguments) // 2)] if len(arguments) > 1 else '{"query": '
    call_id = "call_" + secrets.token_hex(12)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _count_tokens(text: str) -> int:
    """Roughly a tokenizer's count: words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


_MAX_DIMENSIONS = 3072  # text-embedding-3-large's; OpenAI refuses more


def _embeddings_body(payload: dict[str, Any]) -> bytes:
    """Deterministic unit vectors from a hash of each input, as floats or base64 float32 (the SDK's default)."""
    raw = _batch(payload, "input")
    dimensions = payload.get("dimensions", _EMBEDDING_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 0 < dimensions <= _MAX_DIMENSIONS:
        raise _BadRequest(f"'dimensions' must be an integer from 1 to {_MAX_DIMENSIONS}.")
    size = dimensions
    as_base64 = payload.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(raw):
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        vector = _vector(text, size)
        encoded: Any = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(_tokens_of(item) for item in raw)
    model = payload.get("model", "scripted-embedding")
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _vector(text: str, size: int) -> list[float]:
    digest = b""
    counter = 0
    while len(digest) < size * 4:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [int.from_bytes(digest[i * 4:i * 4 + 4], "little") / 2**31 - 1.0 for i in range(size)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]
