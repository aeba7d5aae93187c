"""A scripted OpenAI-protocol server: the stand-in for frontier APIs and vLLM in tests.

The gateway must be tested against real HTTP (keep-alive, chunked SSE, connections that drop), so
this is a real uvicorn server on a free loopback port, run in a thread. A test scripts how it
behaves (fixed or echoed replies, latency, error statuses, invalid JSON, tool calls, a stream cut
after N chunks) and then reads back what it received (`requests`) and the exact bytes it sent
(`sent`).

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
    """How the server answers a chat or embeddings request.

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
    usage: bool = True  # non-stream: always; stream: only with stream_options.include_usage
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
        """One-shot behaviours for the next chat/embeddings requests, in order, before the default."""
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
        if not payload.get("stream") or script.body is not None or script.status != 200:
            return await self._scripted(script, completion.body)
        if script.latency_s:
            await asyncio.sleep(script.latency_s)
        self.sent.append(b"")
        events = self._stream(completion.events(), script, len(self.sent) - 1)
        return StreamingResponse(events, headers=script.headers, media_type="text/event-stream")

    async def _stream(self, events: list[bytes], script: Script, slot: int) -> AsyncIterator[bytes]:
        """Write the events, updating `sent` before each leaves, so a client never sees more than it."""
        self.open_streams += 1
        written = bytearray()
        try:
            for number, event in enumerate([*events, b"data: [DONE]\n\n"]):
                if script.cut_after_chunks is not None and (number >= script.cut_after_chunks or number == len(events)):
                    raise _ConnectionCut
                if number and script.chunk_delay_s:
                    await asyncio.sleep(script.chunk_delay_s)
                written += event
                self.sent[slot] = bytes(written)
                yield event
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
        self.model = payload.get("model") if isinstance(payload.get("model"), str) else "scripted-base"
        n = payload.get("n")
        self.n = n if isinstance(n, int) and n > 0 else 1
        self.tool_call = _tool_call(script)
        self.content = None if self.tool_call else _reply_text(payload, script)
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
        if self._wants_stream_usage():
            chunks.append({**self._envelope("chat.completion.chunk"), "choices": [], "usage": self._usage()})
        return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]

    def _first_delta(self) -> dict[str, Any]:
        if not self.tool_call:
            return {"role": "assistant", "content": "", "refusal": None}
        function = {"name": self.tool_call["function"]["name"], "arguments": ""}
        call = {"index": 0, "id": self.tool_call["id"], "type": "function", "function": function}
        return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}

    def _piece_deltas(self) -> list[dict[str, Any]]:
        if not self.tool_call:
            return [{"content": word} for word in re.findall(r"\s*\S+|\s+$", self.content or "")]
        arguments: str = self.tool_call["function"]["arguments"]
        pieces = [arguments[i:i + _ARGUMENT_FRAGMENT] for i in range(0, len(arguments), _ARGUMENT_FRAGMENT)]
        return [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces]

    def _chunk(self, choices: list[tuple[int, dict[str, Any], str | None]]) -> dict[str, Any]:
        chunk = {**self._envelope("chat.completion.chunk"),
                 "choices": [{"index": i, "delta": d, "logprobs": None, "finish_reason": f} for i, d, f in choices]}
        if self._wants_stream_usage():
            chunk["usage"] = None
        return chunk

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "service_tier": "default", "system_fingerprint": "fp_scripted"}

    def _wants_stream_usage(self) -> bool:
        options = self.payload.get("stream_options")
        return self.script.usage and isinstance(options, dict) and options.get("include_usage") is True

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


def _reply_text(payload: dict[str, Any], script: Script) -> str:
    if script.invalid_json:
        return INVALID_JSON_REPLY
    if script.reply is not None:
        return script.reply
    messages = payload.get("messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if isinstance(messages, list) else []
    return _text_of(users[-1]) if users else ""


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


def _embeddings_body(payload: dict[str, Any]) -> bytes:
    """Deterministic unit vectors from a hash of each input, as floats or base64 float32 (the SDK's default)."""
    raw = payload.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _BadRequest("'input' must be a string or a non-empty array.")
    dimensions = payload.get("dimensions")
    size = dimensions if isinstance(dimensions, int) and dimensions > 0 else _EMBEDDING_DIMENSIONS
    as_base64 = payload.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(raw):
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        vector = _vector(text, size)
        encoded: Any = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(_count_tokens(item) if isinstance(item, str) else len(item) for item in raw)
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
