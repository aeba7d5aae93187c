"""Where `tasks discover` and `replay` read calls from: a JSONL file, stdin, or the call log itself.

A file (or stdin, named `-`) holds Request JSONL or `logs export` lines; the call log gives its calls in a
time window with their payloads opened, every page read audited under the reader's name. Each command
turns a line or a logged row into its own kind of call (`observations.logged_observation`,
`replay.logged_call`); this module only reads, the same way for both.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from minigate.logger.export import export_calls
from minigate.logger.settings import LoggingSection

__all__ = ["count_lines", "input_lines", "read_log"]

T = TypeVar("T")


def input_lines(path: Path) -> Iterator[bytes]:
    """The lines of `path`, or of stdin for `-`; a file stays open only while its lines are read."""
    if str(path) == "-":
        yield from sys.stdin.buffer
        return
    with path.open("rb") as lines:
        yield from lines


def count_lines(path: Path) -> int:
    """Non-blank lines of a file: how long a progress bar over it is (OSError when it can't be read)."""
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def read_log(settings: LoggingSection, convert: Callable[[dict[str, Any]], T], *, since: float | None,
             until: float | None, actor: str, progress: Callable[[int], object] = lambda n: None) -> list[T]:
    """Every logged call from `since` until `until`, oldest first, payloads opened and each row converted.

    A list, not a stream: both readers keep every call anyway (discovery clusters them all, replay sorts
    them by score), and the store is closed before the work on them starts.
    """
    found: list[T] = []
    asyncio.run(export_calls(settings, since=since, until=until, actor=actor,
                             write=lambda rows: found.extend(map(convert, rows)), progress=progress))
    return found
