"""The ASGI app: routes, lifespan (upstreams, local models, reload triggers) and the operational endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.responses import PlainTextResponse, Response

from minigate.config import Config
from minigate.errors import ServiceUnavailable
from minigate.gateway.autopilot import Autopilot
from minigate.gateway.calls_api import add_calls_api
from minigate.gateway.errors import install_error_handlers
from minigate.gateway.feedback_api import add_feedback_api
from minigate.gateway.ingress import Dialect, Ingress
from minigate.gateway.limits import Limiter
from minigate.gateway.messages import MessagesDialect
from minigate.gateway.metrics import GatewayMetrics
from minigate.gateway.openai_api import OpenAIDialect
from minigate.gateway.openapi import CHAT_REQUEST_BODY, CHAT_RESPONSES, error_responses
from minigate.gateway.openapi_ingresses import (
    COMPLETIONS_REQUEST_BODY,
    EMBEDDINGS_REQUEST_BODY,
    MESSAGES_REQUEST_BODY,
    MESSAGES_RESPONSES,
    RELAYED_RESPONSES,
    RESPONSES_REQUEST_BODY,
)
from minigate.gateway.readiness import Readiness
from minigate.gateway.responses import ResponsesDialect, add_stored_responses_api
from minigate.gateway.scorecards_api import add_scorecards_api
from minigate.gateway.runtime import RuntimeHolder
from minigate.gateway.settings import TelemetrySection
from minigate.gateway.shadow import Shadower
from minigate.gateway.tasks_api import add_tasks_api
from minigate.logger.pipeline import CallLog
from minigate.logger.records import CallRecord
from minigate.logger.seal import Sealer
from minigate.logger.stores import CallStore
from minigate.version import __version__

if TYPE_CHECKING:
    from minigate.gateway.tracing import Tracing
    from minigate.gateway.worker import WorkerSlot

__all__ = ["create_app"]

log = logging.getLogger("minigate.gateway")


def create_app(config: Config, registry: CollectorRegistry, *, config_path: Path | None = None,
               announce: bool = False, host: str | None = None, worker: WorkerSlot | None = None) -> FastAPI:
    """Build the gateway. With `config_path`, SIGHUP and edits to that file reload the config.

    `announce`: once started, print which models answer (`minigate serve` does; tests don't).
    `host`: the address it listens on, when not `server.host` (a reload may not open it to the network).
    `worker`: which of `server.workers` processes this is (gateway/worker.py); None for a lone gateway.
    """
    metrics = GatewayMetrics(registry, multiprocess=worker is not None)
    holder = RuntimeHolder(config, metrics, config_path, host=host or config.server.host)
    # The store and the tracer are set up once: reloaded logging.store and telemetry apply at the next restart.
    tracing = _tracing(config.telemetry)

    def observe(record: CallRecord) -> None:  # each record, once, when the log writer has sealed it
        metrics.count_call(record)
        limiter.charge(record)
        if tracing is not None:
            tracing.complete(record)

    calls = CallLog(config.logging if worker is None else worker.call_log_settings(config.logging), registry,
                    Sealer.from_settings(config.logging, create_key=True), observe)
    # Records a restarted gateway recovers from its journal are measured before the config is up: their
    # spend is not charged then, the reconciliation at start counts it from the log.
    limiter = Limiter(config.limits, registry, limited=lambda: holder.current.keyring.limited(),
                      limits_of=lambda name: holder.current.keyring.limits_of(name) if holder.started else None,
                      spend=_spend(calls))
    shadower = Shadower(holder, metrics, calls)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await calls.start()
        await holder.stored_keys.refresh(_store(calls))  # before the first request: stored keys authenticate
        await holder.start()
        if worker is not None and worker.is_restart:
            await holder.reload()  # the file may have changed since the supervisor read it: SIGHUP's rules apply
        await limiter.reconcile()
        shadower.start()
        loop = asyncio.get_running_loop()
        keys = loop.create_task(holder.stored_keys.refresh_forever(lambda: _store(calls),
                                                                    lambda: holder.config.auth.refresh_s))
        limits = loop.create_task(limiter.run())
        watcher = loop.create_task(_watch(holder)) if config_path else None
        # The autopilot writes promotions.yaml: one writer, worker 0, when there are several.
        autopilot = (loop.create_task(Autopilot(holder, calls, metrics).run_forever())
                     if config_path and (worker is None or worker.is_first) else None)
        announcer = loop.create_task(_announce(holder)) if announce else None
        lag = loop.create_task(metrics.watch_event_loop())
        with _reload_on_sighup(holder):
            try:
                yield
            finally:
                for task in (watcher, autopilot, announcer, lag, keys, limits):
                    if task is not None:
                        task.cancel()
                await shadower.stop()
                await holder.stop()
                await limiter.close()
                await calls.stop()  # closes the spans still waiting for their records
                if tracing is not None:
                    await anyio.to_thread.run_sync(tracing.shutdown)

    # No redirect from `/v1/chat/completions/`: a client's POST must never be bounced to a URL built from
    # its own Host header.
    app = FastAPI(title="minigate", version=__version__, lifespan=lifespan, redirect_slashes=False)
    app.state.holder = holder
    install_error_handlers(app)
    def ingress(dialect: Dialect) -> Ingress:
        return Ingress(dialect, holder, metrics, calls, limiter, tracing, shadower)

    chat, completions, embeddings = (ingress(OpenAIDialect(op)) for op in ("chat", "completions", "embeddings"))
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"],
                      openapi_extra={"requestBody": CHAT_REQUEST_BODY}, responses=CHAT_RESPONSES)
    app.add_api_route("/v1/completions", completions, methods=["POST"], summary="Text completions, relayed.",
                      openapi_extra={"requestBody": COMPLETIONS_REQUEST_BODY}, responses=RELAYED_RESPONSES)
    app.add_api_route("/v1/embeddings", embeddings, methods=["POST"], summary="Embeddings, relayed.",
                      openapi_extra={"requestBody": EMBEDDINGS_REQUEST_BODY}, responses=RELAYED_RESPONSES)
    app.add_api_route("/v1/responses", ingress(ResponsesDialect(calls)), methods=["POST"],
                      summary="OpenAI's Responses API, served through chat completions.",
                      openapi_extra={"requestBody": RESPONSES_REQUEST_BODY}, responses=RELAYED_RESPONSES)
    app.add_api_route("/v1/messages", ingress(MessagesDialect()), methods=["POST"],
                      summary="Anthropic's Messages API, served through chat completions.",
                      openapi_extra={"requestBody": MESSAGES_REQUEST_BODY}, responses=MESSAGES_RESPONSES)
    # AzureOpenAI clients name the route in the path (the deployment); `api-version` is accepted and unread.
    for operation, endpoint in (("chat/completions", chat), ("completions", completions), ("embeddings", embeddings)):
        app.add_api_route(f"/openai/deployments/{{deployment}}/{operation}", endpoint, methods=["POST"],
                          include_in_schema=False)
    add_stored_responses_api(app, holder, calls)
    exposed = registry if worker is None else worker.exposition()
    _add_operational_routes(app, holder, exposed, Readiness(holder, calls, limiter))
    add_calls_api(app, holder, calls)
    add_tasks_api(app, holder)
    add_feedback_api(app, holder, calls)
    add_scorecards_api(app, holder, calls)
    return app


def _store(calls: CallLog) -> CallStore | None:
    reader = calls.reader()
    return None if reader is None else reader.store


def _spend(calls: CallLog) -> Callable[[float], Awaitable[dict[tuple[str, str], float]]]:
    """What each key spent per route since a time, from the call log (ServiceUnavailable while it is down)."""
    async def spend(since: float) -> dict[tuple[str, str], float]:
        store = _store(calls)
        if store is None:
            raise ServiceUnavailable("the call log's store is unavailable")
        return await store.spend(since)

    return spend


def _tracing(section: TelemetrySection) -> Tracing | None:
    """The tracer when telemetry is on; the OpenTelemetry SDK is not even imported when it is off."""
    if section.traces_url is None:
        return None
    from minigate.gateway.tracing import Tracing

    return Tracing(section)


def _add_operational_routes(app: FastAPI, holder: RuntimeHolder, registry: CollectorRegistry,
                            readiness: Readiness) -> None:
    @app.get("/v1/models", summary="The route names agents may put in `model`.", responses=error_responses(401))
    async def list_models(request: Request) -> Response:
        runtime = holder.current
        runtime.keyring.authenticate(request.headers)
        data = [_model(name) for name in runtime.config.routes]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    @app.get("/v1/models/{model}", summary="One route name, if agents may put it in `model`.",
             responses=error_responses(401, 404))
    async def get_model(model: str, request: Request) -> Response:
        runtime = holder.current
        runtime.keyring.authenticate(request.headers)
        runtime.router.default(model)  # ModelNotFound (404) lists the routes there are
        return Response(orjson.dumps(_model(model)), media_type="application/json")

    @app.get("/healthz", summary="Liveness: the process answers.")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", summary="Readiness: 503 while the call log can persist nothing; details for analyst and admin keys.")
    async def readyz(request: Request) -> Response:
        return await readiness.respond(request)

    @app.get("/metrics", summary="Prometheus metrics.", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        runtime = holder.current
        if runtime.config.metrics.require_role is not None:
            runtime.keyring.authenticate(request.headers).require("read_metrics")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _model(route: str) -> dict[str, object]:
    return {"id": route, "object": "model", "created": 0, "owned_by": "minigate"}


async def _announce(holder: RuntimeHolder) -> None:
    """Print the models, their tiers and whether their upstream answers; probed after start-up, in the
    background, so an unreachable frontier never delays serving the local miniature."""
    from rich.console import Console
    from rich.table import Table

    runtime = holder.current
    names = list(runtime.pool.clients)
    probes = dict(zip(names, await asyncio.gather(*(runtime.pool[n].probe() for n in names)), strict=True))
    table = Table("model", "tier", "upstream", "reachable", title="models")
    for name, entry in runtime.config.models.items():
        problem = probes.get(entry.upstream)
        table.add_row(name, entry.tier, entry.upstream, "[green]yes[/]" if problem is None else f"[red]no[/]: {problem}")
    # Off a terminal (a log file, a supervisor), the table keeps its rows whole whatever COLUMNS says.
    Console(stderr=True, width=None if sys.stderr.isatty() else 10_000).print(table)


async def _watch(holder: RuntimeHolder) -> None:
    """Reload when the config's folder changes.

    Watching the folder, not the file, catches editors that write a new file and rename it, and
    Kubernetes ConfigMaps that swap a symlink (`..data`); other files there (the embedded default's
    SQLite call log sits beside its config) are ignored, so log writes never cost a parse.
    """
    from watchfiles import Change, awatch

    assert holder.path is not None
    name = holder.path.name

    def concerns_config(change: Change, path: str) -> bool:
        changed = Path(path).name
        catalogue = holder.config.tasks.catalogue  # a re-discovery writes tasks.yaml and tasks.npz
        watched = {catalogue.name, catalogue.with_suffix(".npz").name} if catalogue is not None else set()
        # `minigate tasks promote` / `demote` and the autopilot write promotions.yaml beside the config.
        return changed in (name, "promotions.yaml") or changed.startswith("..") or changed in watched

    async for _ in awatch(holder.path.absolute().parent, recursive=False, watch_filter=concerns_config):
        await holder.reload()


@contextlib.contextmanager
def _reload_on_sighup(holder: RuntimeHolder) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(holder.reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        installed = True
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (tests), or no SIGHUP
        installed = False
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGHUP)
