"""Calling one OpenAI-protocol upstream: a pooled client and the translation of transport failures.

One `httpx.AsyncClient` per upstream keeps connections alive across requests; creating a client per
request would pay a TCP (and TLS) handshake on every call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import orjson

from minigate.errors import ServiceUnavailable, UpstreamStreamCut, UpstreamTimeout, UpstreamUnavailable
from minigate.serving.settings import Timeouts
from minigate.version import __version__

__all__ = ["AzureClient", "UpstreamClient", "UpstreamReply"]

# Headers that describe one hop of the connection (RFC 9110 §7.6.1) or that we recompute for the client.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "date", "server"}
)


@dataclass
class UpstreamReply:
    """An upstream's answer with the body not yet read, so streams can be relayed as they arrive."""

    status: int
    headers: list[tuple[str, str]]
    response: httpx.Response
    upstream: str
    deadline: float  # loop time by which the whole reply must be in (the upstream's timeouts.total_s)

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout_at(self.deadline):
                return await self.response.aread()
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise UpstreamTimeout(f"upstream {self.upstream!r} timed out sending its reply", upstream=self.upstream, kind="timeout") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"upstream {self.upstream!r} broke off its reply: {exc}", upstream=self.upstream, kind="read_error") from exc
        finally:
            await self.response.aclose()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, decoded but otherwise untouched (SSE events are not re-framed)."""
        loop = asyncio.get_running_loop()
        try:
            async for chunk in self.response.aiter_bytes():
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


class UpstreamClient:
    """A pooled connection to one upstream.

    It speaks to httpx's transport directly: the client layer above it (cookies, redirects, auth
    hooks, URL merging) does nothing a proxy wants and cost a fifth of the gateway's CPU per request.

    >>> client = UpstreamClient("openai", "https://api.openai.com/v1", Timeouts(), api_key="sk-...")
    >>> reply = await client.chat(body)  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        timeouts: Timeouts,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 256,
        max_keepalive: int = 64,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.total_timeout_s = timeouts.total_s
        fixed = {"content-type": "application/json", "user-agent": f"minigate/{__version__}", **(headers or {})}
        if api_key:
            fixed["authorization"] = f"Bearer {api_key}"
        self._headers = httpx.Headers(fixed)
        self._chat_url = httpx.URL(f"{self.base_url}/chat/completions")
        self._timeout = httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s, pool=timeouts.connect_s).as_dict()
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive)
        )

    def prepare(self, body: bytes) -> bytes:
        """The body as this upstream needs it: OpenAI-protocol servers take it as the client sent it."""
        return body

    def chat_url(self, body: bytes) -> httpx.URL:
        """Where this body goes: one URL for every model on OpenAI-protocol servers."""
        return self._chat_url

    async def chat(self, body: bytes) -> UpstreamReply:
        """Send a chat completion and return once the status line and headers are in."""
        request = httpx.Request("POST", self.chat_url(body), headers=self._headers, content=self.prepare(body),
                                extensions={"timeout": self._timeout})
        deadline = asyncio.get_running_loop().time() + self.total_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._transport.handle_async_request(request)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise UpstreamTimeout(
                f"upstream {self.name!r} did not answer in time ({type(exc).__name__}); raise its timeouts or check it",
                upstream=self.name,
                kind="timeout",
            ) from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                f"cannot reach upstream {self.name!r} at {self.base_url}: {exc or type(exc).__name__}",
                upstream=self.name,
                kind="connect_error",
            ) from exc
        headers = [(k, v) for k, v in response.headers.items() if k not in _HOP_HEADERS]
        return UpstreamReply(response.status_code, headers, response, self.name, deadline)

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        """None when the upstream answers `GET /models`, else why not (for /readyz)."""
        request = httpx.Request("GET", f"{self.base_url}/models", headers=self._headers,
                                extensions={"timeout": httpx.Timeout(timeout_s).as_dict()})
        try:
            response = await self._transport.handle_async_request(request)
            await response.aclose()
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None if response.status_code < 500 else f"HTTP {response.status_code}"

    async def aclose(self) -> None:
        await self._transport.aclose()


class AzureClient(UpstreamClient):
    """Azure OpenAI: a URL per deployment, `api-version` in the query, the key in an `api-key` header.

    The model id the gateway puts in the body (a model entry's `model`) is the deployment's name;
    the body keeps it, and Azure ignores it.

    >>> client = AzureClient("azure", "https://me.openai.azure.com", Timeouts(), api_version="2024-10-21")
    >>> client.chat_url(b'{"model": "gpt-4o-prod"}')  # doctest: +SKIP
    URL('https://me.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21')
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        timeouts: Timeouts,
        *,
        api_version: str,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 256,
        max_keepalive: int = 64,
    ) -> None:
        keyed = {**(headers or {}), **({"api-key": api_key} if api_key else {})}
        super().__init__(name, base_url, timeouts, headers=keyed, max_connections=max_connections,
                         max_keepalive=max_keepalive)
        self._api_version = api_version

    def chat_url(self, body: bytes) -> httpx.URL:
        model = orjson.loads(body).get("model")  # the gateway always sets it (ChatRequest.with_model)
        deployment = quote(str(model), safe="")
        return httpx.URL(f"{self.base_url}/openai/deployments/{deployment}/chat/completions",
                         params={"api-version": self._api_version})


class UnconfiguredClient(UpstreamClient):
    """A hosted API configured without its key: every call is a clear 503, never a doomed request.

    The embedded default names OpenAI as its frontier with `${OPENAI_API_KEY:-}`, so that the gateway
    starts and serves its local miniature on a machine with no key; its frontier routes say what to set.
    """

    async def chat(self, body: bytes) -> UpstreamReply:
        raise ServiceUnavailable(
            f"no frontier model configured: upstream {self.name!r} ({self.base_url}) has no API key. Set "
            "OPENAI_API_KEY (the embedded default's frontier; MINIGATE_FRONTIER_MODEL picks the model), or "
            "MINIGATE_FRONTIER_BASE_URL to use any OpenAI-compatible API, or the upstream's api_key in your config."
        )

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        return "not configured: no API key"
