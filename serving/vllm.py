"""The `vllm` upstream kind: an OpenAI-protocol server plus vLLM's extras.

- Readiness is vLLM's `GET /health` (at the server's root, beside `/v1`), and the adapters it lacks.
- LoRA adapters named in the config are loaded at start and on every reload, and unloaded when the
  config drops them (serving/lora.py), on every replica.
- Load: `/metrics` is polled once a second per replica, in the background, never on a request; rules
  read the last reading (`VllmFleet.loads`) as `upstream_waiting`, `upstream_running` and
  `upstream_kv_cache`. An upstream with no fresh reading has no entry, and load tests are then false.

The fleet outlives config generations, as the vLLM servers do: a reload syncs it to the new config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from minigate.serving.lora import ReplicaAdapters
from minigate.serving.options import ClientOptions
from minigate.serving.settings import ModelEntry, OpenAIUpstream, Timeouts, Upstream, lora_adapters
from minigate.serving.upstream import UpstreamClient
from minigate.serving.vllm_load import VllmLoad, least_loaded, parse_metrics

__all__ = ["VllmClient", "VllmFleet"]

log = logging.getLogger("minigate.serving")

_POLL_S = 1.0  # between two readings of a replica's /metrics
_POLL_TIMEOUT_S = 2.0


def _server_root(base_url: str) -> str:
    """vLLM serves `/health` and `/metrics` at its root, the OpenAI API under `/v1`."""
    return base_url.rstrip("/").removesuffix("/v1")


class VllmClient(UpstreamClient):
    """An OpenAI-protocol client whose readiness is vLLM's `/health` and the state of its adapters.

    >>> options = ClientOptions(name="vllm-a", base_url="http://vllm-a:8000/v1")
    >>> client = VllmClient(options, adapter_problem=lambda: None)
    >>> await client.probe()  # doctest: +SKIP
    """

    def __init__(self, options: ClientOptions, *, adapter_problem: Callable[[], str | None]) -> None:
        super().__init__(options)
        self._adapter_problem = adapter_problem

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        """None when `/health` answers 200 and every configured adapter is loaded, else why not."""
        status = await self._status_of(f"{_server_root(self.base_url)}/health", timeout_s)
        if isinstance(status, str):
            return status
        if status != 200:
            return f"/health answered HTTP {status}"
        return self._adapter_problem()


@dataclass
class _Watched:
    """One vLLM upstream of the config: its replicas' adapters and last readings, and its poller."""

    name: str
    headers: dict[str, str]
    timeout: httpx.Timeout
    wanted: dict[str, str] = field(default_factory=dict)  # adapter -> path
    replicas: dict[str, ReplicaAdapters] = field(default_factory=dict)  # by base URL
    readings: dict[str, VllmLoad] = field(default_factory=dict)  # by base URL; absent: no fresh reading
    poller: asyncio.Task[None] | None = None


