"""Keys made by `minigate keys create`, read from the log store: what every replica's key ring adds to the
config's keys.

Each replica reads the store's `api_keys` table every `auth.refresh_s` (a revocation holds everywhere within
that) and swaps what it read in whole, so a lookup never sees half a refresh. While the store can't be read, the
last keys read keep serving: a store outage must not lock every stored key out, nor revive a revoked one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from minigate.gateway.settings import KeyLimits, Role
from minigate.logger.stores import CallStore, StoredKey

__all__ = ["KnownKey", "StoredKeys", "describe_time"]

log = logging.getLogger("minigate.gateway")

_ROLES: tuple[Role, ...] = ("agent", "analyst", "admin")


@dataclass(frozen=True, slots=True)
class KnownKey:
    """A stored key as the ring needs it: who it is, and when it stops (expiry or revocation)."""

    name: str
    role: Role
    limits: KeyLimits | None
    expires_at: float | None
    revoked_at: float | None


class StoredKeys:
    """The store's keys by SHA-256 digest, shared by every config generation.

    >>> keys = StoredKeys()
    >>> keys.replace([StoredKey("ci", "ab" * 32, "agent", '{"rpm": 5}', 0.0, None, None)])
    >>> keys.by_digest[bytes.fromhex("ab" * 32)].limits.rpm
    5
    """

    def __init__(self) -> None:
        self.by_digest: dict[bytes, KnownKey] = {}
        self.by_name: dict[str, KnownKey] = {}
        self._unreadable: set[str] = set()
        self._failing = False

    def replace(self, rows: list[StoredKey]) -> None:
        known: dict[bytes, KnownKey] = {}
        for row in rows:
            try:
                known[bytes.fromhex(row.digest)] = _known(row)
            except ValueError as exc:  # a row edited by hand: that key is refused, the others serve
                if row.name not in self._unreadable:
                    log.error("stored API key %r is unreadable and refused: %s", row.name, exc)
                    self._unreadable.add(row.name)
        self.by_digest, self.by_name = known, {key.name: key for key in known.values()}

    async def refresh(self, store: CallStore | None) -> None:
        """Read the keys again; `store` is None while the log store is down. Never raises: while the store
        can't be read, the keys last read keep serving."""
        try:
            if store is not None:
                self.replace(await store.api_keys())
                if self._failing:
                    log.warning("stored API keys are read again from the log store")
                self._failing = False
        except Exception as exc:  # the store is down or slow
            if not self._failing:
                log.warning("cannot read stored API keys (%s: %s); the %d keys last read keep serving",
                            type(exc).__name__, exc, len(self.by_digest))
            self._failing = True

    async def refresh_forever(self, store: Callable[[], CallStore | None], every_s: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(every_s())
            await self.refresh(store())


def _known(row: StoredKey) -> KnownKey:
    """Raises ValueError (pydantic's ValidationError and orjson's JSONDecodeError are ones) for a bad row."""
    limits = KeyLimits.model_validate(orjson.loads(row.limits))
    if row.role not in _ROLES:
        raise ValueError(f"role {row.role!r} is none of {', '.join(_ROLES)}")
    return KnownKey(row.name, row.role, limits if limits.any else None, row.expires_at, row.revoked_at)


def describe_time(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
