"""The replicas of one upstream: least-outstanding balancing, a circuit breaker per base URL, retry waits.

Plain state and decisions over a clock the caller passes in; `upstream.py` does the IO. Only calls that
cannot have been processed are retried (a refused connection, 429, 503): a retried call that an upstream
had already run would be billed twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from minigate.serving.settings import Breaker, Retry

__all__ = ["Attempt", "BreakerState", "Replica", "Replicas", "backoff", "retry_wait", "without_credentials"]

BreakerState = Literal["closed", "open", "half_open"]

_FIRST_BACKOFF_S = 0.1  # doubled on each retry of a 503 or connect error, capped by retry.max_wait_s


@dataclass(frozen=True)
class Attempt:
    """One call to one base URL: its status, or why there was none, and its latency to the reply's headers."""

    base_url: str
    status: int | None
    error: str | None
    latency_s: float


@dataclass
class Replica:
    """One base URL and what the balancer and breaker know of it."""

    base_url: str
    outstanding: int = 0  # calls sent whose reply is not yet closed
    failures: int = 0  # consecutive
    opened_at: float | None = None  # when the breaker last opened; None while closed
    is_probing: bool = False  # the one half-open call is under way

    @property
    def shown_url(self) -> str:
        """The base URL as logs, call records and operators may see it: without a user or password."""
        return without_credentials(self.base_url)

    def state(self, now: float, breaker: Breaker | None) -> BreakerState:
        if breaker is None or self.opened_at is None:
            return "closed"
        return "half_open" if now - self.opened_at >= breaker.open_s else "open"


def without_credentials(url: str) -> str:
    """`url` with any `user:password@` removed (kept: scheme, host, port, path)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class Replicas:
    """Picks the base URL for each call and records how the call went.

    >>> replicas = Replicas(["http://a/v1", "http://b/v1"], Breaker(failures=1, open_s=30))
    >>> first = replicas.pick(now=0.0, tried=set())
    >>> replicas.record(first, now=0.0, failed=True)  # a's breaker opens
    >>> replicas.pick(now=1.0, tried=set()).base_url
    'http://b/v1'
    """

    def __init__(self, base_urls: Sequence[str], breaker: Breaker | None) -> None:
        self.replicas = [Replica(url.rstrip("/")) for url in base_urls]
        self.breaker = breaker
        self._turn = 0  # round robin among replicas tied on outstanding calls

    def pick(self, now: float, tried: set[str]) -> Replica | None:
        """The usable replica with the fewest outstanding calls, preferring those not yet tried; None if all are open."""
        usable = [r for r in self.replicas if self._is_usable(r, now)]
        candidates = [r for r in usable if r.base_url not in tried] or usable
        if not candidates:
            return None
        fewest = min(r.outstanding for r in candidates)
        tied = [r for r in candidates if r.outstanding == fewest]
        chosen = tied[self._turn % len(tied)]
        self._turn += 1
        if chosen.state(now, self.breaker) == "half_open":
            chosen.is_probing = True
        return chosen

    def record(self, replica: Replica, now: float, failed: bool | None) -> None:
        """How a call went: failed (connect error, timeout, 5xx), succeeded, or None when it was abandoned."""
        if failed is None:
            replica.is_probing = False  # a cancelled probe proves nothing: let the next call probe
        elif not failed:
            replica.failures, replica.opened_at, replica.is_probing = 0, None, False
        else:
            replica.failures += 1
            if self.breaker is not None and (replica.is_probing or replica.failures >= self.breaker.failures):
                replica.opened_at = now
            replica.is_probing = False

    def reopens_in(self, now: float) -> float:
        """Seconds until the first open breaker lets a probe through."""
        if self.breaker is None:
            return 0.0
        opened = [r.opened_at for r in self.replicas if r.opened_at is not None]
        return max(0.0, min(opened, default=now) + self.breaker.open_s - now)

    def _is_usable(self, replica: Replica, now: float) -> bool:
        state = replica.state(now, self.breaker)
        return state == "closed" or (state == "half_open" and not replica.is_probing)


def retry_wait(status: int, retry_after: str | None, retry: Retry, retries_done: int) -> float | None:
    """Seconds to wait before retrying a reply with this status, or None when it must not be retried.

    429 and 503 say the upstream did not run the call. Their `Retry-After` (in seconds) is honoured; one
    longer than `max_wait_s` is not retried, since calling sooner would be refused again, and the client
    gets the reply with its `Retry-After`. Without one, the wait doubles from 0.1 s.

    >>> retry_wait(429, "1", Retry(attempts=2, max_wait_s=2), retries_done=0)
    1.0
    >>> retry_wait(429, "30", Retry(attempts=2, max_wait_s=2), retries_done=0) is None
    True
    """
    if status not in (429, 503) or retries_done >= retry.attempts:
        return None
    asked = _seconds(retry_after)
    if asked is None:
        return backoff(retry, retries_done)
    return asked if asked <= retry.max_wait_s else None


def backoff(retry: Retry, retries_done: int) -> float:
    """The wait before retry number `retries_done + 1` when the upstream named none."""
    return min(_FIRST_BACKOFF_S * 2.0**retries_done, retry.max_wait_s)


def _seconds(retry_after: str | None) -> float | None:
    # An HTTP-date Retry-After is rare from model APIs; it falls back to the backoff.
    try:
        value = float(retry_after) if retry_after is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None
