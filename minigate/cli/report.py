"""`minigate report`: the savings report from the call log's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from minigate.cli.common import ConfigOption, config_or_exit, err, exit_on, out, when

__all__ = ["report"]


def report(
    config: ConfigOption = None,
    since: Annotated[Optional[str], typer.Option(help="Start, unix seconds or ISO 8601.")] = None,
    until: Annotated[Optional[str], typer.Option(help="End (exclusive), unix seconds or ISO 8601.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for index.html and its PNG plots.")] = Path(
        "minigate-report"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON instead of a table.")] = False,
) -> None:
    """Write the savings report (spend, savings, routing, quality, escalations, latency, errors) from call-log
    metadata."""
    import asyncio
    import time

    import orjson
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from minigate.conversion.metadata_pages import read_metadata
    from minigate.conversion.promotion import read_measured
    from minigate.conversion.report import ReportBuilder, headline_rows, report_document
    from minigate.conversion.report_html import write_report
    from minigate.conversion.report_plots import PlotUnavailable

    cfg = config_or_exit(config)
    start, end, store = when(since, "--since"), when(until, "--until"), cfg.logging.store.split("@")[-1]
    builder = ReportBuilder(_task_names(cfg.tasks.catalogue))
    with Progress(SpinnerColumn(), TextColumn("{task.completed} calls read"), console=err,
                  disable=not err.is_terminal) as bar:
        reading = bar.add_task("report", total=None)
        asyncio.run(read_metadata(cfg.logging.store, since=start, until=end, write=builder.add,
                                  progress=lambda n: bar.advance(reading, n)))
    quality = asyncio.run(read_measured(cfg.logging.store, since=start or 0.0, until=end or time.time())).cards
    figures = builder.finish(since=start, until=end, quality=quality)
    if figures is None:
        err.print(f"no calls in the call log ({store}){' in that window' if since or until else ''}: nothing to "
                  "report", highlight=False)
        raise typer.Exit(1)
    if as_json:
        typer.echo(orjson.dumps(report_document(figures), option=orjson.OPT_INDENT_2).decode())
    else:
        table = Table("figure", "value", title="savings report")
        for label, value in headline_rows(figures):
            table.add_row(label, value)
        out.print(table)
    with exit_on(PlotUnavailable):
        page = write_report(figures, output, source=f"call log {store}")
    err.print(f"wrote {page}", highlight=False)


def _task_names(catalogue: Path | None) -> dict[str, str] | None:
    """Task id -> name from the config's catalogue, when it has one that exists (else the report shows ids)."""
    from minigate.router.catalogue import CatalogueError, load_catalogue

    if catalogue is None or not catalogue.is_file():
        return None
    with exit_on(CatalogueError, OSError):
        found = load_catalogue(catalogue)
    return {task.id: task.name for task in found.tasks}
