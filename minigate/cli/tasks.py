"""`minigate tasks`: discover recurring tasks in calls; list, show, rename and merge them; rank conversions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from minigate.cli.common import (
    CallsInputOption,
    CatalogueOption,
    ConfigOption,
    SinceOption,
    UntilOption,
    actor,
    bad_parameter_on,
    catalogue_path,
    config_or_exit,
    err,
    existing_catalogue,
    exit_on,
    fail,
    out,
    readable,
    when,
)

__all__ = ["app"]

app = typer.Typer(help="Recurring tasks: discover them in calls; list, show, rename and merge them.",
                  no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("discover")
def tasks_discover(
    config: ConfigOption = None,
    input: CallsInputOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    out_dir: Annotated[Path, typer.Option(
        "--out", "-o", help="Directory for tasks.yaml, tasks.npz and the plots.",
    )] = Path("."),
    assignments: Annotated[Optional[Path], typer.Option(
        help='Write {"id", "task", "name"} per input call, as JSONL.',
    )] = None,
    cache: Annotated[Optional[Path], typer.Option(
        envvar="MINIGATE_EMBEDDING_CACHE", help="Embedding cache directory; default OUT/.embeddings.",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalogue as JSON instead of a table.")] = False,
) -> None:
    """Find the recurring tasks in calls and write the catalogue: ids carry over from the one already in OUT."""
    import datetime

    import orjson
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from minigate.conversion.discovery import discover
    from minigate.conversion.inputs import input_lines, read_log
    from minigate.conversion.observations import Observation, Skipped, logged_observation, read_observations
    from minigate.conversion.task_view import PlotUnavailable, catalogue_table, write_map, write_shares
    from minigate.router.catalogue import CatalogueError, catalogue_document, load_catalogue, save_catalogue
    from minigate.router.embedding import Embedder, EmbeddingCache, EmbeddingsUnavailable

    if input is not None and (since or until):
        raise typer.BadParameter("they select logged calls, not lines of --input", param_hint="--since/--until")
    catalogue = out_dir / "tasks.yaml"
    with exit_on(CatalogueError, OSError):
        previous = load_catalogue(catalogue) if catalogue.is_file() else None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=not err.is_terminal) as bar:
        stages: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int | None) -> None:
            stages.setdefault(stage, bar.add_task(stage, total=total))
            bar.update(stages[stage], completed=done, total=total)

        reading = bar.add_task("reading the call log", total=None, visible=input is None)
        if input is not None:
            with readable(input):
                read = list(read_observations(input_lines(input)))
        else:
            read = read_log(config_or_exit(config).logging, logged_observation, since=when(since, "--since"),
                            until=when(until, "--until"), actor=actor(), progress=lambda n: bar.advance(reading, n))
        observations = [item for item in read if isinstance(item, Observation)]
        skipped = [item for item in read if isinstance(item, Skipped)]
        if not observations:
            fail("no calls to discover tasks in" + (f" ({len(skipped)} lines skipped)" if skipped else ""), 1)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with exit_on(EmbeddingsUnavailable):
            found = discover(observations, Embedder(EmbeddingCache(cache or out_dir / ".embeddings")),
                             previous=previous, discovered_at=now, progress=progress)
    save_catalogue(found.catalogue, catalogue)
    written = [catalogue, out_dir / "tasks.npz"]
    if assignments is not None:
        assignments.write_bytes(found.assignment_lines(read))
        written.append(assignments)
    try:
        write_shares(found.catalogue, out_dir / "tasks.png")
        write_map(found.vectors, [task for _, task in found.assignments], found.catalogue, out_dir / "tasks-map.png")
        written += [out_dir / "tasks.png", out_dir / "tasks-map.png"]
    except PlotUnavailable as exc:
        err.print(f"[yellow]no plots:[/] {exc}")
    if as_json:
        typer.echo(orjson.dumps(catalogue_document(found.catalogue), option=orjson.OPT_INDENT_2).decode())
    else:
        out.print(catalogue_table(found.catalogue))
    if skipped:
        err.print(f"skipped {len(skipped)} input line(s), e.g. {skipped[0].id}: {skipped[0].reason}", highlight=False)
    err.print("wrote " + ", ".join(map(str, written)), highlight=False)


@app.command("list")
def tasks_list(catalogue: CatalogueOption = None, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List the catalogue's tasks, most calls first."""
    import orjson

    from minigate.conversion.task_view import catalogue_table
    from minigate.router.catalogue import CatalogueError, catalogue_document, load_catalogue

    with exit_on(CatalogueError, OSError):
        found = load_catalogue(existing_catalogue(catalogue_path(catalogue, config)))
    if as_json:
        typer.echo(orjson.dumps(catalogue_document(found), option=orjson.OPT_INDENT_2).decode())
    else:
        out.print(catalogue_table(found))


