"""`minigate serve`, `check` and `version`: run the gateway, validate a config, say which minigate this is."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from minigate.cli.common import STARTUP_FAILURE, ConfigOption, err, exit_on, load_or_exit, out
from minigate.config import Config, resolve_config_path
from minigate.version import __version__

__all__ = ["check", "serve", "version"]


def serve(
    config: ConfigOption = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address; default server.host from the config.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port; default server.port from the config (0 picks a free one).")] = None,
    log_level: Annotated[str, typer.Option(envvar="MINIGATE_LOG_LEVEL", help="Log level.")] = "info",
) -> None:
    """Run the gateway."""
    from minigate.gateway.auth import is_loopback
    from minigate.gateway.supervisor import warn_of_stranded_spools

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = resolve_config_path(config, os.environ)
    cfg = load_or_exit(path)
    bind_host = host or cfg.server.host
    if not cfg.auth.keys:
        if not is_loopback(bind_host):
            err.print(
                f"[red]refusing to serve on {bind_host}: no API keys are configured.[/] Add auth.keys to {path} "
                "or bind a loopback address (--host 127.0.0.1)."
            )
            raise typer.Exit(STARTUP_FAILURE)
        err.print("[yellow]warning:[/] no API keys configured: anyone on this machine can call the gateway.")
    err.print(f"minigate {__version__}: config {path}")
    err.print(routes_table(cfg))
    _log_key_or_exit(cfg)
    warn_of_stranded_spools(cfg.logging, cfg.server.workers)
    started = _server(cfg)(cfg, path, host=bind_host, port=cfg.server.port if port is None else port,
                           log_level=log_level)
    if not started:
        raise typer.Exit(STARTUP_FAILURE)


def _server(cfg: Config) -> Callable[..., bool]:
    """One gateway process, or with `server.workers` above 1 a supervisor of that many, which never imports the app."""
    if cfg.server.workers > 1:
        from minigate.gateway.supervisor import supervise

        return supervise
    from minigate.gateway.server import run

    return run


def _log_key_or_exit(cfg: Config) -> None:
    """Create the embedded default's key file now, and refuse a malformed one before binding a port."""
    from minigate.logger.keys import KeyFileError, load_keys

    with exit_on(KeyFileError, code=STARTUP_FAILURE):
        keys = load_keys(cfg.logging, create=True)
    if keys is None and cfg.logging.enabled and cfg.logging.payloads:
        err.print("[yellow]warning:[/] no log key (logging.encryption_key or logging.key_file): calls are logged "
                  "without their payloads")


def check(config: Annotated[Path, typer.Argument(help="Config file to validate.")]) -> None:
    """Validate a config file and print its upstreams, models and routes."""
    cfg = load_or_exit(config)
    out.print(_upstreams_table(cfg))
    out.print(routes_table(cfg))
    if any(route.rules for route in cfg.routes.values()):
        out.print(_rules_table(cfg))
    out.print(f"[green]{config}: valid[/]")


def version() -> None:
    """Print minigate's version."""
    typer.echo(__version__)


def routes_table(cfg: Config) -> Table:
    """Each route: the model it serves with by default, where that runs, and its price."""
    from minigate.pricing import PriceTable, model_rate

    table = Table(title="routes")
    for column in ("route (model agents ask for)", "serves with", "upstream", "upstream model", "tier",
                   "USD/Mtok in/out (source)"):
        table.add_column(column)
    for name, route in cfg.routes.items():
        entry = cfg.models[route.default]
        rate, source = model_rate(entry, PriceTable.bundled())
        price = f"{rate.input_per_mtok:g}/{rate.output_per_mtok:g} ({source})" if rate else "unpriced"
        table.add_row(name, route.default, entry.upstream, entry.model, entry.tier, price)
    return table


def _upstreams_table(cfg: Config) -> Table:
    table = Table(title="upstreams")
    for column in ("name", "kind", "where"):
        table.add_column(column)
    for name, spec in cfg.upstreams.items():
        where = spec.base_url if spec.kind != "llamacpp" else str(spec.path or f"{spec.model} (bundled GGUF)")
        table.add_row(name, spec.kind, where)
    return table


def _rules_table(cfg: Config) -> Table:
    import orjson

    table = Table(title="rules (first match wins, else the route's default)")
    for column in ("route", "#", "rule", "when", "serves with"):
        table.add_column(column)
    for name, route in cfg.routes.items():
        for i, rule in enumerate(route.rules, start=1):
            target = rule.use or ", ".join(f"{model} {weight}" for model, weight in (rule.split or {}).items())
            table.add_row(name, str(i), rule.name, orjson.dumps(rule.when).decode() or "{}", target)
    return table
