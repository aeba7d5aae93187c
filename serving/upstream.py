"""Calling one OpenAI-protocol upstream: a pooled client and the translation of transport failures.

One `httpx.AsyncClient` per upstream keeps connections alive across requests; creating a client per
request would pay a TCP (and TLS) handshake on every call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import quote

import httpx
import orjson

from minigate.errors import (
    InvalidRequest,
    ReplicasTimeout,
    ReplicasUnavailable,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStreamCut,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from minigate.serving.options import ClientOptions
from minigate.serving.replicas import Attempt, Replica, Replicas, backoff, retry_wait
from minigate.version import __version__

__all__ = ["AzureClient", "ChatUpstream", "Operation", "UnconfiguredClient", "UpstreamClient", "UpstreamReply",
           "not_served"]

# What an upstream is asked to do, and the path each goes to under an OpenAI-protocol base URL.
# `responses` is sent only to upstreams that serve it themselves (`native_responses`).
Operation = Literal["chat", "embeddings", "completions", "responses"]
_PATHS: dict[Operation, str] = {"chat": "chat/completions", "embeddings": "embeddings", "completions": "completions",
                                "responses": "responses"}

log = logging.getLogger("minigate.serving")

# Headers that describe one hop of the connection (RFC 9110 §7.6.1) or that we recompute for the client.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "content-length", "content-encoding", "date", "server"}
)


@dataclass
class UpstreamReply:
    """An upstream's answer with the body not yet read, so streams can be relayed as they arrive."""

    status: int
    headers: list[tuple[str, str]]
    response: httpx.Response
    upstream: str
    deadline: float  # loop time by which the whole reply must be in (the upstream's timeouts.total_s)
    attempts: list[Attempt] = field(default_factory=list, kw_only=True)  # every call behind it, retries included
    _body: bytes | None = field(default=None, init=False, repr=False)

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; more than `limit` bytes is a failure (502): a runaway upstream can't fill our memory."""
        if self._body is not None:
            return self._body
        try:
            async with asyncio.timeout_at(self.deadline):
                self._body = await self._read_up_to(limit)
                return self._body
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise UpstreamTimeout(f"upstream {self.upstream!r} timed out sending its reply", upstream=self.upstream, kind="timeout") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"upstream {self.upstream!r} broke off its reply: {exc}", upstream=self.upstream, kind="read_error") from exc
        finally:
            await self.response.aclose()

    async def _read_up_to(self, limit: int | None) -> bytes:
        declared = self.response.headers.get("content-length", "")
        if limit is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(limit)
        parts: list[bytes] = []
        size = 0
        async for chunk in self.response.aiter_bytes():
            size += len(chunk)
            if limit is not None and size > limit:
                raise self._too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self, limit: int) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"upstream {self.upstream!r} sent a reply larger than this gateway's limit of {limit} bytes "
            "(server.max_response_bytes); ask for less output or raise the limit",
            upstream=self.upstream, kind="too_large",
        )

    async def chunks(self, limit: int | None = None) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, decoded but otherwise untouched (SSE events are not re-framed); a stream
        past `limit` bytes is cut (UpstreamStreamCut, kind too_large)."""
        loop = asyncio.get_running_loop()
        size = 0
        try:
            async for chunk in self.response.aiter_bytes():
                size += len(chunk)
                if limit is not None and size > limit:
                    raise UpstreamStreamCut(self._too_large(limit).message, upstream=self.upstream, kind="too_large")
                yield chunk
                if loop.time() > self.deadline:
                    raise httpx.ReadTimeout("the upstream's timeouts.total_s passed mid-stream")
        except httpx.TransportError as exc:
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "stream_cut"
            raise UpstreamStreamCut(
                f"upstream {self.upstream!r} ended the stream early ({type(exc).__name__}); retry the request",
                upstream=self.upstream,
                kind=kind,
            ) from exc
        finally:
            await self.response.aclose()

    async def close(self) -> None:
        await self.response.aclose()


class ChatUpstream(Protocol):
    """What the gateway calls: `UpstreamClient` and its kinds, and clients with no transport of their own (litellm)."""

    name: str
    base_url: str  # where calls go, for traces ("" when the client library decides)
    native_responses: bool  # it serves OpenAI's Responses API itself

    async def chat(self, body: bytes, headers: Mapping[str, str] | None = None) -> UpstreamReply: ...

    async def send(self, operation: Operation, body: bytes,
                   headers: Mapping[str, str] | None = None) -> UpstreamReply: ...

    async def probe(self, timeout_s: float = 2.0) -> str | None: ...

    async def aclose(self) -> None: ...


class _Released(httpx.AsyncByteStream):
    """A response body that calls `release` once when closed: the call is outstanding until then."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class UpstreamClient:
    """A pooled connection to one upstream.

    It speaks to httpx's transport directly: the client layer above it (cookies, redirects, auth
    hooks, URL merging) does nothing a proxy wants and cost a fifth of the gateway's CPU per request.

    >>> client = UpstreamClient(ClientOptions(name="openai", base_url="https://api.openai.com/v1", api_key="sk-..."))
    >>> reply = await client.chat(body)  # doctest: +SKIP
    """

    def __init__(self, options: ClientOptions) -> None:
        self.name = options.name
        self.base_url = options.base_url.rstrip("/")
        self.native_responses = options.native_responses
        self.replicas = Replicas(options.replicas or [self.base_url], options.breaker)
        self._retry = options.retry
        timeouts = options.timeouts
        self.total_timeout_s = timeouts.total_s
        fixed = {"content-type": "application/json", "user-agent": f"minigate/{__version__}", **options.headers}
        if options.api_key:
            fixed.update(self._key_headers(options.api_key))
        self._headers = httpx.Headers(fixed)
        self._urls = {operation: httpx.URL(f"{self.base_url}/{path}") for operation, path in _PATHS.items()}
        self._timeout = httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s, pool=timeouts.connect_s).as_dict()
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=options.max_connections, max_keepalive_connections=options.max_keepalive)
        )

    def _key_headers(self, api_key: str) -> dict[str, str]:
        """How this API takes its key: OpenAI's protocol wants a bearer token."""
        return {"authorization": f"Bearer {api_key}"}

    def prepare(self, body: bytes) -> bytes:
        """The body as this upstream needs it: OpenAI-protocol servers take it as the client sent it."""
        return body

    def url(self, operation: Operation, body: bytes) -> httpx.URL:
        """Where this body goes: one URL per operation for every model on OpenAI-protocol servers."""
        return self._urls[operation]

    async def chat(self, body: bytes, headers: Mapping[str, str] | None = None) -> UpstreamReply:
        """Send a chat completion and return once the status line and headers are in (see `send`)."""
        return await self.send("chat", body, headers)

    async def send(self, operation: Operation, body: bytes,
                   headers: Mapping[str, str] | None = None) -> UpstreamReply:
        """Send one request (a chat completion, embeddings, a text completion); return once the status
        line and headers are in.

        With `retry` set, calls no upstream can have run (connect errors, 429, 503) are retried, on
        another replica where there is one; `attempts` on the reply or error lists every call.
        `headers` go with this call only (the gateway's `traceparent`).
        """
        url, content = self.url(operation, body), self.prepare(body)
        sent = self._headers
        if headers:
            sent = self._headers.copy()
            sent.update(headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout_s
        attempts: list[Attempt] = []
        tried: set[str] = set()
        while True:
            replica = self.replicas.pick(loop.time(), tried)
            if replica is None:
                raise self._circuit_open(attempts, loop.time())
            tried.add(replica.base_url)
            retries_done = len(attempts)
            try:
                response = await self._call(replica, url, content, sent, deadline, attempts)
            except ReplicasUnavailable as exc:
                wait = self._reconnect_wait(exc, retries_done, tried)
                if wait is None or loop.time() + wait >= deadline:
                    raise
                await asyncio.sleep(wait)
                continue
            wait = self._resend_wait(response, retries_done)
            if wait is None or loop.time() + wait >= deadline:
                relayed = [(k, v) for k, v in response.headers.items() if k not in _HOP_HEADERS]
                return UpstreamReply(response.status_code, relayed, response, self.name, deadline, attempts=attempts)
            await response.aclose()
            await asyncio.sleep(wait)

    async def _call(self, replica: Replica, url: httpx.URL, content: bytes, headers: httpx.Headers, deadline: float,
                    attempts: list[Attempt]) -> httpx.Response:
        """One call to one replica, recorded in `attempts` and its breaker; outstanding until its body is closed."""
        request = httpx.Request("POST", self._at(replica, url), headers=headers, content=content,
                                extensions={"timeout": self._timeout})
        loop = asyncio.get_running_loop()
        sent_at = time.perf_counter()
        replica.outstanding += 1
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._transport.handle_async_request(request)
        except (TimeoutError, httpx.TransportError) as exc:
            replica.outstanding -= 1
            failure = self._failure(exc, replica, attempts)
            attempts.append(Attempt(replica.shown_url, None, failure.kind, _since(sent_at)))
            self.replicas.record(replica, loop.time(), failed=True)
            raise failure from exc
        except BaseException:  # cancelled: the client left
            replica.outstanding -= 1
            self.replicas.record(replica, loop.time(), failed=None)
            raise
        attempts.append(Attempt(replica.shown_url, response.status_code, None, _since(sent_at)))
        self.replicas.record(replica, loop.time(), failed=response.status_code >= 500)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Released(response.stream, lambda: _release(replica))
        return response

    def _failure(self, exc: Exception, replica: Replica, attempts: list[Attempt]) -> UpstreamError:
        if isinstance(exc, TimeoutError | httpx.TimeoutException) and not isinstance(exc, _NOT_SENT):
            return ReplicasTimeout(
                f"upstream {self.name!r} did not answer in time ({type(exc).__name__}); raise its timeouts or check it",
                upstream=self.name, kind="timeout", attempts=attempts,
            )
        # Clients learn which upstream failed, never where it lives: a base URL may carry credentials,
        # and transport errors can quote it. Operators get the place, without credentials, in the log.
        log.warning("upstream %r at %s: %s: %s", self.name, replica.shown_url, type(exc).__name__, exc)
        return ReplicasUnavailable(
            f"cannot reach upstream {self.name!r} ({type(exc).__name__}); check that it is running",
            upstream=self.name, kind="connect_error", attempts=attempts,
        )

    def _reconnect_wait(self, exc: ReplicasUnavailable, retries_done: int, tried: set[str]) -> float | None:
        """A call that never reached the upstream is retried at once on an untried replica, else after a backoff."""
        if self._retry is None or retries_done >= self._retry.attempts or not isinstance(exc.__cause__, _NOT_SENT):
            return None
        if any(r.base_url not in tried for r in self.replicas.replicas):
            return 0.0
        return backoff(self._retry, retries_done)

    def _resend_wait(self, response: httpx.Response, retries_done: int) -> float | None:
        if self._retry is None:
            return None
        return retry_wait(response.status_code, response.headers.get("retry-after"), self._retry, retries_done)

    def _circuit_open(self, attempts: list[Attempt], now: float) -> ReplicasUnavailable:
        count = len(self.replicas.replicas)
        return ReplicasUnavailable(
            f"upstream {self.name!r}: the circuit is open for all {count} of its base URLs after repeated "
            f"failures; failing fast until a probe in {self.replicas.reopens_in(now):.1f} s",
            upstream=self.name, kind="circuit_open", attempts=attempts,
        )

    def _at(self, replica: Replica, url: httpx.URL) -> httpx.URL:
        """The call's URL on this replica: subclasses build it on `base_url`, the first replica's."""
        if replica.base_url == self.base_url:
            return url
        return httpx.URL(replica.base_url + str(url)[len(self.base_url):])

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        """None when the upstream answers `GET /models`, else why not (for /readyz)."""
        status = await self._status_of(f"{self.base_url}/models", timeout_s)
        if isinstance(status, str):
            return status
        return None if status < 500 else f"HTTP {status}"

    async def _status_of(self, url: str, timeout_s: float) -> int | str:
        """The HTTP status a GET of `url` answers, or why there was none."""
        request = httpx.Request("GET", url, headers=self._headers,
                                extensions={"timeout": httpx.Timeout(timeout_s).as_dict()})
        try:
            response = await self._transport.handle_async_request(request)
            await response.aclose()
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return response.status_code

    async def aclose(self) -> None:
        await self._transport.aclose()


# Failures before the request was sent: no upstream can have run it, so it may go to another replica.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def not_served(upstream: str, kind: str, operation: Operation) -> InvalidRequest:
    """The 400 for an operation an upstream kind has no API for (Anthropic has no embeddings)."""
    return InvalidRequest(
        f"upstream {upstream!r} (kind {kind}) serves chat completions only, not {_PATHS[operation]}; route this "
        "model name to a model on an OpenAI-compatible upstream (kind openai, vllm or llamacpp).")


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 6)


