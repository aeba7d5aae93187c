"""The sealing worker process's side of `minigate.logger.seal_pool`.

The pool's forkserver imports this module once, ahead of any worker (`set_forkserver_preload`), and
the import loads the redaction lexicons (names, words: about a second of reading). Every worker is
forked from that server, so each starts with the lexicons already in memory, shared copy-on-write,
instead of reading them again: a gateway's first batch, or a replacement for a dead worker, is
sealed within milliseconds of being sent.
"""

from __future__ import annotations

import signal

from minigate.logger.records import CallRecord
from minigate.logger.redact import Redactor
from minigate.logger.seal import Sealer, SealerRecipe

__all__ = ["seal_batch", "start_worker"]

_sealer: Sealer | None = None  # this worker's sealer, built once by `start_worker` (the pool's initializer)


def start_worker(recipe: SealerRecipe) -> None:
    """Build the worker's sealer. Stopping is the gateway's call: it drains the queue, then shuts the pool."""
    global _sealer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _sealer = Sealer.from_recipe(recipe)


def seal_batch(batch: list[CallRecord]) -> list[CallRecord]:
    assert _sealer is not None, "the pool's initializer builds the sealer"
    for record in batch:
        _sealer.seal(record)
    return batch


Redactor().redact("Jane Doe, 1 Main Street, jane@example.com")  # loads the lexicons: see the docstring
