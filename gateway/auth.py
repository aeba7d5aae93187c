"""Bearer keys and the roles they carry.

Keys are looked up by their SHA-256 digest, so a lookup never compares the secret byte by byte
(no timing side channel) and the raw keys are not kept in memory beyond the config.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from minigate.errors import AuthenticationFailed, PermissionDenied
from minigate.gateway.settings import AuthSection, Role

__all__ = ["Caller", "KeyRing", "Permission", "is_loopback"]

Permission = Literal["infer", "give_feedback", "read_metrics", "read_calls", "read_payloads"]

_GRANTS: dict[Role, frozenset[Permission]] = {
    "agent": frozenset({"infer", "give_feedback"}),  # on its own calls only (gateway/feedback_api.py)
    "analyst": frozenset({"read_metrics", "read_calls"}),
    "admin": frozenset({"infer", "give_feedback", "read_metrics", "read_calls", "read_payloads"}),
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the key's name from config (never the key) and its role."""

    name: str
    role: Role

    def require(self, permission: Permission) -> None:
        if permission not in _GRANTS[self.role]:
            raise PermissionDenied(f"The key {self.name!r} has role {self.role!r}, which may not {permission.replace('_', ' ')}.")


_ANONYMOUS = Caller("anonymous", "admin")


class KeyRing:
    """The configured keys. With none, every caller is an anonymous admin (the server then binds loopback only).

    >>> ring = KeyRing.from_section(AuthSection.model_validate({"keys": [{"name": "a", "key": "k", "role": "agent"}]}))
    >>> ring.authenticate({"authorization": "Bearer k"})
    Caller(name='a', role='agent')
    >>> ring.authenticate({"x-api-key": "k"})  # as the anthropic SDK sends it
    Caller(name='a', role='agent')
    """

    def __init__(self, digests: dict[bytes, Caller]) -> None:
        self._callers = digests

    @classmethod
    def from_section(cls, section: AuthSection) -> KeyRing:
        return cls({_digest(entry.key.get_secret_value()): Caller(entry.name, entry.role) for entry in section.keys})

    @property
    def is_open(self) -> bool:
        return not self._callers

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
        caller = self._callers.get(_digest(key.strip()))
        if caller is None:
            raise AuthenticationFailed("Incorrect API key provided. Check the key minigate's operator gave you.")
        return caller


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
