"""Per-key rate limits and spend budgets: the check on the request path, and the charges after it.

A key's `limits` (and its `limits.routes.<route>`, which apply on top for calls to that route) set requests and
tokens per clock minute, and USD per UTC day and calendar month. A request is admitted when every counter it
touches has room; admission counts the request itself. Tokens and USD are charged once the call log has
measured the call (its writer's `observe`, off the request path), with the very cost the log stores, so a
budget stops a key at the spend its own call log shows. Until a call is measured its tokens and cost are not
counted: a key may overshoot a budget by the calls in flight when it ran out, never by more.

Every `limits.reconcile_s` (and at start), spend counters are raised to what the call log holds for the day and
month: after Redis lost its data, or a process restarted with counters in memory, a budget still holds.

Redis unreachable (or slower than `limits.timeout_s`): `limits.fail: open` serves limited keys unchecked,
`closed` refuses them with 503; either way `/readyz` and `minigate_limits_backend_up` say so, and Redis is left
alone for a second before it is tried again, so an outage costs no request a timeout.

Refusals are OpenAI's: 429 with type `requests` or `tokens` and code `rate_limit_exceeded`, or type
`insufficient_quota` for a budget; `Retry-After`, and the `x-ratelimit-*` headers OpenAI sends (on every
answer to a rate-limited key, too).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from minigate.errors import ServiceUnavailable, TooManyRequests
from minigate.gateway.auth import Caller
from minigate.gateway.limit_counters import Check, Counters, CountersDown, MemoryCounters, RedisCounters
from minigate.gateway.settings import KeyLimits, Limits, LimitsSection
from minigate.gateway.stored_keys import describe_time
from minigate.logger.records import CallRecord

__all__ = ["Limiter"]

log = logging.getLogger("minigate.gateway")

_MINUTE_TTL_S = 120  # a minute's counters outlive it a little, for clocks a little apart
_CHARGE_EVERY_S = 0.05  # measured calls are charged in batches: one Redis round trip each
_RETRY_DOWN_S = 1.0  # after a failure, Redis is left alone this long
_ALL_ROUTES = "*"
_MAX_PLANS = 100_000  # (key, route) pairs whose checks are kept; beyond, the cache starts afresh

Spend = Callable[[float], Awaitable[dict[tuple[str, str], float]]]  # since -> (key, route) -> USD


@dataclass(frozen=True, slots=True)
class _Window:
    """What a check stands for, to word a refusal and its headers."""

    scope: str  # a route, or _ALL_ROUTES
    limit: str  # rpm | tpm | usd_per_day | usd_per_month
    resets_at: float  # unix seconds


class Limiter:
    """Checks and charges one gateway's limited keys.

    >>> limiter = Limiter(LimitsSection(), CollectorRegistry(), limited=lambda: [], limits_of=lambda name: None)
    >>> import asyncio; asyncio.run(limiter.admit(Caller("open", "admin"), "gpt-4.1"))
    {}
    """

    def __init__(self, section: LimitsSection, registry: CollectorRegistry, *,
                 limited: Callable[[], Iterable[tuple[str, KeyLimits]]],
                 limits_of: Callable[[str], KeyLimits | None], spend: Spend | None = None) -> None:
        self.section = section
        self.shared = section.redis_url is not None
        url = section.redis_url.get_secret_value() if section.redis_url is not None else None
        self._counters: Counters = (RedisCounters.connect(url, timeout_s=section.timeout_s) if url is not None
                                    else MemoryCounters())
        self._limited, self._limits_of, self._spend = limited, limits_of, spend
        self._charges: list[tuple[str, float, int]] = []
        self._down: str | None = None  # why the counters can't be reached, while they can't
        self._retry_at = 0.0  # monotonic: when to try them again
        self._months: tuple[int, str, float] = (-1, "", 0.0)  # day number -> its month's id and end
        self._plans: dict[tuple[str, str], tuple[int, KeyLimits, list[Check], list[_Window]]] = {}
        self.rejections = Counter(
            "minigate_limit_rejections",
            "Requests refused by a key's rate limit or budget, by key, route (empty: the key's limit over all "
            "routes) and limit (rpm, tpm, usd_per_day, usd_per_month).",
            ["key", "route", "limit"], registry=registry)
        self.unchecked = Counter(
            "minigate_limits_unchecked",
            "Requests of limited keys met while the limit counters (Redis) were unreachable, by what "
            "limits.fail did with them: admitted (open) or refused (closed).",
            ["outcome"], registry=registry)
        self.backend_up = Gauge(
            "minigate_limits_backend_up",
            "1 while the limit counters answer (always, in process memory); 0 while Redis is unreachable.",
            registry=registry, multiprocess_mode="livemin")
        self.backend_up.set(1)

    # -- the request path ---------------------------------------------------------------------------

    async def admit(self, caller: Caller, route: str) -> dict[str, str]:
        """The `x-ratelimit-*` headers of an admitted request; raises TooManyRequests over a limit, or
        ServiceUnavailable while Redis is down with `limits.fail: closed`."""
        limits = caller.limits
        if limits is None:
            return {}
        now = time.time()
        checks, windows = self._planned(caller.name, route, limits, now)
        if not checks:
            return {}
        if self._down is not None and time.monotonic() < self._retry_at:
            return self._unchecked()
        try:
            first, values = await self._counters.admit(checks)
        except CountersDown as exc:
            self._went_down(str(exc))
            return self._unchecked()
        if self._down is not None:
            self._came_back()
        if first >= 0:
            raise self._refusal(caller.name, checks, windows, values, first, now)
        return _headers(checks, windows, values, now)

    def _planned(self, name: str, route: str, limits: KeyLimits, now: float) -> tuple[list[Check], list[_Window]]:
        """The checks of a key on a route, made once a minute (their names and windows change no oftener)."""
        minute = int(now // 60)
        plan = self._plans.get((name, route))
        if plan is None or plan[0] != minute or plan[1] is not limits:  # a reload brings new limits
            if len(self._plans) > _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[(name, route)] = (minute, limits, *self._checks(name, route, limits, now))
        return plan[2], plan[3]

    def _checks(self, name: str, route: str, limits: KeyLimits, now: float) -> tuple[list[Check], list[_Window]]:
        checks: list[Check] = []
        windows: list[_Window] = []
        minute = int(now // 60)
        for scope, scoped in ((_ALL_ROUTES, limits), (route, limits.routes.get(route))):
            if scoped is None:
                continue
            if scoped.rpm is not None:
                checks.append(Check(_name(name, scope, "rpm", minute), scoped.rpm, 1, _MINUTE_TTL_S))
                windows.append(_Window(scope, "rpm", (minute + 1) * 60))
            if scoped.tpm is not None:
                checks.append(Check(_name(name, scope, "tpm", minute), scoped.tpm, 0, _MINUTE_TTL_S))
                windows.append(_Window(scope, "tpm", (minute + 1) * 60))
            if scoped.usd_per_day is not None or scoped.usd_per_month is not None:
                self._budget_checks(name, scope, scoped, now, checks, windows)
        return checks, windows

    def _budget_checks(self, name: str, scope: str, scoped: Limits, now: float, checks: list[Check],
                       windows: list[_Window]) -> None:
        day = int(now // 86400)
        if scoped.usd_per_day is not None:
            ends = (day + 1) * 86400.0
            checks.append(Check(_name(name, scope, "usd_per_day", day), scoped.usd_per_day, 0, _ttl(ends, now)))
            windows.append(_Window(scope, "usd_per_day", ends))
        if scoped.usd_per_month is not None:
            month, ends = self._month(day)
            checks.append(Check(_name(name, scope, "usd_per_month", month), scoped.usd_per_month, 0, _ttl(ends, now)))
            windows.append(_Window(scope, "usd_per_month", ends))

    def _month(self, day: int) -> tuple[str, float]:
        """The calendar month of a day number, as an id and its end: worked out once a day."""
        if self._months[0] != day:
            at = time.gmtime(day * 86400)
            year, month = (at.tm_year + 1, 1) if at.tm_mon == 12 else (at.tm_year, at.tm_mon + 1)
            self._months = (day, f"{at.tm_year}{at.tm_mon:02d}", float(calendar.timegm((year, month, 1, 0, 0, 0))))
        return self._months[1], self._months[2]

    def _refusal(self, name: str, checks: list[Check], windows: list[_Window], values: list[float], first: int,
                 now: float) -> TooManyRequests:
        check, window = checks[first], windows[first]
        self.rejections.labels(name, "" if window.scope == _ALL_ROUTES else window.scope, window.limit).inc()
        wait = max(1, math.ceil(window.resets_at - now))
        headers = {**_headers(checks, windows, values, now), "retry-after": str(wait)}
        on = "" if window.scope == _ALL_ROUTES else f" on route {window.scope!r}"
        used = values[first]
        if window.limit in ("rpm", "tpm"):
            unit = "requests per minute (RPM)" if window.limit == "rpm" else "tokens per minute (TPM)"
            return TooManyRequests(
                f"Rate limit reached for key {name!r}{on} on {unit}: Limit {check.limit:g}, Used {used:g}. "
                f"Please try again in {_duration(window.resets_at - now)}.",
                type_="requests" if window.limit == "rpm" else "tokens", code="rate_limit_exceeded", headers=headers)
        period = "UTC day" if window.limit == "usd_per_day" else "calendar month (UTC)"
        return TooManyRequests(
            f"Budget exceeded for key {name!r}{on}: spent ${used:.4f} of its ${check.limit:g} per {period} "
            f"({window.limit}); it resets at {describe_time(window.resets_at)} "
            f"(in {_duration(window.resets_at - now)}). Ask minigate's operator to raise the key's limits if this "
            "is too low.",
            type_="insufficient_quota", code="budget_exceeded", headers=headers)

    def _unchecked(self) -> dict[str, str]:
        if self.section.fail == "open":
            self.unchecked.labels("admitted").inc()
            return {}
        self.unchecked.labels("refused").inc()
        raise ServiceUnavailable(
            f"Rate limits and budgets can't be checked: Redis is unreachable ({self._down}), and limits.fail is "
            "'closed', so keys with limits are refused until it is back. Retry shortly.",
            headers={"retry-after": "1"})

    # -- after the call: charges, health, reconciliation -------------------------------------------

    def charge(self, record: CallRecord) -> None:
        """Queue a measured call's tokens and cost against its key's counters (the call log's observer)."""
        if record.shadow_of is not None:  # the operator's comparison, not the key's call
            return
        limits = self._limits_of(record.key_name)
        if limits is None:
            return
        tokens = (record.input_tokens or 0) + (record.output_tokens or 0)
        usd = record.cost_usd or 0.0
        now = time.time()
        for scope, scoped in ((_ALL_ROUTES, limits), (record.route, limits.routes.get(record.route))):
            if scoped is None:
                continue
            if scoped.tpm is not None and tokens:
                self._charges.append((_name(record.key_name, scope, "tpm", int(now // 60)), tokens, _MINUTE_TTL_S))
            if usd:
                checks: list[Check] = []
                self._budget_checks(record.key_name, scope, scoped, now, checks, [])
                self._charges += [(check.name, usd, check.ttl_s) for check in checks]

    @property
    def problem(self) -> str | None:
        """Why limits are not being checked, for /readyz; None while they are."""
        if self._down is None:
            return None
        what = "served unchecked (limits.fail: open)" if self.section.fail == "open" else \
            "refused with 503 (limits.fail: closed)"
        return f"Redis unreachable ({self._down}): limited keys are {what}"

    @property
    def refusing(self) -> bool:
        """Whether limited keys are being refused (Redis down, fail closed): this replica is then not ready."""
        return self._down is not None and self.section.fail == "closed"

    async def run(self) -> None:
        """Charge measured calls, probe Redis while it is down, reconcile spend; until cancelled."""
        reconcile_at = time.monotonic() + self.section.reconcile_s
        while True:
            await asyncio.sleep(_CHARGE_EVERY_S)
            if self._down is not None and time.monotonic() >= self._retry_at:
                try:
                    await self._counters.ping()
                    self._came_back()
                except CountersDown as exc:
                    self._went_down(str(exc))
            if self._charges and self._down is None:
                charges, self._charges = self._charges, []
                try:
                    await self._counters.add(charges)
                except CountersDown as exc:  # lost; the next reconciliation restores the spend from the log
                    self._went_down(str(exc))
            elif self._down is not None:
                self._charges.clear()
            if time.monotonic() >= reconcile_at:
                reconcile_at = time.monotonic() + self.section.reconcile_s
                await self.reconcile()

    async def reconcile(self) -> None:
        """Raise the spend counters of every limited key to what the call log holds for this day and month."""
        if self._spend is None:
            return
        budgets = [(name, limits) for name, limits in self._limited() if _has_budget(limits)]
        if not budgets:
            return
        now = time.time()
        day = int(now // 86400)
        month_start = float(calendar.timegm((*time.gmtime(now)[:2], 1, 0, 0, 0)))
        try:
            by_day, by_month = await self._spend(day * 86400.0), await self._spend(month_start)
            values: list[tuple[str, float, int]] = []
            for name, limits in budgets:
                for scope, scoped in ((_ALL_ROUTES, limits), *limits.routes.items()):
                    checks: list[Check] = []
                    windows: list[_Window] = []
                    self._budget_checks(name, scope, scoped, now, checks, windows)
                    for check, window in zip(checks, windows, strict=True):
                        spent = by_day if window.limit == "usd_per_day" else by_month
                        total = sum(usd for (key, route), usd in spent.items()
                                    if key == name and scope in (_ALL_ROUTES, route))
                        if total:
                            values.append((check.name, total, check.ttl_s))
            if values:
                await self._counters.raise_to(values)
        except CountersDown as exc:
            self._went_down(str(exc))
        except Exception as exc:  # the log store is down: the counters stand as they are until the next try
            log.warning("spend reconciliation from the call log failed (%s: %s); retrying in %g s",
                        type(exc).__name__, exc, self.section.reconcile_s)

    async def close(self) -> None:
        await self._counters.close()

    def _went_down(self, why: str) -> None:
        if self._down is None:
            log.error("rate-limit counters (Redis) unreachable: %s; limited keys are %s", why,
                      "served unchecked" if self.section.fail == "open" else "refused")
        self._down, self._retry_at = why, time.monotonic() + _RETRY_DOWN_S
        self.backend_up.set(0)

    def _came_back(self) -> None:
        log.warning("rate-limit counters (Redis) answer again; limits are checked")
        self._down = None
        self.backend_up.set(1)


def _name(key: str, scope: str, limit: str, window: int | str) -> str:
    """A counter's name; `{key}` is its Redis Cluster hash tag, so one key's counters share a slot."""
    return f"minigate:{{{key}}}:{scope}:{limit}:{window}"


def _ttl(ends: float, now: float) -> int:
    return int(ends - now) + 3600  # past its window's end by an hour: a late charge still finds it


def _has_budget(limits: KeyLimits) -> bool:
    return any(scoped.usd_per_day is not None or scoped.usd_per_month is not None
               for scoped in (limits, *limits.routes.values()))


def _headers(checks: list[Check], windows: list[_Window], values: list[float], now: float) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*`: for requests and for tokens, the tightest of the key's and its route's."""
    headers: dict[str, str] = {}
    for limit, suffix in (("rpm", "requests"), ("tpm", "tokens")):
        tightest: tuple[float, Check, _Window] | None = None
        for check, window, value in zip(checks, windows, values, strict=True):
            if window.limit == limit and (tightest is None or check.limit - value < tightest[0]):
                tightest = (check.limit - value, check, window)
        if tightest is not None:
            left, check, window = tightest
            headers[f"x-ratelimit-limit-{suffix}"] = f"{check.limit:g}"
            headers[f"x-ratelimit-remaining-{suffix}"] = f"{max(0.0, left):g}"
            headers[f"x-ratelimit-reset-{suffix}"] = _duration(window.resets_at - now)
    return headers


def _duration(seconds: float) -> str:
    """As OpenAI writes resets: `20ms`, `6s`, `6m0s`, `5h12m0s`.

    >>> _duration(0.02), _duration(5.2), _duration(360), _duration(18720)
    ('20ms', '6s', '6m0s', '5h12m0s')
    """
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