def _release(replica: Replica) -> None:
    replica.outstanding -= 1


class AzureClient(UpstreamClient):
    """Azure OpenAI: a URL per deployment, `api-version` in the query, the key in an `api-key` header.

    The model id the gateway puts in the body (a model entry's `model`) is the deployment's name;
    the body keeps it, and Azure ignores it.

    >>> options = ClientOptions(name="azure", base_url="https://me.openai.azure.com")
    >>> AzureClient(options, api_version="2024-10-21").url("chat", b'{"model": "gpt-4o-prod"}')
    URL('https://me.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21')
    """

    def __init__(self, options: ClientOptions, *, api_version: str) -> None:
        super().__init__(options)
        self._api_version = api_version

    def _key_headers(self, api_key: str) -> dict[str, str]:
        return {"api-key": api_key}

    def url(self, operation: Operation, body: bytes) -> httpx.URL:
        model = orjson.loads(body).get("model")  # the gateway always sets it (ChatRequest.with_model)
        deployment = quote(str(model), safe="")
        return httpx.URL(f"{self.base_url}/openai/deployments/{deployment}/{_PATHS[operation]}",
                         params={"api-version": self._api_version})


class UnconfiguredClient(UpstreamClient):
    """A hosted API configured without its key: every call is a clear 503, never a doomed request.

    The embedded default names OpenAI as its frontier with `${OPENAI_API_KEY:-}`, so that the gateway
    starts and serves its local miniature on a machine with no key; its frontier routes say what to set.
    """

    async def send(self, operation: Operation, body: bytes,
                   headers: Mapping[str, str] | None = None) -> UpstreamReply:
        raise ServiceUnavailable(
            f"no frontier model configured: upstream {self.name!r} ({self.base_url}) has no API key. Set "
            "OPENAI_API_KEY (the embedded default's frontier; MINIGATE_FRONTIER_MODEL picks the model), or "
            "MINIGATE_FRONTIER_BASE_URL to use any OpenAI-compatible API, or the upstream's api_key in your config."
        )

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        return "not configured: no API key"
