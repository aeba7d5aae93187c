"""Encryption of call-record payloads at rest: AES-256-GCM under the configured log key.

A blob is self-describing, so a reader can tell which key wrote it and reject what it can't read:

    [1 byte version = 1][4 bytes key id][12 bytes random nonce][ciphertext + 16-byte tag]

The key id is the first four bytes of SHA-256 of the key: it tells rotated keys apart and reveals
nothing usable about a 256-bit random key. The header and the caller's associated data (the record's
request id) are both authenticated, so a payload copied onto another row, or a header edited to point
at another key, fails to decrypt instead of decrypting to the wrong thing. Random 96-bit nonces are
safe for about 2**32 payloads per key; rotate long before that.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "PayloadCipher",
    "PayloadError",
    "PayloadIntegrityError",
    "PayloadKeyError",
    "generate_key",
    "validate_key",
]

_VERSION = 1
_KEY_BYTES = 32
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_HEADER_BYTES = 1 + _KEY_ID_BYTES + _NONCE_BYTES
_TAG_BYTES = 16
_HOW_TO_GENERATE = (
    "generate one with `python -c 'from minigate.logger.crypto import generate_key; print(generate_key())'`"
)


class PayloadError(Exception):
    """A payload could not be encrypted or decrypted. Base of the two below."""


class PayloadKeyError(PayloadError):
    """The configured keys are malformed, or none of them is the key that wrote a blob."""


class PayloadIntegrityError(PayloadError):
    """A blob was altered, truncated, or belongs to another record: the key is right, the data is not."""


def generate_key() -> str:
    """A fresh key as `logging.encryption_key` expects it: 32 random bytes, urlsafe base64."""
    return base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)).decode("ascii")


def validate_key(text: str) -> None:
    """Raise ValueError saying what is wrong with a configured key; for config validation."""
    try:
        _decode_key(text)
    except ValueError as exc:
        raise ValueError(f"the encryption key {exc}") from None


class PayloadCipher:
    """Encrypts with the current key; decrypts with the current key or any previous one.

    >>> cipher = PayloadCipher(generate_key())
    >>> blob = cipher.encrypt(b'{"messages": []}', aad=b"req-1")
    >>> cipher.decrypt(blob, aad=b"req-1")
    b'{"messages": []}'
    """

    def __init__(self, current: str, previous: Iterable[str] = ()) -> None:
        keys = [_key_or_raise(current, "the current key")]
        keys += [_key_or_raise(text, f"previous key #{n}") for n, text in enumerate(previous, 1)]
        self._aeads: dict[bytes, AESGCM] = {}
        seen: dict[bytes, bytes] = {}
        for key in keys:
            key_id = _key_id(key)
            if seen.setdefault(key_id, key) != key:
                # 1 in 2**32 for random keys; refusing beats silently failing one key's payloads.
                raise PayloadKeyError(f"two configured keys share key id {key_id.hex()}: drop or regenerate one")
            self._aeads.setdefault(key_id, AESGCM(key))
        self._current_id = _key_id(keys[0])

    @property
    def key_id(self) -> str:
        """The current key's id in hex, as stored in every blob it writes."""
        return self._current_id.hex()

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        header = bytes([_VERSION]) + self._current_id + os.urandom(_NONCE_BYTES)
        return header + self._aeads[self._current_id].encrypt(header[-_NONCE_BYTES:], plaintext, header + aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < _HEADER_BYTES + _TAG_BYTES:
            raise PayloadIntegrityError(f"payload is truncated: {len(blob)} bytes is shorter than any blob")
        if blob[0] != _VERSION:
            raise PayloadIntegrityError(f"payload has unknown format version {blob[0]} (this build reads 1)")
        header, key_id = blob[:_HEADER_BYTES], blob[1 : 1 + _KEY_ID_BYTES]
        aead = self._aeads.get(key_id)
        if aead is None:
            known = ", ".join(k.hex() for k in self._aeads)
            raise PayloadKeyError(
                f"wrong key: this payload was written with key id {key_id.hex()}, and no configured key has "
                f"that id (configured: {known}); add the key that wrote it to the previous keys"
            )
        try:
            return aead.decrypt(header[-_NONCE_BYTES:], blob[_HEADER_BYTES:], header + aad)
        except InvalidTag as exc:
            raise PayloadIntegrityError(
                "payload failed authentication: it was altered, or it belongs to another record (request id)"
            ) from exc


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:_KEY_ID_BYTES]


def _key_or_raise(text: str, which: str) -> bytes:
    try:
        return _decode_key(text)
    except ValueError as exc:
        raise PayloadKeyError(f"{which} {exc}") from exc


def _decode_key(text: str) -> bytes:
    stripped = text.strip()  # keys read from files and env vars often end in a newline
    if not stripped:
        raise ValueError(f"is empty; {_HOW_TO_GENERATE}")
    try:
        # validate=True rejects stray characters instead of silently dropping them; the missing padding
        # of an unpadded key is restored rather than held against the user.
        raw = base64.b64decode(stripped + "=" * (-len(stripped) % 4), altchars=b"-_", validate=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII character
        raise ValueError(
            f"is not urlsafe base64 ({exc}); expected 44 characters of A-Z a-z 0-9 - _ "
            f"ending in '='; {_HOW_TO_GENERATE}"
        ) from exc
    if len(raw) != _KEY_BYTES:
        raise ValueError(
            f"decodes to {len(raw)} bytes; AES-256 needs exactly {_KEY_BYTES} "
            f"(44 base64 characters); {_HOW_TO_GENERATE}"
        )
    return raw
