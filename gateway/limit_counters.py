"""Where rate-limit and budget counters live: this process's memory, or Redis, shared by every replica.

Both backends do the same three things. `admit` checks a request's counters and, only when every one has room,
adds to those it counts at admission (requests), as one atomic step: in Redis a Lua script, so two replicas
can never both take the last request of a minute. `add` charges what a call used once the call log has
measured it (tokens, USD). `raise_to` lifts a counter to at least a value (spend reconciled from the call log).
Every counter expires with its window, so nothing is ever swept by hand in Redis.

All of one key's counters share a Redis Cluster hash slot (`{...}` in their names), so one script may touch them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Check", "Counters", "CountersDown", "MemoryCounters", "RedisCounters"]


@dataclass(frozen=True, slots=True)
class Check:
    """One counter a request must fit: room means `value + add <= limit` (`value < limit` when `add` is 0)."""

    name: str
    limit: float
    add: float
    ttl_s: int


class CountersDown(Exception):
    """The backend did not answer (Redis unreachable or too slow): the limiter applies `limits.fail`."""


class Counters(Protocol):
    async def admit(self, checks: Sequence[Check]) -> tuple[int, list[float]]:
        """(-1, values after adding) when every check has room; else (index of the first without, values read),
        and nothing is added."""
        ...

    async def add(self, amounts: Sequence[tuple[str, float, int]]) -> None:
        """Add `amount` to each named counter, which expires after `ttl_s` if new."""
        ...

    async def raise_to(self, values: Sequence[tuple[str, float, int]]) -> None:
        """Set each named counter to at least `value`."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def _fits(value: float, check: Check) -> bool:
    return value + check.add <= check.limit if check.add else value < check.limit


class MemoryCounters:
    """Counters in a dict: per process, so per replica and per worker (DESIGN: without `limits.redis_url`).

    >>> import asyncio
    >>> counters = MemoryCounters()
    >>> asyncio.run(counters.admit([Check("k:rpm:1", 1, 1, 60)]))
    (-1, [1.0])
    >>> asyncio.run(counters.admit([Check("k:rpm:1", 1, 1, 60)]))
    (0, [1.0])
    """

    _SWEEP_EVERY = 4096  # counters made between sweeps of expired ones

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, float]] = {}  # name -> (value, expires at, monotonic)
        self._made = 0

    async def admit(self, checks: Sequence[Check]) -> tuple[int, list[float]]:
        now = time.monotonic()
        values = [self._value(check.name, now) for check in checks]
        for index, (value, check) in enumerate(zip(values, checks, strict=True)):
            if not _fits(value, check):
                return index, values
        for index, check in enumerate(checks):
            if check.add:
                values[index] = self._add(check.name, check.add, check.ttl_s, now)
        return -1, values

    async def add(self, amounts: Sequence[tuple[str, float, int]]) -> None:
        now = time.monotonic()
        for name, amount, ttl_s in amounts:
            self._add(name, amount, ttl_s, now)

    async def raise_to(self, values: Sequence[tuple[str, float, int]]) -> None:
        now = time.monotonic()
        for name, value, ttl_s in values:
            current = self._value(name, now)
            if value > current:
                self._add(name, value - current, ttl_s, now)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _value(self, name: str, now: float) -> float:
        found = self._values.get(name)
        return found[0] if found is not None and found[1] > now else 0.0

    def _add(self, name: str, amount: float, ttl_s: int, now: float) -> float:
        found = self._values.get(name)
        if found is None or found[1] <= now:
            found = (0.0, now + ttl_s)
            self._made += 1
            if self._made % self._SWEEP_EVERY == 0:
                self._values = {key: kept for key, kept in self._values.items() if kept[1] > now}
        value = found[0] + amount
        self._values[name] = (value, found[1])
        return value


# KEYS: the counters; ARGV: limit, add, ttl for each. Returns {index of the first without room (0: all fit),
# values as strings}: Lua numbers would reach the client truncated to integers.
_ADMIT = """
local values = {}
for i = 1, #KEYS do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local limit, add = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  if (add > 0 and value + add > limit) or (add == 0 and value >= limit) then
    for j = i, #KEYS do values[j] = tostring(value) end
    return {i, values}
  end
  values[i] = tostring(value)
end
for i = 1, #KEYS do
  local add = tonumber(ARGV[3 * i - 1])
  if add > 0 then
    values[i] = redis.call('INCRBYFLOAT', KEYS[i], add)
    if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[3 * i]) end
  end
end
return {0, values}
"""

_ADD = """
for i = 1, #KEYS do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i - 1])
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i]) end
end
return #KEYS
"""

_RAISE = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') < tonumber(ARGV[2 * i - 1]) then
    redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', ARGV[2 * i])
  end
end
return #KEYS
"""


_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_ADMIT, _ADD, _RAISE)}


class RedisCounters:
    """Counters in Redis, one round trip per admission (an EVALSHA of `_ADMIT`).

    >>> counters = RedisCounters.connect("redis://127.0.0.1:6379/0", timeout_s=0.25)  # doctest: +SKIP
    """

    def __init__(self, client: Redis) -> None:
        self._client = client

    @classmethod
    def connect(cls, url: str, *, timeout_s: float) -> RedisCounters:
        from redis.asyncio import Redis  # imported only when configured

        return cls(Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                  health_check_interval=30))

    async def admit(self, checks: Sequence[Check]) -> tuple[int, list[float]]:
        args: list[str | float | int] = []
        for check in checks:
            args += (check.limit, check.add, check.ttl_s)
        first, values = await self._run(_ADMIT, [check.name for check in checks], args)
        return int(first) - 1, [float(value) for value in values]

    async def add(self, amounts: Sequence[tuple[str, float, int]]) -> None:
        await self._run(_ADD, [name for name, _, _ in amounts], [x for _, a, t in amounts for x in (a, t)])

    async def raise_to(self, values: Sequence[tuple[str, float, int]]) -> None:
        await self._run(_RAISE, [name for name, _, _ in values], [x for _, v, t in values for x in (v, t)])

    async def ping(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise CountersDown(_describe(exc)) from exc

    async def close(self) -> None:
        await self._client.aclose()

    async def _run(self, script: str, keys: list[str], args: list[str | float | int]) -> Any:
        """EVALSHA, loading the script the first time a server lacks it (a new or restarted Redis); called
        directly rather than through redis-py's Script object, which costs a fifth of the round trip."""
        from redis.exceptions import NoScriptError, RedisError

        try:
            try:
                return await self._client.evalsha(_SHA[script], len(keys), *keys, *args)
            except NoScriptError:
                await self._client.script_load(script)
                return await self._client.evalsha(_SHA[script], len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise CountersDown(_describe(exc)) from exc


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
