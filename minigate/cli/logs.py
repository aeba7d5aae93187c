"""`minigate logs`: migrate the call-log store, export its records."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from minigate.cli.common import CONFIG_INVALID, ConfigOption, actor, config_or_exit, err, exit_on, when

__all__ = ["app"]

app = typer.Typer(help="The call log: migrate its store, export its records.", no_args_is_help=True)


@app.command("migrate")
def logs_migrate(config: ConfigOption = None) -> None:
    """Apply the call-log store's pending schema migrations (serve also does this at start-up)."""
    import asyncio

    from minigate.logger.stores import open_store

    cfg = config_or_exit(config)

    async def migrate() -> None:
        store = await open_store(cfg.logging.store)
        await store.close()

    asyncio.run(migrate())
    err.print(f"[green]call-log store is at the current schema[/] ({cfg.logging.store.split('@')[-1]})")


@app.command("export")
def logs_export(
    config: ConfigOption = None,
    since: Annotated[Optional[str], typer.Option(help="Start, unix seconds or ISO 8601.")] = None,
    until: Annotated[Optional[str], typer.Option(help="End (exclusive), unix seconds or ISO 8601.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file; default stdout (JSONL).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, or parquet (the parquet extra; needs --output).")] = "jsonl",
) -> None:
    """Write every logged call with metadata and decrypted, redacted payloads (each read is audited)."""
    import asyncio

    from rich.progress import Progress, SpinnerColumn, TextColumn

    from minigate.logger.export import export_calls

    if fmt not in ("jsonl", "parquet"):
        raise typer.BadParameter("choose jsonl or parquet", param_hint="--format")
    cfg = config_or_exit(config)
    write, close = _parquet_sink(output) if fmt == "parquet" else _jsonl_sink(output)
    with Progress(SpinnerColumn(), TextColumn("{task.completed} calls exported"), console=err,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("export", total=None)
        try:
            count = asyncio.run(export_calls(
                cfg.logging, since=when(since, "--since"), until=when(until, "--until"), actor=actor(), write=write,
                progress=lambda n: bar.advance(task, n),
            ))
        finally:
            close()
    err.print(f"{count} calls exported")


_Sink = tuple[Callable[[list[dict[str, Any]]], object], Callable[[], object]]  # write a page, close


def _parquet_sink(output: Path | None) -> _Sink:
    from minigate.logger.parquet_export import ParquetSink

    if output is None:
        raise typer.BadParameter("Parquet is binary: name a file with --output", param_hint="--format")
    with exit_on(RuntimeError, code=CONFIG_INVALID):  # the parquet extra is not installed
        sink = ParquetSink(output)
    return sink.write, sink.close


def _jsonl_sink(output: Path | None) -> _Sink:
    from minigate.logger.export import jsonl

    stream = output.open("wb") if output else sys.stdout.buffer
    return jsonl(stream.write), (stream.close if output else stream.flush)
