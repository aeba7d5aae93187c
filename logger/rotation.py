"""Log-key rotation: re-wrap every stored payload's data key, and every stored response's, under the current
log key.

Only the 65-byte envelope of each blob changes (see crypto.py), so a rotation over millions of records
moves no conversation text and never holds a plaintext payload. Batches commit one by one: an
interrupted rotation is simply run again, and it picks up what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from minigate.logger.crypto import PayloadCipher
from minigate.logger.stores import CallStore, SealedPayloads, open_store

__all__ = ["Rotation", "rewrap_store", "rotate_store"]


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did: records re-wrapped, and records per log-key id once it finished.

    >>> Rotation(3, {"a1": 3}).usage["a1"]
    3
    """

    rewrapped: int
    usage: dict[str, int]


async def rotate_store(url: str, cipher: PayloadCipher, *, pending: Callable[[int], object] = lambda count: None,
                       progress: Callable[[int], None] = lambda done: None) -> Rotation:
    """Re-wrap the store at `url` under the cipher's current key.

    `pending` hears first how many records are under other keys (the length of a progress bar), then
    `progress` how many each batch re-wrapped.
    """
    store = await open_store(url)
    try:
        usage = await store.key_usage()
        pending(sum(count for kid, count in usage.items() if kid != cipher.key_id))
        done = await rewrap_store(store, cipher, progress=progress)
        return Rotation(done, await store.key_usage())
    finally:
        await store.close()


async def rewrap_store(store: CallStore, cipher: PayloadCipher, *, batch_size: int = 500,
                       progress: Callable[[int], None] = lambda done: None) -> int:
    """Re-wrap every record and stored response not under the cipher's current key; returns how many changed."""
    done, after = 0, ""
    while rows := await store.sealed(not_key_id=cipher.key_id, after=after, limit=batch_size):
        resealed = [SealedPayloads(row.request_id, _rewrap(cipher, row.request_payload),
                                   _rewrap(cipher, row.response_payload)) for row in rows]
        await store.reseal(resealed, cipher.key_id)
        done += len(rows)
        after = rows[-1].request_id
        progress(len(rows))
    return done + await _rewrap_responses(store, cipher, batch_size, progress)


async def _rewrap_responses(store: CallStore, cipher: PayloadCipher, batch_size: int,
                            progress: Callable[[int], None]) -> int:
    done, after = 0, ""
    while rows := await store.sealed_responses(not_key_id=cipher.key_id, after=after, limit=batch_size):
        for row in rows:
            await store.put_response(replace(row, sealed=cipher.rewrap(row.sealed) or row.sealed, key_id=cipher.key_id))
        done += len(rows)
        after = rows[-1].id
        progress(len(rows))
    return done


def _rewrap(cipher: PayloadCipher, blob: bytes | None) -> bytes | None:
    if blob is None:
        return None
    return cipher.rewrap(blob) or blob
