"""`minigate tasks scorecard` / `promote` / `demote`: measured quality per task and miniature, and the
promotions it justifies (S6). Registered on the `tasks` group (minigate/cli/tasks.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from minigate.cli.common import CatalogueOption, ConfigOption, actor, catalogue_path, err, exit_on, fail, out
from minigate.cli.tasks import JsonOption, app

if TYPE_CHECKING:
    from minigate.config import Config

__all__ = ["tasks_demote", "tasks_promote", "tasks_scorecard"]

DaysOption = Annotated[float, typer.Option(min=0.01, help="Window of the call log to read, in days.")]


@app.command("scorecard")
def tasks_scorecard(config: ConfigOption = None, catalogue: CatalogueOption = None, days: DaysOption = 7,
                    as_json: JsonOption = False) -> None:
    """Each miniature's agreement with the frontier per task (shadow verdicts, Wilson 95%), latency, cost,
    feedback and projected monthly savings at that quality."""
    import orjson

    cfg, _ = _config(config)
    names = _task_names(catalogue, cfg)
    measured = _measured(cfg.logging.store, days)
    if as_json:
        typer.echo(orjson.dumps([{**card.document(), "task_name": names.get(card.task, card.task)}
                                 for card in measured.cards], option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("task", "miniature", "verdicts", "agreement (95%)", "unjudged", "errors", "feedback",
                  "p50 / p95", "cost/call", "saves/month", title=f"scorecards, last {days:g} days")
    for card in measured.cards:
        agreement = "-" if card.agreement is None else f"{card.agreement:.1%} ({card.interval[0]:.1%}-{card.interval[1]:.1%})"
        feedback = "-" if card.feedback_mean is None else f"{card.feedback_mean:.2f} (n={card.feedback_n})"
        latency = "-" if card.latency_p50_s is None else f"{card.latency_p50_s:.2f} / {card.latency_p95_s:.2f} s"
        cost = "unpriced" if card.cost_per_call_usd is None else f"${card.cost_per_call_usd:.6f}"
        saves = "unpriced" if card.monthly_savings_usd is None else f"${card.monthly_savings_usd:,.2f}"
        table.add_row(f"{card.task} {names.get(card.task, '')}".strip(), card.model, str(card.n), agreement,
                      str(card.unjudged), str(card.errors), feedback, latency, cost, saves)
    out.print(table)
    if not measured.cards:
        err.print("no shadow verdicts or feedback yet: give a rule `shadow: {model: MINIATURE, sample: 0.1}`")


@app.command("promote")
def tasks_promote(
    task: Annotated[str, typer.Argument(help="The task's id or name.")],
    model: Annotated[str, typer.Option("--model", help="The miniature model entry to serve the task.")],
    config: ConfigOption = None,
    catalogue: CatalogueOption = None,
    route: Annotated[Optional[str], typer.Option(help="The route to promote on; default: the route most of the "
                                                      "task's calls use.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(min=0, max=1, help="Wilson lower bound needed "
                                                           "(default: conversion.min_agreement).")] = None,
    min_samples: Annotated[Optional[int], typer.Option(min=1, help="Shadow verdicts needed (default: "
                                                       "conversion.min_samples).")] = None,
    days: DaysOption = 7,
) -> None:
    """Serve TASK with MODEL, if its measured agreement clears the bar; says what is missing when not.
    Writes promotions.yaml beside the config: a running gateway reloads it."""
    from minigate.config import promotions_path
    from minigate.conversion.promotion import promote
    from minigate.router.promotions import PromotionError

    cfg, path = _config(config)
    found = _task(catalogue, cfg, task)
    policy = cfg.conversion.model_copy(update={k: v for k, v in (("min_agreement", min_agreement),
                                                                  ("min_samples", min_samples)) if v is not None})
    with exit_on(PromotionError, code=1):
        promotion = promote(promotions_path(path), task=found[1], task_id=found[0], model=model,
                            measured=_measured(cfg.logging.store, days), policy=policy, routes=cfg.routes,
                            tiers={name: entry.tier for name, entry in cfg.models.items()}, route=route, by=actor())
    err.print(f"promoted {promotion.task} -> {promotion.model} on route {promotion.route} (escalates to "
              f"{promotion.escalate_to}; the frontier shadows {promotion.shadow_sample:.0%} of its calls): "
              f"agreement {promotion.agreement:.1%}, 95% interval {promotion.interval[0]:.1%}-"
              f"{promotion.interval[1]:.1%} over {promotion.n} verdicts")


@app.command("demote")
def tasks_demote(
    task: Annotated[str, typer.Argument(help="The task's id or name.")],
    config: ConfigOption = None,
    catalogue: CatalogueOption = None,
    reason: Annotated[str, typer.Option(help="Why, for the history.")] = "demoted by hand",
) -> None:
    """Send TASK back to the frontier: removes its promotion (the history keeps it)."""
    from minigate.config import promotions_path
    from minigate.conversion.promotion import demote
    from minigate.router.promotions import PromotionError

    cfg, path = _config(config)
    _, name = _task(catalogue, cfg, task)
    with exit_on(PromotionError, code=1):
        demote(promotions_path(path), task=name, by=actor(), reason=reason)
    err.print(f"demoted {name}: its calls go to the route's rules and default again")


def _config(option: Path | None) -> tuple[Config, Path]:
    from minigate.cli.common import load_or_exit
    from minigate.config import resolve_config_path

    path = resolve_config_path(option, os.environ)
    return load_or_exit(path), path


def _measured(store_url: str, days: float) -> Any:  # router.scorecard.Measured (rooms load inside commands only)
    import asyncio
    import time

    from minigate.conversion.promotion import read_measured

    now = time.time()
    return asyncio.run(read_measured(store_url, since=now - days * 86400, until=now))


def _task_names(catalogue: Path | None, config: Config) -> dict[str, str]:
    from minigate.router.catalogue import CatalogueError, load_catalogue

    path = catalogue_path(catalogue, config)
    if not path.is_file():
        return {}
    with exit_on(CatalogueError, OSError):
        return {task.id: task.name for task in load_catalogue(path).tasks}


def _task(catalogue: Path | None, config: Config, key: str) -> tuple[str, str]:
    """(id, name) of the task `key` names."""
    from minigate.router.catalogue import CatalogueError, load_catalogue

    path = catalogue_path(catalogue, config)
    if not path.is_file():
        fail(f"no task catalogue at {path}: run `minigate tasks discover` first")
    with exit_on(CatalogueError, OSError):
        found = load_catalogue(path).find(key)
    return found.id, found.name
