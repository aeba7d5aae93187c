"""Sealing that cannot stop the call log: one bad record costs its payload, never the batch or the writer.

A batch whose sealing raises (a body nested too deep for the encoder, a redaction bug) is sealed again
record by record, so only the records that fail on their own are affected. Such a record is kept with
its metadata only: every piece of raw material (request, reply, user) is cleared, because the log
never stores text it could not redact. It is logged at ERROR with its request id and counted in
`minigate_log_records_unsealable_total`.

    >>> guard = SealGuard(SealerPool(sealer, 1), registry)  # doctest: +SKIP
    >>> sealed = await guard.seal(batch, measure_only=False)  # never raises for a record's content  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import logging

from prometheus_client import CollectorRegistry, Counter

from minigate.logger.records import CallRecord
from minigate.logger.seal.pool import SealerPool

__all__ = ["SealGuard", "metadata_only"]

log = logging.getLogger("minigate.logger")


class SealGuard:
    """Seals batches through a `SealerPool`, isolating the records whose sealing fails."""

    def __init__(self, pool: SealerPool, registry: CollectorRegistry) -> None:
        self.pool = pool
        self.unsealable = Counter(
            "minigate_log_records_unsealable",
            "Call records stored with their metadata only: their payloads could not be sealed.",
            registry=registry,
        )

    async def seal(self, batch: list[CallRecord], *, measure_only: bool) -> list[CallRecord]:
        """The batch, sealed, in order; a record that can't be sealed comes back with its metadata only."""
        # A thread seals records in place, so a failed batch may be half sealed: a retry needs them as they came.
        originals = [copy.copy(record) for record in batch]
        try:
            return await self.pool.seal(batch, measure_only=measure_only)
        except Exception as exc:
            log.warning("call log: sealing a batch of %d records failed (%s: %s); sealing them one by one",
                        len(batch), type(exc).__name__, exc)
        return [await self._seal_one(record, measure_only) for record in originals]

    async def _seal_one(self, record: CallRecord, measure_only: bool) -> CallRecord:
        try:
            [sealed] = await self.pool.seal([copy.copy(record)], measure_only=measure_only)
        except Exception as exc:
            log.error("call log: record %s cannot be sealed (%s: %s); storing its metadata only, no payload",
                      record.request_id, type(exc).__name__, exc)
            self.unsealable.inc()
            return metadata_only(record)
        return sealed

    def close(self) -> None:
        """Stop the pool's workers (blocking: call it from a thread)."""
        self.pool.close()


def metadata_only(record: CallRecord) -> CallRecord:
    """A copy of `record` without raw material or payloads: what may be stored when sealing failed."""
    return dataclasses.replace(
        record, request_body=None, user=None, reply=None, chunks=None, rate=None, counterfactual_rate=None,
        client_id=None, request_payload=None, response_payload=None, key_id=None,
    )
