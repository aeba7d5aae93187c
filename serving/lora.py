"""The LoRA adapters on one vLLM (or local llama.cpp) server, loaded and unloaded at run time to match the config.

vLLM serves the adapters named at launch (`--lora-modules`) and, when started with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, loads and drops others on request:
`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter {"lora_name"}`.
Both answer 200 with plain text, or an error: 400 for a name already loaded (or not loaded), 404 when
the path holds no adapter. A name loaded already (by `--lora-modules`, or by another gateway replica)
counts as loaded. Adapters loaded this way live in the server's memory only: a server that restarts
has lost them, so the caller marks a replica stale when it stops answering, and every adapter is
loaded again when it is back. The local llama.cpp child (serving/llamacpp_child.py) speaks the same
endpoints, so it is driven by the same code.

A failure never raises: it is logged once, kept in `failed` (readiness shows it), and retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import orjson

__all__ = ["ReplicaAdapters"]

log = logging.getLogger("minigate.serving")

_RETRY_S = 10.0  # between attempts at loading adapters that failed to load
_DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
_VLLM_HINT = "the server must run with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"


class ReplicaAdapters:
    """What one server's base URL has loaded for this gateway, and brings it in line with the config.

    >>> adapters = ReplicaAdapters("vllm-a", "http://vllm-a:8000/v1")
    >>> await adapters.sync({"invoice-lora": "/adapters/invoice"}, client, now=0.0)  # doctest: +SKIP
    >>> adapters.loaded  # doctest: +SKIP
    {'invoice-lora': '/adapters/invoice'}
    """

    def __init__(self, upstream: str, base_url: str, *, hint: str = _VLLM_HINT) -> None:
        self.upstream = upstream
        self.hint = hint  # what a failure to load may need, logged with it
        self.base_url = base_url.rstrip("/")
        self.loaded: dict[str, str] = {}  # name -> path, as loaded by this gateway
        self.failed: dict[str, str] = {}  # name -> why its last load failed
        self.is_stale = False  # the server stopped answering since: it may have restarted without them
        self._retry_at = 0.0
        self._lock = asyncio.Lock()  # a reload and the poller may both sync

    def needs_sync(self, now: float) -> bool:
        return self.is_stale or (bool(self.failed) and now >= self._retry_at)

    async def sync(self, wanted: Mapping[str, str], client: httpx.AsyncClient, now: float, *,
                   headers: Mapping[str, str] | None = None, timeout: httpx.Timeout | None = None) -> None:
        """Unload what the config dropped (or moved), then load what it names and this server lacks.

        `headers` go with each call (the upstream's key); `timeout` bounds each (loading reads weights).
        """
        call = _Call(client, headers or {}, timeout or _DEFAULT_TIMEOUT)
        async with self._lock:
            everything, self.is_stale = self.is_stale, False
            for name in [name for name, path in self.loaded.items() if wanted.get(name) != path]:
                await self._unload(name, call)
            for name in [name for name in self.failed if name not in wanted]:
                del self.failed[name]
            for name, path in wanted.items():
                if everything or self.loaded.get(name) != path:
                    await self._load(name, path, call)
            self._retry_at = now + _RETRY_S

    async def _load(self, name: str, path: str, call: _Call) -> None:
        try:
            response = await call.post(f"{self.base_url}/load_lora_adapter", {"lora_name": name, "lora_path": path})
        except httpx.HTTPError as exc:
            self._fail(name, path, f"cannot reach it ({type(exc).__name__}: {exc})")
            return
        if response.status_code == 200 or (response.status_code == 400 and "already been loaded" in response.text):
            self.loaded[name] = path
            if self.failed.pop(name, None) is not None:
                log.info("upstream %r: LoRA adapter %r loaded on %s after all", self.upstream, name, self.base_url)
            return
        self.loaded.pop(name, None)
        self._fail(name, path, f"HTTP {response.status_code}: {_message(response)}")

    async def _unload(self, name: str, call: _Call) -> None:
        """Unloaded, or gone already; on any other failure it is dropped from `loaded` anyway, and logged."""
        del self.loaded[name]
        try:
            response = await call.post(f"{self.base_url}/unload_lora_adapter", {"lora_name": name})
        except httpx.HTTPError as exc:
            log.warning("upstream %r: could not unload LoRA adapter %r from %s: %s: %s",
                        self.upstream, name, self.base_url, type(exc).__name__, exc)
            return
        if response.status_code != 200 and response.status_code not in (400, 404):
            log.warning("upstream %r: could not unload LoRA adapter %r from %s: HTTP %d: %s",
                        self.upstream, name, self.base_url, response.status_code, _message(response))

    def _fail(self, name: str, path: str, why: str) -> None:
        if self.failed.get(name) != why:  # once per new reason, not on every retry
            log.error("upstream %r: cannot load LoRA adapter %r from %s on %s: %s (%s)",
                      self.upstream, name, path, self.base_url, why, self.hint)
        self.failed[name] = why


@dataclass(frozen=True)
class _Call:
    """How to reach the server for one sync."""

    client: httpx.AsyncClient
    headers: Mapping[str, str]
    timeout: httpx.Timeout

    async def post(self, url: str, body: dict[str, str]) -> httpx.Response:
        return await self.client.post(url, json=body, headers=self.headers, timeout=self.timeout)


def _message(response: httpx.Response) -> str:
    """The error's message: OpenAI's shape (`{"error": {...}}`), vLLM's older flat one, or the text itself."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:300]
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else response.text[:300]
