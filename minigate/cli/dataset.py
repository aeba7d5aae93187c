"""`minigate dataset export`: a task's teacher outputs as fine-tuning JSONL with a dataset card (S5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from minigate.cli.common import (
    CatalogueOption,
    ConfigOption,
    SinceOption,
    UntilOption,
    actor,
    bad_parameter_on,
    catalogue_path,
    config_or_exit,
    err,
    exit_on,
    fail,
    out,
    when,
)
from minigate.config import Config

__all__ = ["app"]

app = typer.Typer(help="Fine-tuning data (conversion step S5): a task's teacher outputs as JSONL.",
                  no_args_is_help=True)


@app.command("export")
def dataset_export(
    task: Annotated[str, typer.Option("--task", "-t", help="Task id or name (`minigate tasks list`).")],
    config: ConfigOption = None,
    catalogue: CatalogueOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Directory for the files; default ./dataset-<task name>.")] = None,
    all_tiers: Annotated[bool, typer.Option(
        "--all-tiers", help="Also replies by miniatures (default: frontier-tier replies only, the teacher's).")] = False,
    include_errors: Annotated[bool, typer.Option(
        "--include-errors", help="Also calls whose status was not 200 that still hold a finished reply.")] = False,
    max_tokens: Annotated[Optional[int], typer.Option(
        min=1, help="Drop examples over N prompt + completion tokens (logged usage, else an estimate).")] = None,
    min_feedback: Annotated[Optional[float], typer.Option(
        help="Keep only calls rated >= X: the mean of their POST /v1/minigate/feedback scores, else their "
             "request's metadata.feedback (a number or numeric string).")] = None,
    validation: Annotated[float, typer.Option(
        min=0.0, max=0.5, help="Share held out for validation, stratified by signature (label-like tasks: "
        "by label).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation draw.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON instead of a table.")] = False,
) -> None:
    """Write a task's logged calls as OpenAI chat fine-tuning data: train.jsonl, validation.jsonl, and a card
    (README.md, card.json) with counts, tokens, period and placeholders. Exact and near-duplicates go.

    Payloads stay redacted. Reading them needs the log key (logging.encryption_key, or the key file the
    embedded default keeps beside its SQLite store), as `logs export` does; every page read is audited as
    actor cli:<user>.
    """
    import asyncio
    import time

    import orjson
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from minigate.conversion.dataset import DatasetBuilder, Selection
    from minigate.conversion.dataset_card import ExportFacts, card, card_table, skip_notes, write_dataset
    from minigate.logger.export import export_calls
    from minigate.router.catalogue import CatalogueError, load_catalogue

    cfg = config_or_exit(config)
    _payload_key_or_exit(cfg)
    path = catalogue_path(catalogue, cfg)
    if not path.is_file():
        fail(f"no task catalogue at {path}: run `minigate tasks discover`, then set tasks.catalogue in the config "
             "or pass --catalogue")
    with exit_on(CatalogueError, OSError):
        found = load_catalogue(path)
    with bad_parameter_on(CatalogueError, hint="--task"):
        target = found.find(task)
    selection = Selection(all_tiers, include_errors, max_tokens, min_feedback)
    facts = ExportFacts(selection, when(since, "--since"), when(until, "--until"), validation, seed, time.time())
    builder = DatasetBuilder(target, found, selection)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=not err.is_terminal) as bar:
        reading = bar.add_task("reading the call log", total=None)
        asyncio.run(export_calls(cfg.logging, since=facts.since, until=facts.until, actor=actor(),
                                 write=builder.add, progress=lambda n: bar.advance(reading, n)))
        bar.update(reading, total=builder.counts.read)
        dedup = bar.add_task("near-duplicates", total=builder.collected)
        dataset = builder.finish(validation, seed, progress=lambda n: bar.advance(dedup, n))
    document = card(dataset, facts)
    if as_json:
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        out.print(card_table(document))
    if not dataset.train:
        _explain_nothing(document, skip_notes(document))
        raise typer.Exit(1)
    written = write_dataset(dataset, document, out_dir or Path(f"dataset-{target.name.replace('/', '-')}"))
    err.print("wrote " + ", ".join(map(str, written)), highlight=False)
    for note in skip_notes(document):
        err.print(f"[yellow]skipped[/] {escape(note)}", highlight=False)


def _explain_nothing(document: dict[str, Any], notes: list[str]) -> None:
    """Why an export came out empty, on stderr: what was read, and each reason calls were left out."""
    task, counts = document["task"], document["counts"]
    err.print(f"[red]no examples[/] for task {escape(task['name'])} ({task['id']}): nothing written", highlight=False)
    if not counts["calls_read"]:
        err.print("no calls were logged in that window: check --since/--until and the config's logging.store",
                  highlight=False)
        return
    err.print(f"calls read: {counts['calls_read']} ({counts['calls_of_task']} of this task, "
              f"{document['not_of_task']['other_tasks']} of other tasks)", highlight=False)
    for note in notes:
        err.print(f"- {escape(note)}", highlight=False)


def _payload_key_or_exit(cfg: Config) -> None:
    """Datasets are built from payloads: without the key that opens them, stop before reading anything."""
    from minigate.logger.keys import KeyFileError, key_file_path, load_keys

    with exit_on(KeyFileError):
        keys = load_keys(cfg.logging, create=False)
    if keys is None:
        where = key_file_path(cfg.logging)
        fail("reading logged payloads needs the log key: set logging.encryption_key (MINIGATE_LOG_KEY) or "
             "logging.key_file" + (f"; no key file at {where}" if where else "")
             + ("" if cfg.logging.payloads else " (and logging.payloads is off: no payload was logged)"))
