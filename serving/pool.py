"""The upstream clients of one config generation, and the local model servers that outlive generations.

A reload builds a new pool and swaps it in; the old one closes once its in-flight requests are done.
Local llama.cpp servers take seconds to start, so they are kept across reloads while their settings
don't change.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from minigate.serving.anthropic import AnthropicClient
from minigate.serving.llamacpp import (
    LlamaCppClient,
    LlamaCppServer,
    LlamaCppSettings,
    default_gguf_path,
    default_threads,
)
from minigate.serving.settings import AnthropicUpstream, LlamaCppUpstream, OpenAIUpstream, Upstream
from minigate.serving.upstream import AzureClient, UnconfiguredClient, UpstreamClient

__all__ = ["LocalServers", "UpstreamPool"]


class LocalServers:
    """Local llama.cpp servers keyed by their settings, started on first use and stopped at shutdown."""

    def __init__(self) -> None:
        self._servers: dict[LlamaCppUpstream, LlamaCppServer] = {}

    async def ensure(self, settings: LlamaCppUpstream) -> str:
        """The base URL of a running server for these settings, starting one if needed."""
        server = self._servers.get(settings)
        if server is None:
            path = settings.path or default_gguf_path()
            server = LlamaCppServer(LlamaCppSettings(model_path=path, threads=settings.threads or default_threads(),
                                                     context=settings.context))
            await server.start()
            self._servers[settings] = server
        return server.base_url

    async def retain(self, wanted: set[LlamaCppUpstream]) -> None:
        """Stop servers that the current config no longer names."""
        for settings in [s for s in self._servers if s not in wanted]:
            await self._servers.pop(settings).stop()

    async def stop_all(self) -> None:
        await self.retain(set())


class UpstreamPool:
    """One `UpstreamClient` per configured upstream."""

    def __init__(self, clients: Mapping[str, UpstreamClient]) -> None:
        self.clients = dict(clients)

    @classmethod
    async def open(cls, upstreams: Mapping[str, Upstream], local: LocalServers) -> UpstreamPool:
        clients = {name: await _client(name, spec, local) for name, spec in upstreams.items()}
        await local.retain({spec for spec in upstreams.values() if isinstance(spec, LlamaCppUpstream)})
        return cls(clients)

    def __getitem__(self, name: str) -> UpstreamClient:
        return self.clients[name]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def _client(name: str, spec: Upstream, local: LocalServers) -> UpstreamClient:
    if isinstance(spec, OpenAIUpstream | AnthropicUpstream) and spec.missing_key():
        return UnconfiguredClient(name, spec.base_url, spec.timeouts)
    if isinstance(spec, OpenAIUpstream):
        # Azure speaks the same protocol at another path, with its key in another header.
        make = functools.partial(AzureClient, api_version=spec.api_version) if spec.api_version else UpstreamClient
        return make(
            name,
            spec.base_url,
            spec.timeouts,
            api_key=spec.api_key.get_secret_value() if spec.api_key else None,
            headers=spec.headers,
            max_connections=spec.max_connections,
            max_keepalive=spec.max_keepalive,
            replicas=spec.replicas(),
            breaker=spec.breaker,
            retry=spec.retry,
        )
    if isinstance(spec, AnthropicUpstream):
        return AnthropicClient(name, spec)
    return LlamaCppClient(name, await local.ensure(spec), spec.timeouts)
