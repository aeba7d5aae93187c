"""The `minigate` command: thin subcommands that build a config, call the library, and return an exit code.

One module per command group (`serve.py` holds serve, check and version); `common.py` holds what they
share. Every module imports the rooms inside its commands only, so `minigate --help` loads none of them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

from minigate.cli import dataset, keys, logs, route, router, serving, tasks
from minigate.cli import quality as _quality  # noqa: F401  (adds scorecard, promote and demote to `tasks`)
from minigate.cli.common import err
from minigate.cli.finetune import finetune
from minigate.cli.redact import redact
from minigate.cli.replay import replay
from minigate.cli.report import report
from minigate.cli.serve import check, serve, version

__all__ = ["app"]

# The click that typer runs on (typer 0.2x vendors its own copy), for its usage errors' base class.
_UsageError: Any = sys.modules[typer.BadParameter.__module__].UsageError


class _Command(TyperGroup):
    """The top-level command: off a terminal, a usage error (a bad option, a `BadParameter`) is plain text.

    typer draws a usage error in a rich panel wrapped at the terminal's width (COLUMNS, else 80 columns):
    off a terminal the message came out split across lines inside a box, and a program or a test reading
    stderr found it in pieces. Off a terminal, click's own `Error: ...` line reports it instead; a terminal
    keeps the panel, and help keeps its format everywhere. Subcommands are parsed and run inside this
    command's `invoke`, so this covers every command.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _plain_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _plain_usage_errors():
            return super().invoke(ctx)


@contextmanager
def _plain_usage_errors() -> Iterator[None]:
    try:
        yield
    except _UsageError as exc:
        # A bare group's help comes as NoArgsIsHelpError (typer names it too): rich has printed it already.
        if err.is_terminal or type(exc).__name__ == "NoArgsIsHelpError":
            raise
        exc.show()
        raise typer.Exit(exc.exit_code) from None


app = typer.Typer(cls=_Command, help="minigate: an OpenAI-compatible gateway that routes agent calls to miniatures.",
                  no_args_is_help=True)
for command in (serve, check, redact, version, report, replay, finetune):
    app.command()(command)
for name, group in (("logs", logs.app), ("keys", keys.app), ("route", route.app), ("router", router.app),
                    ("tasks", tasks.app), ("dataset", dataset.app), ("serving", serving.app)):
    app.add_typer(group, name=name)
