"""`minigate replay`: route requests or logged calls through a candidate config, offline, and price the result."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from minigate.cli.common import (
    CallsInputOption,
    ConfigOption,
    SinceOption,
    UntilOption,
    actor,
    config_or_exit,
    err,
    out,
    readable,
    when,
)

__all__ = ["replay"]


def replay(
    config: ConfigOption = None,
    input: CallsInputOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    assume_output_tokens: Annotated[int, typer.Option(
        min=0, help="Reply tokens where none are known (capped at the request's max_tokens).",
    )] = 256,
    png: Annotated[Optional[Path], typer.Option(help="Write a plot of projected cost vs share escalated.")] = None,
    measured_days: Annotated[float, typer.Option(
        "--measured-days", min=0.01, help="Window of the call log whose shadow verdicts project each task's "
        "promotion.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Route requests or logged calls through a candidate config: split per tier, rule, task; cost; savings.

    Offline: no upstream is called. Prices are the gateway's: a model's `price`, else the bundled table's.
    """
    import orjson
    from rich.progress import Progress

    from minigate.conversion.inputs import count_lines, input_lines, read_log
    from minigate.conversion.replay import Call, Skipped, logged_call, read_calls
    from minigate.conversion.replay import replay as replay_calls
    from minigate.conversion.replay_view import PlotUnavailable, report_notes, report_tables, write_plot

    cfg = config_or_exit(config)
    if input is not None and (since or until):
        raise typer.BadParameter("they select logged calls, not lines of --input", param_hint="--since/--until")
    with Progress(console=err, disable=not err.is_terminal) as bar:
        reading = bar.add_task("reading the call log", total=None, visible=input is None)
        calls: list[Call | Skipped] | Iterator[Call | Skipped]
        if input is None:  # the replay keeps a summary of every call anyway (to sort by score)
            calls = read_log(cfg.logging, logged_call, since=when(since, "--since"), until=when(until, "--until"),
                             actor=actor(), progress=lambda n: bar.advance(reading, n))
            total: int | None = len(calls)
        else:
            with readable(input):
                total = None if str(input) == "-" else count_lines(input)
            calls = read_calls(input_lines(input))
        task = bar.add_task("replaying", total=total)

        def counted() -> Iterator[Call | Skipped]:
            for call in calls:
                bar.advance(task)
                yield call

        report = replay_calls(cfg, counted(), assumed_output_tokens=assume_output_tokens,
                              cards=_scorecards(cfg.logging.store, days=measured_days))
    if as_json:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        for table in report_tables(report):
            out.print(table)
        for note in report_notes(report):
            out.print(note, highlight=False)  # plain text: no colouring of numbers and quotes
    if png is not None:
        try:
            write_plot(report, png)
        except PlotUnavailable as exc:
            err.print(f"[red]no plot:[/] {exc}")
            raise typer.Exit(1) from exc
        err.print(f"wrote {png}")


def _scorecards(store_url: str, *, days: float) -> list[Any]:
    """The log's scorecards (router/scorecard.py) over the last `days`: what each promotion is projected at."""
    import asyncio
    import time

    from minigate.conversion.promotion import read_measured

    now = time.time()
    return asyncio.run(read_measured(store_url, since=now - days * 86400, until=now)).cards
