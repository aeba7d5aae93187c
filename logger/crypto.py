"""Envelope encryption of call-record payloads at rest: AES-256-GCM data keys wrapped by the log key.

A payload is encrypted under a random data key; the data key travels with it, wrapped (AES-256-GCM)
by the configured log key (the key-encryption key). Rotating the log key then only re-wraps 48 bytes
per blob (`PayloadCipher.rewrap`), never re-encrypts a payload. A blob is self-describing:

    [1 byte version = 2][4 bytes log-key id][12 bytes wrap nonce][32-byte data key + 16-byte tag]
    [12 bytes payload nonce][ciphertext + 16-byte tag]

The log-key id is the first four bytes of SHA-256 of the key: it tells rotated keys apart and reveals
nothing usable about a 256-bit random key. The wrap authenticates the version and log-key id; the
payload authenticates the version and the caller's associated data (the record's request id), so a
payload copied onto another row, or a header edited to point at another key, fails to decrypt instead
of decrypting to the wrong thing. One data key serves many payloads (random 96-bit nonces) and is
replaced long before the 2**32 safe limit.

One cipher may encrypt from several threads at once (the sealing thread, and the call log's writer of
stored responses): the data key and its envelope are taken together under a lock, so no blob pairs a
new key's envelope with the old key's ciphertext.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "PayloadCipher",
    "PayloadError",
    "PayloadIntegrityError",
    "PayloadKeyError",
    "blob_key_id",
    "generate_key",
    "key_id",
    "validate_key",
]

_VERSION = 2
_KEY_BYTES = 32
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_TAG_BYTES = 16
_WRAPPED_BYTES = _NONCE_BYTES + _KEY_BYTES + _TAG_BYTES
_ENVELOPE_BYTES = 1 + _KEY_ID_BYTES + _WRAPPED_BYTES  # what a rotation rewrites
_HEADER_BYTES = _ENVELOPE_BYTES + _NONCE_BYTES
_DATA_KEY_USES = 1 << 24  # payloads per data key, far below the 2**32 random-nonce bound
_UNWRAPPED_CACHE = 256
_HOW_TO_GENERATE = "generate one with `minigate keys generate`"


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


def key_id(text: str) -> str:
    """The id (hex) that blobs written under this log key carry."""
    return _key_id(_key_or_raise(text, "the key")).hex()


def blob_key_id(blob: bytes) -> str:
    """The id (hex) of the log key that wrapped this blob's data key."""
    return blob[1 : 1 + _KEY_ID_BYTES].hex()


class PayloadCipher:
    """Encrypts under the current log key; decrypts and re-wraps blobs of the current or any previous one.

    >>> cipher = PayloadCipher(generate_key())
    >>> blob = cipher.encrypt(b'{"messages": []}', aad=b"req-1")
    >>> cipher.decrypt(blob, aad=b"req-1")
    b'{"messages": []}'
    """

    def __init__(self, current: str, previous: Iterable[str] = ()) -> None:
        keys = [_key_or_raise(current, "the current key")]
        keys += [_key_or_raise(text, f"previous key #{n}") for n, text in enumerate(previous, 1)]
        self._wrappers: dict[bytes, AESGCM] = {}
        seen: dict[bytes, bytes] = {}
        for key in keys:
            kid = _key_id(key)
            if seen.setdefault(kid, key) != key:
                # 1 in 2**32 for random keys; refusing beats silently failing one key's payloads.
                raise PayloadKeyError(f"two configured keys share key id {kid.hex()}: drop or regenerate one")
            self._wrappers.setdefault(kid, AESGCM(key))
        self._current_id = _key_id(keys[0])
        self._envelope = b""  # the current data key's envelope, made on first use
        self._data_key: AESGCM | None = None
        self._uses = 0
        self._choosing = threading.Lock()  # guards the three above
        self._unwrapped: dict[bytes, AESGCM] = {}  # envelope -> data key, for readers of many blobs

    @property
    def key_id(self) -> str:
        """The current log key's id in hex, as stored in every blob it writes."""
        return self._current_id.hex()

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        with self._choosing:
            if self._data_key is None or self._uses >= _DATA_KEY_USES:
                self._new_data_key()
            assert self._data_key is not None
            self._uses += 1
            envelope, data_key = self._envelope, self._data_key
        nonce = os.urandom(_NONCE_BYTES)
        return envelope + nonce + data_key.encrypt(nonce, plaintext, bytes([_VERSION]) + aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        envelope = self._check(blob)
        data_key = self._unwrapped.get(envelope) or self._unwrap(envelope)
        nonce = blob[_ENVELOPE_BYTES:_HEADER_BYTES]
        try:
            return data_key.decrypt(nonce, blob[_HEADER_BYTES:], bytes([_VERSION]) + aad)
        except InvalidTag as exc:
            raise PayloadIntegrityError(
                "payload failed authentication: it was altered, or it belongs to another record (request id)"
            ) from exc

    def rewrap(self, blob: bytes) -> bytes | None:
        """The blob with its data key wrapped by the current log key; None when it already is.

        The payload's ciphertext is kept byte for byte: rotation touches 65 bytes per blob.
        """
        envelope = self._check(blob)
        if envelope[1 : 1 + _KEY_ID_BYTES] == self._current_id:
            return None
        raw = self._unwrap_raw(envelope)
        return self._wrap(raw) + blob[_ENVELOPE_BYTES:]

    def _new_data_key(self) -> None:
        raw = os.urandom(_KEY_BYTES)
        self._envelope, self._data_key, self._uses = self._wrap(raw), AESGCM(raw), 0

    def _wrap(self, raw: bytes) -> bytes:
        head = bytes([_VERSION]) + self._current_id
        nonce = os.urandom(_NONCE_BYTES)
        return head + nonce + self._wrappers[self._current_id].encrypt(nonce, raw, head)

    def _unwrap(self, envelope: bytes) -> AESGCM:
        data_key = AESGCM(self._unwrap_raw(envelope))
        if len(self._unwrapped) >= _UNWRAPPED_CACHE:
            self._unwrapped.clear()
        self._unwrapped[envelope] = data_key
        return data_key

    def _unwrap_raw(self, envelope: bytes) -> bytes:
        head, kid = envelope[: 1 + _KEY_ID_BYTES], envelope[1 : 1 + _KEY_ID_BYTES]
        wrapper = self._wrappers.get(kid)
        if wrapper is None:
            known = ", ".join(k.hex() for k in self._wrappers)
            raise PayloadKeyError(
                f"wrong key: this payload was written with key id {kid.hex()}, and no configured key has "
                f"that id (configured: {known}); add the key that wrote it to logging.previous_keys"
            )
        nonce = envelope[1 + _KEY_ID_BYTES : 1 + _KEY_ID_BYTES + _NONCE_BYTES]
        try:
            return wrapper.decrypt(nonce, envelope[1 + _KEY_ID_BYTES + _NONCE_BYTES :], head)
        except InvalidTag as exc:
            raise PayloadIntegrityError("payload's data key failed authentication: its header was altered") from exc

    @staticmethod
    def _check(blob: bytes) -> bytes:
        if len(blob) < _HEADER_BYTES + _TAG_BYTES:
            raise PayloadIntegrityError(f"payload is truncated: {len(blob)} bytes is shorter than any blob")
        if blob[0] != _VERSION:
            raise PayloadIntegrityError(f"payload has unknown format version {blob[0]} (this build reads 2)")
        return blob[:_ENVELOPE_BYTES]


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
