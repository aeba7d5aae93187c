"""Anonymous client identity: who called, as a stable pseudonym that can't be reversed without the pepper.

The pseudonym is an HMAC-SHA256 under a secret pepper over the key name and the request's `user`
field, so the same caller groups together across the log while the raw values are never stored. Each
value is length-prefixed (and a missing user is told apart from an empty one), so no two different
pairs share an input: ("ab", "c") and ("a", "bc") get different ids.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

__all__ = ["anonymise"]

_DOMAIN = b"minigate.client-id.v1\x00"  # keeps these MACs apart from anything else keyed by the pepper
_ID_CHARS = 32  # 128 bits: collisions are out of reach for any realistic number of callers


def anonymise(pepper: bytes, key_name: str, user: str | None) -> str:
    """The client id for (key_name, user): 32 hex characters.

    >>> anonymise(b"pepper", "agents", "alice") == anonymise(b"pepper", "agents", "alice")
    True
    """
    if not pepper:
        raise ValueError("the client-identity pepper is empty: without a secret the ids can be reversed")
    message = _DOMAIN + _field(key_name) + (b"\x00" if user is None else b"\x01" + _field(user))
    return hmac.new(pepper, message, hashlib.sha256).hexdigest()[:_ID_CHARS]


def _field(text: str) -> bytes:
    # surrogatepass: a `user` decoded from JSON may hold a lone surrogate; it must hash, not crash.
    data = text.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(data)) + data
