"""Where sealing runs: in worker processes, so that redaction never competes with the event loop.

Redaction and payload parsing are pure-Python CPU work. In a thread of the gateway's process they
would hold the GIL the event loop needs to serve requests; in a worker process they take another
core, and the gateway only pickles raw records out and sealed records back (a memory copy each).
Workers come from a forkserver: forked from a clean interpreter, never from the gateway's threads
and event loop, with the redaction lexicons already loaded (`minigate.logger.seal.worker`), so they
start in milliseconds. A worker ignores SIGINT and SIGTERM: stopping is the gateway's decision, made
by draining the queue and shutting the pool down in order. A gateway killed outright (SIGKILL) leaves
no process behind: workers exit when the gateway's end of their pipe closes, and the forkserver and
resource tracker then see EOF on theirs (`minigate.logger.seal.worker`).

`Sealer.seal` never raises for a record's content, so one bad record cannot cost its batch.

When a worker dies mid-batch, the batch is sealed in a thread instead and the pool is rebuilt for
the next one: a broken worker may cost speed, never a record.

    >>> pool = SealerPool(Sealer.from_settings(settings), processes=1)  # doctest: +SKIP
    >>> sealed = await pool.seal(batch); pool.close()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import anyio

from minigate.logger.records import CallRecord
from minigate.logger.seal.sealer import Sealer, SealerRecipe

__all__ = ["SealerPool"]

log = logging.getLogger("minigate.logger")


class SealerPool:
    """Seals batches of records in `processes` worker processes, or in a thread when `processes` is 0."""

    def __init__(self, sealer: Sealer, processes: int) -> None:
        self.sealer = sealer
        self.processes = processes
        self._executor = self._new_executor()

    async def seal(self, batch: list[CallRecord], *, measure_only: bool = False) -> list[CallRecord]:
        """The batch, sealed (or, with `measure_only`, only given tokens and cost), in order."""
        if self._executor is None or measure_only:
            await anyio.to_thread.run_sync(_seal_here, self.sealer, batch, measure_only)
            return batch
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, _seal_in_worker, batch)
        except BrokenProcessPool:
            log.error("call log: a sealing worker process died; sealing this batch in a thread, "
                      "starting a new worker for the next")
            self._executor.shutdown(wait=False)
            self._executor = self._new_executor()
            await anyio.to_thread.run_sync(_seal_here, self.sealer, batch, False)
            return batch

    def close(self) -> None:
        """Stop the workers (blocking: call it from a thread); batches in flight finish first."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _new_executor(self) -> ProcessPoolExecutor | None:
        if self.processes == 0 or self.sealer.recipe is None:
            return None
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["minigate.logger.seal.worker"])
        return ProcessPoolExecutor(self.processes, mp_context=context, initializer=_start_worker,
                                   initargs=(self.sealer.recipe,))


def _seal_here(sealer: Sealer, batch: list[CallRecord], measure_only: bool) -> None:
    for record in batch:
        if measure_only:
            sealer.measure(record)
        else:
            sealer.seal(record)



# Trampolines: the gateway's process must not import `seal_worker` (its import loads the lexicons,
# which only the workers need); a worker has it preloaded, so these imports cost a lookup.
def _start_worker(recipe: SealerRecipe) -> None:
    from minigate.logger.seal.worker import start_worker

    start_worker(recipe)


def _seal_in_worker(batch: list[CallRecord]) -> list[CallRecord]:
    from minigate.logger.seal.worker import seal_batch

    return seal_batch(batch)
