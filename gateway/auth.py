"""API keys and the roles and limits they carry: the config's keys, and those `minigate keys create` stored.

Keys are looked up by their SHA-256 digest, so a lookup never compares the secret byte by byte
(no timing side channel) and the raw keys are not kept in memory beyond the config.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from minigate.errors import AuthenticationFailed, PermissionDenied
from minigate.gateway.settings import AuthSection, KeyLimits, Role
from minigate.gateway.stored_keys import StoredKeys, describe_time

__all__ = ["Caller", "KeyRing", "Permission", "is_loopback"]

Permission = Literal["infer", "give_feedback", "read_metrics", "read_calls", "read_payloads"]

_GRANTS: dict[Role, frozenset[Permission]] = {
    "agent": frozenset({"infer", "give_feedback"}),  # on its own calls only (gateway/feedback_api.py)
    "analyst": frozenset({"read_metrics", "read_calls"}),
    "admin": frozenset({"infer", "give_feedback", "read_metrics", "read_calls", "read_payloads"}),
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the key's name (never the key), its role, and its limits (None: unlimited)."""

    name: str
    role: Role
    limits: KeyLimits | None = field(default=None, repr=False, compare=False)

    def require(self, permission: Permission) -> None:
        if permission not in _GRANTS[self.role]:
            raise PermissionDenied(f"The key {self.name!r} has role {self.role!r}, which may not {permission.replace('_', ' ')}.")


_ANONYMOUS = Caller("anonymous", "admin")


class KeyRing:
    """The configured keys, then the stored ones. With neither (no key was ever stored), every caller is an
    anonymous admin (the server then binds loopback only).

    >>> ring = KeyRing.from_section(AuthSection.model_validate({"keys": [{"name": "a", "key": "k", "role": "agent"}]}))
    >>> ring.authenticate({"authorization": "Bearer k"})
    Caller(name='a', role='agent')
    >>> ring.authenticate({"x-api-key": "k"})  # as the anthropic SDK sends it
    Caller(name='a', role='agent')
    """

    def __init__(self, digests: dict[bytes, Caller], stored: StoredKeys | None = None) -> None:
        self._callers = digests
        self._by_name = {caller.name: caller for caller in digests.values()}
        self._stored = stored or StoredKeys()

    @classmethod
    def from_section(cls, section: AuthSection, stored: StoredKeys | None = None) -> KeyRing:
        return cls({_digest(entry.key.get_secret_value()): Caller(entry.name, entry.role, _limits(entry.limits))
                    for entry in section.keys}, stored)

    @property
    def is_open(self) -> bool:
        return not self._callers and not self._stored.by_digest

    def limits_of(self, name: str) -> KeyLimits | None:
        """The limits of the key named `name` (the call log's `key_name`), if it has any."""
        caller = self._by_name.get(name)
        if caller is not None:
            return caller.limits
        stored = self._stored.by_name.get(name)
        return stored.limits if stored is not None else None

    def limited(self) -> Iterator[tuple[str, KeyLimits]]:
        """Every key with limits, by name: the config's, then the stored ones."""
        for caller in self._callers.values():
            if caller.limits is not None:
                yield caller.name, caller.limits
        for known in self._stored.by_name.values():
            if known.limits is not None and known.name not in self._by_name:
                yield known.name, known.limits

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """The caller whose key the request carries: `Authorization: Bearer` (OpenAI's SDKs), `x-api-key`
        (Anthropic's) or `api-key` (AzureOpenAI's); the first present is the one checked."""
        if self.is_open:
            return _ANONYMOUS
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer <key>'.")
        else:
            key = headers.get("x-api-key") or headers.get("api-key") or ""
            if not key.strip():
                raise AuthenticationFailed(
                    "Missing API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>').")
        digest = _digest(key.strip())
        caller = self._callers.get(digest)
        if caller is not None:
            return caller
        stored = self._stored.by_digest.get(digest)
        if stored is None:
            raise AuthenticationFailed("Incorrect API key provided. Check the key minigate's operator gave you.")
        if stored.revoked_at is not None:
            raise AuthenticationFailed(f"The API key {stored.name!r} was revoked at "
                                       f"{describe_time(stored.revoked_at)}; ask minigate's operator for a new one.")
        if stored.expires_at is not None and stored.expires_at <= time.time():
            raise AuthenticationFailed(f"The API key {stored.name!r} expired at {describe_time(stored.expires_at)}; "
                                       "ask minigate's operator for a new one.")
        return Caller(stored.name, stored.role, stored.limits)


def _limits(limits: KeyLimits) -> KeyLimits | None:
    return limits if limits.any else None  # None: the request path skips limits at once


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def is_loopback(host: str) -> bool:
    """Whether a bind address only this machine can reach: the one place a keyless gateway may listen."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
