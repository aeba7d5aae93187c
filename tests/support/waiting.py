"""Waiting for what a server does in the background (a batch written, a reload applied, a scrape taken).

One helper instead of a polling loop per test file, so that every wait has a bound and every timeout
says which condition, written where, was still false and what it last returned. The bound is generous
(a busy two-core machine writes a batch late); a wait that succeeds returns at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["eventually", "eventually_async"]

T = TypeVar("T")


def eventually(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Call `condition` until it returns something truthy, and return that; fail the test after `timeout` s.

    Exceptions from `condition` propagate at once: a dead server should fail the wait, not be polled.

    >>> eventually(lambda: 42)
    42
    >>> eventually(lambda: [], timeout=0.1, what="the queue has drained")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    AssertionError: not within 0.1 s: the queue has drained (<doctest ...>:1); last returned []
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        _fail_after(deadline, timeout, condition, what, value)
        time.sleep(interval)
    return value


async def eventually_async(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.02,
                           what: str = "") -> T:
    """`eventually` for a test whose event loop runs the code it waits for: it sleeps without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        _fail_after(deadline, timeout, condition, what, value)
        await asyncio.sleep(interval)
    return value


def _fail_after(deadline: float, timeout: float, condition: Callable[[], object], what: str, value: object) -> None:
    if time.monotonic() > deadline:
        raise AssertionError(f"not within {timeout:g} s: {_describe(condition, what)}; last returned {value!r}")


def _describe(condition: Callable[[], object], what: str) -> str:
    """Name the condition by its words when given, and always by where it is written (file:line)."""
    code = getattr(condition, "__code__", None)
    where = f"{Path(code.co_filename).name}:{code.co_firstlineno}" if code else repr(condition)
    return f"{what} ({where})" if what else f"the condition at {where}"
