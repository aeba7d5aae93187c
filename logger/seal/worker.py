"""The sealing worker process's side of `minigate.logger.seal.pool`.

The pool's forkserver imports this module once, ahead of any worker (`set_forkserver_preload`), and
the import loads the redaction lexicons (names, words: about a second of reading). Every worker is
forked from that server, so each starts with the lexicons already in memory, shared copy-on-write,
instead of reading them again: a gateway's first batch, or a replacement for a dead worker, is
sealed within milliseconds of being sent.

A worker ignores SIGINT and SIGTERM (stopping is the gateway's call), so it must notice by itself
when the gateway dies, even by SIGKILL: it watches the gateway's end of the pipe multiprocessing
keeps open to each child (`parent_process().sentinel`), and exits when that closes. A parent-death
signal (`PR_SET_PDEATHSIG`) would not do: a worker's parent is the forkserver, not the gateway. Once
the workers are gone, the forkserver and the resource tracker exit too, on EOF of their own pipes.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading

from minigate.logger.records import CallRecord
from minigate.logger.redact import Redactor
from minigate.logger.seal.sealer import Sealer, SealerRecipe

__all__ = ["seal_batch", "start_worker"]

_sealer: Sealer | None = None  # this worker's sealer, built once by `start_worker` (the pool's initializer)
_ORPHANED = 70  # exit status of a worker whose gateway is gone (EX_SOFTWARE: nobody reads it anyway)


def start_worker(recipe: SealerRecipe) -> None:
    """Build the worker's sealer. Stopping is the gateway's call: it drains the queue, then shuts the pool."""
    global _sealer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with_the_gateway()
    _sealer = Sealer.from_recipe(recipe)


def seal_batch(batch: list[CallRecord]) -> list[CallRecord]:
    """Each record sealed on its own: `Sealer.seal` never raises for a record's content."""
    assert _sealer is not None, "the pool's initializer builds the sealer"
    for record in batch:
        _sealer.seal(record)
    return batch


def _exit_with_the_gateway() -> None:
    parent = multiprocessing.parent_process()
    assert parent is not None, "a pool worker has a parent process"
    threading.Thread(target=_exit_when_closed, args=(parent.sentinel,), name="gateway-watch", daemon=True).start()


def _exit_when_closed(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # readable only at EOF: the gateway's end is gone
    os._exit(_ORPHANED)  # at once: a half-sealed batch has nobody left to return to


Redactor().redact("Jane Doe, 1 Main Street, jane@example.com")  # loads the lexicons: see the docstring