@app.command("show")
def tasks_show(
    task: Annotated[str, typer.Argument(help="Task id or name.")],
    catalogue: CatalogueOption = None,
    config: ConfigOption = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="Calls to show the example calls' texts from (the catalogue keeps only their ids): "
        "the Request JSONL `tasks discover` read, or `logs export` JSONL ('-': stdin). Request bodies are "
        "redacted before they are shown.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show one task: calls, shares, tokens, kind of output, signatures, who served it, example calls
    (with --input, what they said, redacted)."""
    import dataclasses

    import orjson

    from minigate.conversion.inputs import input_lines
    from minigate.conversion.task_view import example_texts, task_table
    from minigate.router.catalogue import CatalogueError, load_catalogue

    with exit_on(CatalogueError, OSError):
        found = load_catalogue(existing_catalogue(catalogue_path(catalogue, config)))
    with bad_parameter_on(CatalogueError, hint="TASK"):
        shown = found.find(task)
    texts: dict[str, str] | None = None
    if input is not None:
        from minigate.logger.redact import Redactor

        with readable(input):
            texts = example_texts(shown, input_lines(input), Redactor())
        if len(texts) < len(shown.examples):
            err.print(f"{len(shown.examples) - len(texts)} of the {len(shown.examples)} example calls are not in "
                      f"{input}: the catalogue was discovered from other calls", highlight=False)
    if as_json:
        document = dataclasses.asdict(shown) | ({} if texts is None else {"example_texts": texts})
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        out.print(task_table(shown, texts))


@app.command("rename")
def tasks_rename(
    task: Annotated[str, typer.Argument(help="Task id or name.")],
    name: Annotated[str, typer.Argument(help="The new name (lower case, digits, _ . / -).")],
    catalogue: CatalogueOption = None,
    config: ConfigOption = None,
) -> None:
    """Rename a task; the name survives re-discovery."""
    from minigate.conversion.catalogue_edit import edit_catalogue
    from minigate.router.catalogue import CatalogueError, rename

    with exit_on(OSError), bad_parameter_on(CatalogueError):
        edited = edit_catalogue(existing_catalogue(catalogue_path(catalogue, config)),
                                lambda found: rename(found, task, name))
    err.print(f"{edited.find(name).id} is now {name}")


@app.command("merge")
def tasks_merge(
    into: Annotated[str, typer.Argument(help="The task that stays (id or name).")],
    others: Annotated[list[str], typer.Argument(help="Tasks folded into it.")],
    catalogue: CatalogueOption = None,
    config: ConfigOption = None,
) -> None:
    """Merge tasks into the first one; the merge survives re-discovery."""
    from minigate.conversion.catalogue_edit import edit_catalogue
    from minigate.router.catalogue import CatalogueError, merge

    with exit_on(OSError), bad_parameter_on(CatalogueError):
        edited = edit_catalogue(existing_catalogue(catalogue_path(catalogue, config)),
                                lambda found: merge(found, into, others))
    kept = edited.find(into)
    err.print(f"{kept.id} ({kept.name}) now holds {', '.join(kept.merged)}: {kept.size} calls")


@app.command("candidates")
def tasks_candidates(
    config: ConfigOption = None,
    catalogue: CatalogueOption = None,
    frontier: Annotated[Optional[str], typer.Option(help="The model the calls go to now (a priced config model); "
                                                           "default: the priced frontier model serving most calls.")] = None,
    miniature: Annotated[Optional[str], typer.Option(help="The miniature to price conversions at; default: the "
                                                           "cheapest priced miniature in the config.")] = None,
    days: Annotated[float, typer.Option(min=1, help="Window of the call log to read (and the span the "
                                                    "catalogue's counts cover when the log has none).")] = 30,
    as_json: JsonOption = False,
) -> None:
    """Rank tasks for conversion to a miniature (S4): savings per month times how learnable the task looks."""
    import asyncio
    import time

    import orjson

    from minigate.conversion.candidates import CandidatePrices, default_models, rank_candidates, read_task_stats
    from minigate.router.catalogue import CatalogueError, load_catalogue
    from minigate.router.prices import PriceBook

    cfg = config_or_exit(config)
    with exit_on(CatalogueError, OSError):
        found = load_catalogue(existing_catalogue(catalogue_path(catalogue, cfg)))
    book = PriceBook.from_config(cfg)
    defaults = default_models(cfg, found, book)
    chosen = (frontier or defaults[0], miniature or defaults[1])
    for option, name in zip(("--frontier", "--miniature"), chosen, strict=True):
        if name is not None and name not in book.models:
            raise typer.BadParameter(f"{name!r} is not a priced model of the config", param_hint=option)
    prices = (CandidatePrices(book.models[chosen[0]], book.models[chosen[1]])
              if chosen[0] is not None and chosen[1] is not None else None)
    now = time.time()
    stats = asyncio.run(read_task_stats(cfg.logging.store, since=now - days * 86400, until=now))
    ranked = rank_candidates(found, prices, period_days=days, stats={k: v for k, v in stats.items() if v.calls})
    if as_json:
        typer.echo(orjson.dumps([{"task": c.task.id, "name": c.task.name, "monthly_calls": round(c.monthly_calls, 1),
                                  "monthly_savings_usd": c.monthly_savings, "fit": c.fit, "reason": c.reason}
                                 for c in ranked], option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("rank", "task", "calls/month", "saves/month", "fit", "why", title="conversion candidates")
    for rank, c in enumerate(ranked, start=1):
        saves = "unpriced" if c.monthly_savings is None else f"${c.monthly_savings:,.2f}"
        table.add_row(str(rank), f"{c.task.id} {c.task.name}", f"{c.monthly_calls:,.0f}", saves, f"{c.fit:.2f}", c.reason)
    out.print(table)
    if prices is None:
        err.print("[yellow]no savings projected:[/] the config needs a priced frontier and a priced miniature model")
    else:
        err.print(f"savings priced as {chosen[0]} -> {chosen[1]}")
