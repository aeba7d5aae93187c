"""A scripted server speaking Anthropic's Messages API: the stand-in for api.anthropic.com in tests.

Like `ScriptedUpstream`, it is a real uvicorn server on a free loopback port, run in a thread. It
checks requests the way Anthropic does (API key, `anthropic-version`, required `max_tokens`, only
user/assistant turns, known block types, tool results answering the previous turn's tool uses,
unknown parameters refused) and answers as a test scripts it: text, tool uses, a stream with
delays or with events split across writes, an error status, an `error` event mid-stream, a stream
that ends before `message_stop`. `requests` holds what arrived, `sent` the bytes sent back.

Example:

    with ScriptedAnthropic() as up:
        up.script(text="Paris.")
        up.enqueue(AnthropicScript(status=529))  # the next request is refused as overloaded
        # upstream config: {kind: anthropic, base_url: up.base_url, api_key: up.api_key}
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.quick_server import QuickServer
from tests.support.upstream import RecordedRequest

__all__ = ["AnthropicScript", "ScriptedAnthropic"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                529: "overloaded_error"}
_PARAMETERS = frozenset({"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
                         "temperature", "top_p", "top_k", "tools", "tool_choice", "service_tier", "thinking"})
_BLOCK_TYPES = {"user": {"text", "image", "document", "tool_result"}, "assistant": {"text", "tool_use", "thinking"}}
_JSON_FRAGMENT = 8  # characters of tool input per input_json_delta


@dataclass
class AnthropicScript:
    """How the server answers one request.

    Example: `AnthropicScript(tool_uses=[{"name": "get_weather", "input": {"city": "Oslo"}}])`.
    """

    text: str | None = None  # None: echo the last user text, unless tool_uses are scripted
    tool_uses: list[dict[str, Any]] = field(default_factory=list)  # {"name", "input"}, after the text
    stop_reason: str | None = None  # default: tool_use with tool uses, else end_turn
    status: int = 200  # non-200: an Anthropic error body of the matching type
    body: bytes | None = None  # sent verbatim with `status`
    latency_s: float = 0.0  # before the response headers
    chunk_delay_s: float = 0.0  # between stream events
    split_events: bool = False  # stream: write each event in two parts, cut mid-JSON
    stream_error: str | None = None  # stream: an `error` event of this type, then the end of the body
    error_after_events: int = 4  # ... sent after this many events (4: the first content delta)
    end_after_events: int | None = None  # stream: end the body cleanly after N events (no message_stop)
    cache_read_tokens: int | None = None  # reported as usage.cache_read_input_tokens
    cache_creation_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ScriptedAnthropic:
    """A real Anthropic-protocol server on 127.0.0.1, scripted by the test that owns it."""

    def __init__(self, api_key: str = "sk-ant-test") -> None:
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.sent: list[bytes] = []
        self.base_url = ""
        self._default = AnthropicScript()
        self._queue: deque[AnthropicScript] = deque()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def script(self, script: AnthropicScript | None = None, **fields: Any) -> None:
        """Set the behaviour for every request without a queued one."""
        with self._lock:
            self._default = replace(script or AnthropicScript(), **fields)

    def enqueue(self, *scripts: AnthropicScript) -> None:
        """One-shot behaviours for the next requests, in order."""
        with self._lock:
            self._queue.extend(scripts)

    def last(self) -> dict[str, Any]:
        """The body of the last request, parsed."""
        body: dict[str, Any] = self.requests[-1].json()
        return body

    def _next_script(self) -> AnthropicScript:
        with self._lock:
            return self._queue.popleft() if self._queue else self._default

    # -- lifecycle --

    def start(self) -> ScriptedAnthropic:
        app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"]),
                                Route("/v1/models", self._models, methods=["GET"])])
        self._server = QuickServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                     lifespan="off", timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=self._server.run, name="scripted-anthropic", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the scripted Anthropic server did not start")
            time.sleep(0.005)
        self.base_url = f"http://127.0.0.1:{self._server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ScriptedAnthropic:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- HTTP (server thread) --

    async def _models(self, request: Request) -> Response:
        return Response(orjson.dumps({"data": [{"type": "model", "id": "claude-scripted"}], "has_more": False}),
                        media_type="application/json")

    async def _messages(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers.items()), body))
        script = self._next_script()
        if script.latency_s:
            await asyncio.sleep(script.latency_s)
        try:
            payload = self._check(request.headers.get("x-api-key"), request.headers.get("anthropic-version"), body)
        except _Refused as exc:
            return self._respond(_error(exc.status, str(exc)), exc.status, {})
        if script.body is not None or script.status != 200:
            content = script.body if script.body is not None else _error(script.status, "scripted failure")
            return self._respond(content, script.status, script.headers)
        message = _Message(payload, script)
        if not payload.get("stream"):
            return self._respond(orjson.dumps(message.body()), 200, script.headers)
        self.sent.append(b"")
        return StreamingResponse(self._stream(message.events(), script, len(self.sent) - 1),
                                 headers=script.headers, media_type="text/event-stream")

    def _respond(self, content: bytes, status: int, headers: dict[str, str]) -> Response:
        self.sent.append(content)
        return Response(content, status, headers=headers, media_type="application/json")

    async def _stream(self, events: list[bytes], script: AnthropicScript, slot: int) -> AsyncIterator[bytes]:
        written = bytearray()
        for number, event in enumerate(events):
            if script.end_after_events is not None and number >= script.end_after_events:
                return
            if number and script.chunk_delay_s:
                await asyncio.sleep(script.chunk_delay_s)
            parts = [event[: len(event) // 2], event[len(event) // 2:]] if script.split_events else [event]
            for part in parts:
                written += part
                self.sent[slot] = bytes(written)
                yield part
                if script.split_events:
                    await asyncio.sleep(0.005)  # lets the first half leave as its own TCP segment

    def _check(self, key: str | None, version: str | None, body: bytes) -> dict[str, Any]:
        """Refuse what Anthropic refuses, with its words, so a mistranslation fails the test that made it."""
        if key != self.api_key:
            raise _Refused(401, "invalid x-api-key")
        if not version:
            raise _Refused(400, "anthropic-version: header is required")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _Refused(400, f"There was an issue with your request body: {exc}") from exc
        for key_name in payload:
            if key_name not in _PARAMETERS:
                raise _Refused(400, f"{key_name}: Extra inputs are not permitted")
        if not isinstance(payload.get("model"), str) or not isinstance(payload.get("max_tokens"), int):
            raise _Refused(400, "model and max_tokens: Field required")
        _check_messages(payload.get("messages"))
        _check_tools(payload)
        return dict(payload)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _Refused(400, "messages: at least one message is required")
    pending: set[str] = set()  # tool_use ids the next user turn must answer
    for number, message in enumerate(messages):
        role = message.get("role")
        if role not in _BLOCK_TYPES:
            raise _Refused(400, f'messages.{number}.role: Input should be "user" or "assistant"')
        blocks = message["content"] if isinstance(message["content"], list) else [{"type": "text"}]
        kinds = [block.get("type") for block in blocks]
        if any(kind not in _BLOCK_TYPES[role] for kind in kinds):
            raise _Refused(400, f"messages.{number}.content: unexpected block type in a {role} turn: {kinds}")
        if any(block.get("type") == "text" and block.get("text") == "" for block in blocks):
            raise _Refused(400, f"messages.{number}: text content blocks must be non-empty")
        answered = {block["tool_use_id"] for block in blocks if block.get("type") == "tool_result"}
        first_other = next((i for i, kind in enumerate(kinds) if kind != "tool_result"), len(kinds))
        if "tool_result" in kinds[first_other:]:
            raise _Refused(400, f"messages.{number}: tool_result blocks must come first in the content")
        if role == "user" and pending - answered:
            raise _Refused(400, f"messages.{number}: tool_use ids {sorted(pending - answered)} have no tool_result")
        if answered - pending:
            unexpected = sorted(answered - pending)
            raise _Refused(400, f"messages.{number}: unexpected tool_use_id in tool_result: {unexpected}")
        pending = {block["id"] for block in blocks if block.get("type") == "tool_use"} if role == "assistant" else set()


def _check_tools(payload: dict[str, Any]) -> None:
    names = {tool["name"] for tool in payload.get("tools", [])}
    if any("input_schema" not in tool for tool in payload.get("tools", [])):
        raise _Refused(400, "tools.0.input_schema: Field required")
    choice = payload.get("tool_choice")
    if choice is not None and choice.get("type") == "tool" and choice.get("name") not in names:
        raise _Refused(400, f"tool_choice: tool {choice.get('name')!r} is not in tools")


class _Message:
    """The scripted answer to one request, as a message body or as stream events."""

    def __init__(self, payload: dict[str, Any], script: AnthropicScript) -> None:
        self.payload = payload
        self.script = script
        self.id = "msg_" + secrets.token_hex(12)
        self.uses = [{"type": "tool_use", "id": use.get("id", "toolu_" + secrets.token_hex(12)), "name": use["name"],
                      "input": use["input"]} for use in script.tool_uses]
        text = script.text if script.text is not None or self.uses else _last_user_text(payload)
        self.text = text or ""
        self.stop_reason = script.stop_reason or ("tool_use" if self.uses else "end_turn")

    def blocks(self) -> list[dict[str, Any]]:
        return ([{"type": "text", "text": self.text}] if self.text else []) + self.uses

    def usage(self) -> dict[str, Any]:
        counts: dict[str, Any] = {"input_tokens": _count(orjson.dumps(self.payload["messages"]).decode()),
                                  "output_tokens": _count(self.text) + sum(5 for _ in self.uses)}
        if self.script.cache_read_tokens is not None:
            counts["cache_read_input_tokens"] = self.script.cache_read_tokens
        if self.script.cache_creation_tokens is not None:
            counts["cache_creation_input_tokens"] = self.script.cache_creation_tokens
        return counts

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.payload["model"],
                "content": self.blocks(), "stop_reason": self.stop_reason, "stop_sequence": None,
                "usage": self.usage()}

    def events(self) -> list[bytes]:
        usage = self.usage()
        start = {**self.body(), "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        events = [_event("message_start", {"message": start})]
        for index, block in enumerate(self.blocks()):
            events += list(self._block_events(index, block))
            if index == 0:
                events.insert(2, _event("ping", {}))
        if self.script.stream_error:
            error = {"type": self.script.stream_error, "message": "scripted stream error"}
            return [*events[:self.script.error_after_events], _event("error", {"error": error})]
        delta = {"delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                 "usage": {"output_tokens": usage["output_tokens"]}}
        return [*events, _event("message_delta", delta), _event("message_stop", {})]

    @staticmethod
    def _block_events(index: int, block: dict[str, Any]) -> Iterator[bytes]:
        if block["type"] == "text":
            yield _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            for word in re.findall(r"\s*\S+|\s+$", block["text"]):
                yield _event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": word}})
        else:
            yield _event("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
            arguments = orjson.dumps(block["input"]).decode() if block["input"] else ""
            pieces = [""] + [arguments[i:i + _JSON_FRAGMENT] for i in range(0, len(arguments), _JSON_FRAGMENT)]
            for piece in pieces:
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield _event("content_block_delta", {"index": index, "delta": delta})
        yield _event("content_block_stop", {"index": index})


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def _error(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message},
                         "request_id": "req_" + secrets.token_hex(8)})


def _last_user_text(payload: dict[str, Any]) -> str:
    users = [m for m in payload["messages"] if m["role"] == "user"]
    content = users[-1]["content"] if users else ""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if block.get("type") == "text")


def _count(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))
