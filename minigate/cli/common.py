"""What every `minigate` command shares: the `--config` option, exit codes, the two consoles, and the
translation of a room's typed error into one plain line and an exit code.

Off a terminal (a pipe, a file, a test) the consoles write plain text at an unbounded width: a message is
one line whatever `COLUMNS` says, so a program or a person grepping a log finds it whole. On a terminal
they keep rich's colours at the window's width.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from minigate.config import Config, load_config, resolve_config_path
from minigate.errors import ConfigError

__all__ = [
    "CONFIG_INVALID", "STARTUP_FAILURE", "CallsInputOption", "CatalogueOption", "ConfigOption", "SinceOption",
    "UntilOption", "actor", "bad_parameter_on", "catalogue_path", "config_or_exit", "err", "exit_on",
    "existing_catalogue", "fail", "load_or_exit", "out", "readable", "when",
]

STARTUP_FAILURE = 3  # the gateway (or a model server) could not start, as uvicorn's STARTUP_FAILURE
CONFIG_INVALID = 2  # a config, catalogue, key file or option the command can't use; click's usage errors are 2 too
_UNBOUNDED = 10_000  # columns off a terminal: lines as long as their content, tables never squeezed

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="Config file; default $MINIGATE_CONFIG, ./minigate.yaml, then the embedded example."),
]
# The calls a job reads: a JSONL file, or the config's call log between two times.
CallsInputOption = Annotated[Optional[Path], typer.Option(
    "--input", "-i", help="Request JSONL or `logs export` JSONL ('-': stdin); default: the config's call log.",
)]
# Every command that reads a task catalogue takes it the same way; `catalogue_path` applies the default.
CatalogueOption = Annotated[Optional[Path], typer.Option(
    "--catalogue", envvar="MINIGATE_TASKS_CATALOGUE",
    help="The task catalogue (`tasks discover` writes it); default: the config's tasks.catalogue, else "
    "./tasks.yaml.",
)]
SinceOption = Annotated[Optional[str], typer.Option(help="Logged calls from, unix seconds or ISO 8601.")]
UntilOption = Annotated[Optional[str], typer.Option(help="Logged calls until (exclusive).")]


def _console(*, stderr: bool) -> Console:
    """A terminal gets rich at its width; anything else plain text that no `COLUMNS` setting wraps."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, soft_wrap=True, width=None if stream.isatty() else _UNBOUNDED)


err = _console(stderr=True)  # messages, progress and logs
out = _console(stderr=False)  # the command's data: tables, notes


def fail(message: str, code: int = CONFIG_INVALID) -> NoReturn:
    """Stop the command with `error: <message>` on stderr; the message is text, never rich markup."""
    err.print(f"[red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def exit_on(*errors: type[Exception], code: int = CONFIG_INVALID) -> Iterator[None]:
    """A room's typed error (a broken key file, a plan that can't be made) ends the command with its message."""
    try:
        yield
    except errors as exc:
        fail(str(exc), code)


@contextmanager
def bad_parameter_on(*errors: type[Exception], hint: str | None = None) -> Iterator[None]:
    """An error caused by what the user typed is a usage error naming the option (`hint`), exit code 2."""
    try:
        yield
    except errors as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


@contextmanager
def readable(path: Path) -> Iterator[None]:
    """A `--input` file that can't be read is a usage error that says why."""
    try:
        yield
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="--input") from exc


def load_or_exit(path: Path) -> Config:
    """The config at `path`; an invalid one is reported with file, line and field, and exits 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print("[red]invalid config[/]")
        typer.echo(str(exc), err=True)
        raise typer.Exit(CONFIG_INVALID) from exc


def config_or_exit(option: Path | None) -> Config:
    """The config `--config` names, else `$MINIGATE_CONFIG`, `./minigate.yaml` or the embedded default."""
    return load_or_exit(resolve_config_path(option, os.environ))


def when(value: str | None, option: str) -> float | None:
    """A `--since`/`--until` value as unix seconds; a malformed one is a usage error naming the option."""
    from minigate.logger.stores import parse_time

    try:
        return None if value is None else parse_time(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def actor() -> str:
    """Who reads logged payloads, as the audit log records it."""
    import getpass

    return f"cli:{getpass.getuser()}"


def catalogue_path(option: Path | None, config: Config | Path | None) -> Path:
    """The catalogue a command reads: `--catalogue` (or $MINIGATE_TASKS_CATALOGUE), else the config's
    `tasks.catalogue`, else `./tasks.yaml`. `config` is the loaded config, or the `--config` option to
    load one from (only when no catalogue was named: a command given both doesn't need the config)."""
    if option is not None:
        return option
    loaded = config if isinstance(config, Config) else config_or_exit(config)
    return loaded.tasks.catalogue or Path("tasks.yaml")


def existing_catalogue(path: Path) -> Path:
    """`path`, when a catalogue is there; else the command stops and says how to make one."""
    if not path.is_file():
        fail(f"no catalogue at {path}: run `minigate tasks discover` first")
    return path
