"""`minigate redact`: try the call log's redactor on text."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional

import typer

from minigate.cli.common import err

__all__ = ["redact"]


def redact(
    input_file: Annotated[
        Optional[Path], typer.Option("--input", "-i", exists=True, dir_okay=False, help='Text, or JSONL {"id", "text"}, one record a line; default stdin.')
    ] = None,
    output_file: Annotated[Optional[Path], typer.Option("--output", "-o", help="JSONL output; default stdout.")] = None,
) -> None:
    """Redact PII: one line {"id", "text", "spans"} per input line, span offsets into the original text."""
    import contextlib
    import io
    import sys

    import orjson
    import rich.progress

    from minigate.logger.redact import Redactor, redact_lines

    with contextlib.ExitStack() as stack:
        source: Iterable[str]
        if input_file is None:
            source = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        else:  # a bar only for a file (a known size) on a terminal: piped stderr stays quiet
            reader = rich.progress.open(
                input_file, "rt", encoding="utf-8", errors="replace", description="redacting", console=err,
                disable=not err.is_terminal,
            )  # fmt: skip
            source = stack.enter_context(reader)
        sink = stack.enter_context(output_file.open("wb")) if output_file else sys.stdout.buffer
        for record in redact_lines(source, Redactor()):
            sink.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        sink.flush()
