"""The upstream clients of one config generation, and the servers' state that outlives generations.

A reload builds a new pool and swaps it in; the old one closes once its in-flight requests are done.
Local llama.cpp servers take seconds to start, so they are kept across reloads while their settings
don't change, and only their LoRA adapters follow the new config; the vLLM fleet (adapters loaded,
load polled) follows each new config too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from minigate.serving.anthropic import AnthropicClient
from minigate.serving.litellm_client import LitellmClient
from minigate.serving.llamacpp import (
    LlamaCppClient,
    LlamaCppServer,
    LlamaCppSettings,
    default_gguf_path,
    default_threads,
)
from minigate.serving.options import ClientOptions
from minigate.serving.settings import (
    AnthropicUpstream,
    LitellmUpstream,
    LlamaCppUpstream,
    ModelEntry,
    Upstream,
    lora_adapters,
)
from minigate.serving.upstream import AzureClient, ChatUpstream, UnconfiguredClient, UpstreamClient
from minigate.serving.vllm import VllmClient, VllmFleet
from minigate.serving.vllm_load import VllmLoad

__all__ = ["LocalServers", "UpstreamPool"]


class LocalServers:
    """Local llama.cpp servers keyed by their settings, started on first use and stopped at shutdown."""

    def __init__(self) -> None:
        self._servers: dict[LlamaCppUpstream, LlamaCppServer] = {}

    async def ensure(self, name: str, settings: LlamaCppUpstream) -> LlamaCppServer:
        """A running server for these settings, starting one if needed (`name` is the upstream, for logs)."""
        server = self._servers.get(settings)
        if server is None:
            path = settings.path or default_gguf_path()
            server = LlamaCppServer(LlamaCppSettings(model_path=path, name=name, context=settings.context,
                                                     threads=settings.threads or default_threads()))
            await server.start()
            self._servers[settings] = server
        return server

    async def serve_adapters(self, upstreams: Mapping[str, Upstream], models: Mapping[str, ModelEntry]) -> None:
        """Each server loads the LoRA adapters its upstreams' model entries name, and drops the others.

        Upstreams with the same settings share one server, and so its adapters.
        """
        wanted: dict[LlamaCppUpstream, dict[str, str]] = {}
        for name, spec in upstreams.items():
            if isinstance(spec, LlamaCppUpstream):
                wanted.setdefault(spec, {}).update(lora_adapters(name, spec, models))
        for spec, adapters in wanted.items():
            await self._servers[spec].serve_adapters(adapters)

    async def retain(self, wanted: set[LlamaCppUpstream]) -> None:
        """Stop servers that the current config no longer names."""
        for settings in [s for s in self._servers if s not in wanted]:
            await self._servers.pop(settings).stop()

    async def stop_all(self) -> None:
        await self.retain(set())


class UpstreamPool:
    """One client per configured upstream, and the vLLM upstreams' load for the rules (`loads`)."""

    def __init__(self, clients: Mapping[str, ChatUpstream], loads: Mapping[str, VllmLoad] | None = None) -> None:
        self.clients = dict(clients)
        self.loads: Mapping[str, VllmLoad] = {} if loads is None else loads  # kept current by the fleet

    @classmethod
    async def open(cls, upstreams: Mapping[str, Upstream], local: LocalServers, *,
                   models: Mapping[str, ModelEntry] | None = None, fleet: VllmFleet | None = None) -> UpstreamPool:
        """Clients for `upstreams`; the local servers' adapters follow `models`, and with a `fleet` the vLLM
        upstreams' adapters too."""
        clients = {name: await _client(name, spec, local, fleet) for name, spec in upstreams.items()}
        await local.retain({spec for spec in upstreams.values() if isinstance(spec, LlamaCppUpstream)})
        await local.serve_adapters(upstreams, models or {})  # once every client opened, as the fleet's below
        if fleet is None:
            return cls(clients)
        await fleet.sync(upstreams, models or {})  # last: a generation that failed to open changes no server
        return cls(clients, fleet.loads)

    def __getitem__(self, name: str) -> ChatUpstream:
        return self.clients[name]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def _client(name: str, spec: Upstream, local: LocalServers, fleet: VllmFleet | None) -> ChatUpstream:
    if isinstance(spec, LitellmUpstream):
        return await LitellmClient.open(name, spec)  # the only place litellm is imported
    if isinstance(spec, LlamaCppUpstream):
        server = await local.ensure(name, spec)
        return LlamaCppClient(ClientOptions(name=name, base_url=server.base_url, timeouts=spec.timeouts),
                              adapter_problem=server.adapter_problem)
    if spec.missing_key():  # it calls nothing, so it needs neither the blank key nor the rest
        return UnconfiguredClient(ClientOptions(name=name, base_url=spec.base_url))
    options = ClientOptions.of(name, spec)
    if isinstance(spec, AnthropicUpstream):
        return AnthropicClient(options, anthropic_version=spec.anthropic_version)
    # Azure speaks the same protocol at another path, with its key in another header.
    if spec.api_version:
        return AzureClient(options, api_version=spec.api_version)
    if spec.kind == "vllm" and fleet is not None:
        return VllmClient(options, adapter_problem=functools.partial(fleet.problem, name))
    return UpstreamClient(options)