class VllmFleet:
    """The config's vLLM upstreams: adapters kept as the config names them, load polled for the rules.

    >>> fleet = VllmFleet()
    >>> await fleet.sync(config.upstreams, config.models)  # doctest: +SKIP
    >>> fleet.loads.get("vllm-a")  # doctest: +SKIP
    VllmLoad(waiting=0.0, running=1.0, kv_cache=0.02)
    """

    def __init__(self) -> None:
        self.loads: dict[str, VllmLoad] = {}  # upstream -> its least loaded replica's last reading
        self._watched: dict[str, _Watched] = {}
        self._client: httpx.AsyncClient | None = None

    async def sync(self, upstreams: Mapping[str, Upstream], models: Mapping[str, ModelEntry]) -> None:
        """Follow a config: adapters loaded and unloaded on every replica, pollers started and stopped.

        Failures are logged and shown by `problem` (readiness); they never raise.
        """
        specs = {name: spec for name, spec in upstreams.items()
                 if isinstance(spec, OpenAIUpstream) and spec.kind == "vllm"}
        for name in [name for name in self._watched if name not in specs]:
            await self._forget(self._watched.pop(name))
        for name, spec in specs.items():
            watched = self._watched.get(name)
            if watched is None:
                watched = self._watched[name] = _Watched(name, _headers(spec), _timeout(spec.timeouts))
            watched.headers, watched.timeout = _headers(spec), _timeout(spec.timeouts)
            watched.wanted = lora_adapters(name, spec, models)
            await self._follow_replicas(watched, spec.replicas())
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(self._sync(watched, replica, loop.time()) for watched in self._watched.values()
                               for replica in watched.replicas.values()))
        for watched in self._watched.values():
            if watched.poller is None:
                watched.poller = loop.create_task(self._poll(watched), name=f"vllm-poll-{watched.name}")

    def problem(self, upstream: str) -> str | None:
        """The adapters an upstream's replicas failed to load, and why; None when all are in."""
        watched = self._watched.get(upstream)
        if watched is None:
            return None
        problems = [f"LoRA adapter {name!r} not loaded on {replica.base_url}: {why}"
                    for replica in watched.replicas.values() for name, why in replica.failed.items()]
        return "; ".join(problems) or None

    async def stop(self) -> None:
        """Stop polling. Adapters stay loaded: the servers outlive this gateway, and other replicas use them."""
        for watched in self._watched.values():
            await _cancel(watched.poller)
        self._watched.clear()
        self.loads.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _follow_replicas(self, watched: _Watched, base_urls: Sequence[str]) -> None:
        urls = [url.rstrip("/") for url in base_urls]
        for url in [url for url in watched.replicas if url not in urls]:
            await self._sync(watched, watched.replicas.pop(url), 0.0, keep=False)
            watched.readings.pop(url, None)
        for url in urls:
            watched.replicas.setdefault(url, ReplicaAdapters(watched.name, url))

    async def _forget(self, watched: _Watched) -> None:
        """An upstream the config no longer names: its adapters unloaded, its poller stopped."""
        await _cancel(watched.poller)
        self.loads.pop(watched.name, None)
        for replica in watched.replicas.values():
            await self._sync(watched, replica, 0.0, keep=False)

    async def _sync(self, watched: _Watched, replica: ReplicaAdapters, now: float, *, keep: bool = True) -> None:
        """Bring a replica's adapters in line with the config; `keep=False` unloads all of them."""
        await replica.sync(watched.wanted if keep else {}, self._http(), now, headers=watched.headers,
                           timeout=watched.timeout)

    async def _poll(self, watched: _Watched) -> None:
        """Read every replica, publish the upstream's load, sleep; a reading that fails is no reading."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.gather(*(self._read(watched, replica, loop.time())
                                       for replica in list(watched.replicas.values())))
            except Exception:  # a poller that died would leave its last reading in force for good
                log.exception("vLLM upstream %r: reading its load failed", watched.name)
                watched.readings.clear()
            current = [load for url, load in watched.readings.items() if url in watched.replicas]
            load = least_loaded(current)
            if load is None:
                self.loads.pop(watched.name, None)
            else:
                self.loads[watched.name] = load
            await asyncio.sleep(_POLL_S)

    async def _read(self, watched: _Watched, replica: ReplicaAdapters, now: float) -> None:
        """One reading of a replica's load; a replica back after being unreachable gets its adapters again."""
        url = f"{_server_root(replica.base_url)}/metrics"
        try:
            response = await self._http().get(url, headers=watched.headers, timeout=_POLL_TIMEOUT_S)
        except httpx.TransportError as exc:
            watched.readings.pop(replica.base_url, None)
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and not replica.is_stale:
                log.debug("vLLM upstream %r: %s is unreachable", watched.name, replica.base_url)
                replica.is_stale = True
            return
        load = parse_metrics(response.text) if response.status_code == 200 else None
        if load is None:
            watched.readings.pop(replica.base_url, None)
        else:
            watched.readings[replica.base_url] = load
        if replica.needs_sync(now):
            await self._sync(watched, replica, now)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=16, max_keepalive_connections=4))
        return self._client


def _headers(spec: OpenAIUpstream) -> dict[str, str]:
    """vLLM's `--api-key` guards the adapter endpoints as it guards chat."""
    headers = dict(spec.headers)
    if spec.api_key is not None and spec.api_key.get_secret_value():
        headers["authorization"] = f"Bearer {spec.api_key.get_secret_value()}"
    return headers


def _timeout(timeouts: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
