"""One config generation in force, and the atomic swap that replaces it on reload.

A request reads `holder.current` once and uses that generation to its end, so a reload mid-request
never mixes two configs. A reload that fails validation or can't start its upstreams leaves the old
generation serving and records why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from minigate.config import Config, load_config
from minigate.errors import ConfigError
from minigate.gateway.auth import KeyRing, is_loopback
from minigate.gateway.metrics import GatewayMetrics
from minigate.gateway.stored_keys import StoredKeys
from minigate.router.decision import Router
from minigate.router.matcher import TaskMatcher
from minigate.router.prices import PriceBook
from minigate.serving.pool import LocalServers, UpstreamPool
from minigate.serving.vllm import VllmFleet

__all__ = ["Runtime", "RuntimeHolder"]

log = logging.getLogger("minigate.gateway")

# How long a replaced generation's clients stay open for requests that started on it.
_RETIRE_AFTER_S = 600.0


@dataclass
class Runtime:
    config: Config
    keyring: KeyRing
    router: Router
    pool: UpstreamPool
    prices: PriceBook
    tasks: TaskMatcher | None = None  # None: no catalogue configured, every call's task is `unknown`
    catalogue_stamp: int | None = None  # the catalogue file's mtime: a re-discovery is a change to reload

    @classmethod
    async def open(cls, config: Config, local: LocalServers, fleet: VllmFleet | None = None,
                   stored_keys: StoredKeys | None = None) -> Runtime:
        tasks, stamp = None, _stamp(config)
        if config.tasks.catalogue is not None:
            tasks = await anyio.to_thread.run_sync(TaskMatcher.load, config.tasks)
            await tasks.warm_up()  # the embedding model, when on, loads now and never on a request
        pool = await UpstreamPool.open(config.upstreams, local, models=config.models, fleet=fleet)
        return cls(config, KeyRing.from_section(config.auth, stored_keys), Router.from_config(config), pool,
                   PriceBook.from_config(config), tasks, stamp)

    async def close(self) -> None:
        await self.pool.aclose()
        if self.tasks is not None:
            self.tasks.close()


def _stamp(config: Config) -> int | None:
    path = config.tasks.catalogue
    try:
        return path.stat().st_mtime_ns if path is not None else None
    except OSError:
        return None


@dataclass
class RuntimeHolder:
    """Owns the current generation, the local model servers, and reloads from `path` when asked."""

    config: Config
    metrics: GatewayMetrics
    path: Path | None = None
    host: str = "127.0.0.1"  # the address the server listens on: a reload may not leave it without keys
    local: LocalServers = field(default_factory=LocalServers)
    fleet: VllmFleet = field(default_factory=VllmFleet)  # vLLM adapters and load, across generations
    stored_keys: StoredKeys = field(default_factory=StoredKeys)  # `minigate keys create`'s, across generations
    generation: int = 0
    last_reload_error: str | None = None
    _current: Runtime | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def started(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> Runtime:
        if self._current is None:
            raise RuntimeError("the gateway has not started")
        return self._current

    async def start(self) -> None:
        self._current = await Runtime.open(self.config, self.local, self.fleet, self.stored_keys)
        self.generation = 1

    async def reload(self) -> bool:
        """Load `path` again; True when the file's config is the one serving afterwards."""
        if self.path is None:
            return False
        async with self._lock:
            try:
                config = await anyio.to_thread.run_sync(load_config, self.path)
                if config == self.config and _stamp(config) == self.current.catalogue_stamp:
                    self.last_reload_error = None  # the file is back to what serves: nothing is wrong any more
                    self.metrics.config_reloads.labels("unchanged").inc()
                    return True
                if (refusal := _keys_refusal(self.config, config, self.host)) is not None:
                    self._reject(f"{self.path}: {refusal}")
                    return False
                runtime = await Runtime.open(config, self.local, self.fleet, self.stored_keys)
            except ConfigError as exc:
                self._reject(str(exc))
                return False
            except Exception as exc:  # an upstream that won't start must not take the gateway down
                self._reject(f"{type(exc).__name__}: {exc}")
                return False
            old, self._current, self.config = self._current, runtime, config
            self.generation += 1
            self.last_reload_error = None
            _warn_listener_change(old, runtime)
            if old is not None:
                self._retire(old)
            self.metrics.config_reloads.labels("applied").inc()
            log.info("config reloaded from %s (generation %d)", self.path, self.generation)
            return True

    def _reject(self, why: str) -> None:
        self.last_reload_error = why
        self.metrics.config_reloads.labels("rejected").inc()
        log.error("config reload rejected, still serving generation %d:\n%s", self.generation, why)

    def _retire(self, old: Runtime) -> None:
        async def close_later() -> None:
            try:
                await asyncio.sleep(_RETIRE_AFTER_S)
            finally:
                await old.close()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def stop(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._current is not None:
            await self._current.close()
        await self.fleet.stop()
        await self.local.stop_all()


def _keys_refusal(old: Config, new: Config, host: str) -> str | None:
    """Why a reload may not change the keys so: the start-up rule (no keys only on loopback) holds on
    reload, and a gateway that had keys never loses them all at once (a typo would open every payload)."""
    if new.auth.keys:
        return None
    if old.auth.keys:
        return ("auth.keys: the new config has no API keys, which would let any caller read the call log; "
                "a running gateway keeps at least one key (restart it to serve without keys on loopback)")
    if not is_loopback(host):
        return f"auth.keys: no API keys, and the gateway listens on {host}, beyond loopback; add auth.keys"
    return None


def _warn_listener_change(old: Runtime | None, new: Runtime) -> None:
    before, after = old.config.server if old else None, new.config.server
    if before is not None and (before.host, before.port, before.drain_timeout_s) != (after.host, after.port, after.drain_timeout_s):
        log.warning("server.host, port and drain_timeout_s changes take effect at the next restart")
    if old is not None and old.config.limits != new.config.limits:
        log.warning("limits (redis_url, fail, timeouts) changes take effect at the next restart; keys' limits apply now")
