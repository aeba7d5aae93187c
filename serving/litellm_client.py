"""The `litellm` upstream kind: chat completions through `litellm.acompletion`, for the long tail of providers.

litellm is an optional extra (`pip install 'minigate[litellm]'`) and costs seconds to import, so it is
imported by `LitellmClient.open`, in a worker thread, and only when a config names the kind: this
module imports nothing of it at load time, and no other kind's path goes near it.

To the gateway this is one more upstream: its replies read as an OpenAI server's bytes (a
`chat.completion` body, or `chat.completion.chunk` SSE events ending with `data: [DONE]`), wrapped in
an `httpx.Response` whose body is produced from litellm's objects, so relaying, deadlines and usage
accounting are the same code as for every other kind. litellm's errors are translated here: an error
a provider answered (4xx, 5xx) becomes a reply with that status and OpenAI's error body, as an OpenAI
upstream's would be; a timeout or an unreachable provider raises, as for any other upstream.

Only the OpenAI parameters of a request are handed to litellm: its own keyword arguments (`api_base`,
`api_key`, `mock_response`, ...) would let a client redirect the call and the upstream's key with it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import ModuleType
from typing import Any

import anyio
import httpx
import orjson

from minigate.errors import InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from minigate.serving.replicas import Attempt
from minigate.serving.settings import LitellmUpstream
from minigate.serving.upstream import Operation, UpstreamReply, not_served

__all__ = ["LitellmClient"]

# The request fields of OpenAI's chat completions that litellm maps for its providers; others are dropped.
_OPENAI_PARAMS = frozenset({
    "audio", "frequency_penalty", "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "reasoning_effort", "response_format", "seed",
    "service_tier", "stop", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "web_search_options",
})
_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class LitellmClient:
    """Calls one litellm upstream; `open` imports litellm (off the event loop) and builds the client.

    >>> client = await LitellmClient.open("bedrock", LitellmUpstream(kind="litellm", provider="bedrock"))  # doctest: +SKIP
    >>> reply = await client.chat(b'{"model": "anthropic.claude-3-haiku", "messages": [...]}')  # doctest: +SKIP
    """

    def __init__(self, name: str, settings: LitellmUpstream, litellm: ModuleType) -> None:
        self.name = name
        self.base_url = settings.base_url or ""
        self.native_responses = False
        self._settings = settings
        self._litellm = litellm
        self._errors = _ErrorKinds(litellm)
        timeouts = settings.timeouts
        self._fixed: dict[str, Any] = {
            **settings.params,
            "timeout": httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s),
            "max_retries": 0,  # retries and fallbacks are the gateway's, by its rules (none that could bill twice)
            # litellm 1.106.2 hands any request with tools to its proxy's MCP gateway first, which imports the
            # `mcp` package (not a dependency) and would run a client's `mcp` tools from inside the gateway.
            "_skip_mcp_handler": True,
        }
        if settings.api_key is not None:
            self._fixed["api_key"] = settings.api_key.get_secret_value()
        if settings.base_url is not None:
            self._fixed["api_base"] = settings.base_url
        self._headers = dict(settings.headers)

    @classmethod
    async def open(cls, name: str, settings: LitellmUpstream) -> LitellmClient:
        # Unless told otherwise, litellm fetches its price map from GitHub when imported (three tries, seconds
        # apart, on a machine offline); the gateway prices calls itself, so litellm's bundled copy will do.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        litellm = await anyio.to_thread.run_sync(importlib.import_module, "litellm")
        setattr(litellm, "suppress_debug_info", True)  # else each error prints litellm's "Give Feedback" banner
        return cls(name, settings, litellm)

    async def chat(self, body: bytes, headers: Mapping[str, str] | None = None) -> UpstreamReply:
        """Call the provider; returns once litellm has the reply (or, for a stream, its first response)."""
        return await self.send("chat", body, headers)

    async def send(self, operation: Operation, body: bytes,
                   headers: Mapping[str, str] | None = None) -> UpstreamReply:
        if operation != "chat":
            raise not_served(self.name, "litellm", operation)
        arguments = self._arguments(body, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.timeouts.total_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                result = await self._litellm.acompletion(**arguments)
        except Exception as exc:  # litellm raises its own classes and its providers' (openai's, httpx's)
            status, content = self._failure(exc)
            response = httpx.Response(status, headers=_JSON, content=content)
        else:
            status = 200
            if arguments["stream"]:
                response = httpx.Response(200, headers=_SSE, stream=_Events(result, self._errors))
            else:
                response = httpx.Response(200, headers=_JSON, content=_dump(result))
        attempt = Attempt(self.base_url, status, None, round(time.perf_counter() - started, 6))
        return UpstreamReply(status, list(response.headers.items()), response, self.name, deadline, attempts=[attempt])

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        """Not probed: asking a provider anything costs a call, and litellm knows no free health check."""
        return None

    async def aclose(self) -> None:
        """litellm keeps its HTTP clients in a module-level cache it closes itself."""

    def _arguments(self, body: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
        payload = orjson.loads(body)
        if not isinstance(payload, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        arguments = {key: value for key, value in payload.items() if key in _OPENAI_PARAMS}
        arguments.update(self._fixed)
        arguments["model"] = self._settings.route(str(payload.get("model")))
        arguments["messages"] = payload.get("messages")
        arguments["stream"] = payload.get("stream") is True
        if self._headers or headers:
            arguments["extra_headers"] = {**self._headers, **(headers or {})}
        return arguments

    def _failure(self, exc: Exception) -> tuple[int, bytes]:
        """A provider's answer as a status and OpenAI's error body; raises for no answer (timeout, unreachable)."""
        kind = self._errors.kind(exc)
        if kind == "timeout":
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer in time ({type(exc).__name__}); raise its "
                                  "timeouts or check it", upstream=self.name, kind="timeout") from exc
        if kind == "connect_error":
            raise UpstreamUnavailable(f"cannot reach upstream {self.name!r} through litellm: {exc}",
                                      upstream=self.name, kind="connect_error") from exc
        status = getattr(exc, "status_code", None)
        if not isinstance(status, int) or status < 400:
            raise UpstreamUnavailable(f"upstream {self.name!r} failed in litellm: {type(exc).__name__}: {exc}",
                                      upstream=self.name, kind="error") from exc
        error = {"message": str(getattr(exc, "message", None) or exc), "type": _error_type(status), "param": None,
                 "code": getattr(exc, "code", None) if isinstance(getattr(exc, "code", None), str) else None}
        return status, orjson.dumps({"error": error})


class _ErrorKinds:
    """Which exceptions mean "no answer", looked up once on the imported modules.

    litellm wraps a refused connection in an `InternalServerError` with status 500; what happened is
    further down the chain of causes (openai's `APIConnectionError`, httpx's `ConnectError`), so the
    whole chain is read.
    """

    def __init__(self, litellm: ModuleType) -> None:
        openai = importlib.import_module("openai")  # litellm's own dependency, imported with it
        self._timeouts: tuple[type[BaseException], ...] = (
            TimeoutError, httpx.TimeoutException, litellm.Timeout, openai.APITimeoutError)
        self._unreachable: tuple[type[BaseException], ...] = (
            ConnectionError, httpx.TransportError, litellm.APIConnectionError, openai.APIConnectionError)

    def kind(self, exc: BaseException) -> str | None:
        chain = list(_causes(exc))
        if any(isinstance(link, self._timeouts) for link in chain):
            return "timeout"
        if any(isinstance(link, self._unreachable) for link in chain):
            return "connect_error"
        return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


class _Events(httpx.AsyncByteStream):
    """litellm's stream as the SSE bytes an OpenAI server sends: one `data:` event per chunk, then `[DONE]`.

    Errors mid-stream surface as httpx's transport errors, which `UpstreamReply.chunks` reports as a cut
    stream (an SSE error event), as it does for every other kind.
    """

    def __init__(self, stream: Any, errors: _ErrorKinds) -> None:
        self._stream = stream
        self._errors = errors

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield b"data: " + _dump_chunk(chunk) + b"\n\n"
        except Exception as exc:
            if self._errors.kind(exc) == "timeout":
                raise httpx.ReadTimeout(f"litellm: {exc}") from exc
            raise httpx.RemoteProtocolError(f"litellm: {type(exc).__name__}: {exc}") from exc
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


def _dump(result: Any) -> bytes:
    """A litellm response (a pydantic model shaped as OpenAI's) as OpenAI's JSON, less litellm's own fields."""
    return orjson.dumps(_openai_shaped(result.model_dump(exclude_none=True)))


def _dump_chunk(chunk: Any) -> bytes:
    """As `_dump`; the usage litellm puts on a chunk with an empty choice goes out as OpenAI's usage-only chunk."""
    data = _openai_shaped(chunk.model_dump(exclude_none=True))
    choices = data.get("choices") or []
    if data.get("usage") and all(not c.get("delta") and c.get("finish_reason") is None for c in choices):
        data["choices"] = []
    return orjson.dumps(data)


def _openai_shaped(data: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data.get("usage"), dict):
        data["usage"].pop("cost", None)  # litellm's estimate; the gateway prices calls itself
    for choice in data.get("choices") or []:
        choice.pop("provider_specific_fields", None)
        for part in ("message", "delta"):
            if isinstance(choice.get(part), dict):
                choice[part].pop("provider_specific_fields", None)
    return data


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"
