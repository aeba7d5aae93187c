"""Payload encryption (AES-256-GCM, key ids, rotation) and the anonymous client identity."""

from __future__ import annotations

import base64
import hashlib

import pytest

from minigate.logger.crypto import (
    PayloadCipher,
    PayloadError,
    PayloadIntegrityError,
    PayloadKeyError,
    blob_key_id,
    generate_key,
    key_id,
    validate_key,
)
from minigate.logger.identity import anonymise

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize("plaintext", [b"", b'{"messages": [{"role": "user", "content": "hi"}]}', bytes(1 << 20)])
def test_round_trip(plaintext: bytes) -> None:
    cipher = PayloadCipher(KEY)
    assert cipher.decrypt(cipher.encrypt(plaintext, b"req-1"), b"req-1") == plaintext


def test_blob_layout_is_an_envelope_naming_version_key_and_fresh_nonces() -> None:
    cipher = PayloadCipher(KEY)
    first, second = cipher.encrypt(b"secret", b"req-1"), cipher.encrypt(b"secret", b"req-1")
    expected_id = hashlib.sha256(bytes(range(32))).digest()[:4]
    assert first[0] == 2
    assert first[1:5] == expected_id and cipher.key_id == expected_id.hex() == blob_key_id(first) == key_id(KEY)
    envelope = 1 + 4 + 12 + 32 + 16
    assert len(first) == envelope + 12 + len(b"secret") + 16
    assert first[:envelope] == second[:envelope]  # one data key serves many payloads ...
    assert first[envelope : envelope + 12] != second[envelope : envelope + 12]  # ... under fresh nonces
    assert b"secret" not in first
    assert PayloadCipher(KEY).encrypt(b"secret", b"req-1")[:envelope] != first[:envelope]  # a data key per cipher


@pytest.mark.parametrize(
    ("position", "error"),
    [
        (0, PayloadIntegrityError),  # version
        (2, PayloadKeyError),  # key id: names a key nobody has
        (10, PayloadIntegrityError),  # wrap nonce
        (40, PayloadIntegrityError),  # wrapped data key
        (70, PayloadIntegrityError),  # payload nonce
        (90, PayloadIntegrityError),  # ciphertext
        (-1, PayloadIntegrityError),  # tag
    ],
)
def test_a_flipped_byte_anywhere_is_detected(position: int, error: type[PayloadError]) -> None:
    cipher = PayloadCipher(KEY)
    blob = bytearray(cipher.encrypt(b"some payload to protect", b"req-1"))
    blob[position] ^= 0x01
    with pytest.raises(error):
        cipher.decrypt(bytes(blob), b"req-1")


def test_truncated_blob_is_an_integrity_error() -> None:
    cipher = PayloadCipher(KEY)
    blob = cipher.encrypt(b"payload", b"req-1")
    for length in (0, 5, 32, len(blob) - 1):
        with pytest.raises(PayloadIntegrityError):
            cipher.decrypt(blob[:length], b"req-1")


def test_payload_moved_to_another_record_fails() -> None:
    cipher = PayloadCipher(KEY)
    blob = cipher.encrypt(b"payload", b"req-1")
    with pytest.raises(PayloadIntegrityError, match="another record"):
        cipher.decrypt(blob, b"req-2")


def test_rotation_decrypts_with_previous_keys_and_encrypts_with_the_current() -> None:
    old, new = PayloadCipher(KEY), generate_key()
    old_blob = old.encrypt(b"written before rotation", b"req-1")
    rotated = PayloadCipher(new, previous=[KEY])
    assert rotated.decrypt(old_blob, b"req-1") == b"written before rotation"
    new_blob = rotated.encrypt(b"written after", b"req-2")
    assert new_blob[1:5].hex() == rotated.key_id != old.key_id
    assert PayloadCipher(new).decrypt(new_blob, b"req-2") == b"written after"
    with pytest.raises(PayloadKeyError, match=f"wrong key.*{old.key_id}.*previous_keys"):
        PayloadCipher(new).decrypt(old_blob, b"req-1")
    with pytest.raises(PayloadKeyError):
        old.decrypt(new_blob, b"req-2")


def test_rewrap_moves_a_blob_to_the_current_key_keeping_its_ciphertext() -> None:
    old = PayloadCipher(KEY)
    blob = old.encrypt(b"written before rotation", b"req-1")
    new_key = generate_key()
    rotated = PayloadCipher(new_key, previous=[KEY])
    rewrapped = rotated.rewrap(blob)
    assert rewrapped is not None and blob_key_id(rewrapped) == key_id(new_key) != blob_key_id(blob)
    assert rewrapped[65:] == blob[65:]  # the payload itself is not re-encrypted
    assert PayloadCipher(new_key).decrypt(rewrapped, b"req-1") == b"written before rotation"
    assert rotated.rewrap(rewrapped) is None  # already under the current key
    with pytest.raises(PayloadKeyError):
        old.decrypt(rewrapped, b"req-1")
    with pytest.raises(PayloadKeyError):
        PayloadCipher(generate_key()).rewrap(blob)


def test_current_key_repeated_among_previous_is_harmless() -> None:
    cipher = PayloadCipher(KEY, previous=[KEY, KEY + "\n"])
    assert cipher.decrypt(cipher.encrypt(b"x", b"r"), b"r") == b"x"


def test_generated_keys_are_valid_distinct_and_32_bytes() -> None:
    keys = {generate_key() for _ in range(10)}
    assert len(keys) == 10
    for key in keys:
        validate_key(key)
        assert len(key) == 44 and len(base64.urlsafe_b64decode(key)) == 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty; generate one with"),
        ("   \n", "is empty"),
        ("not base64!", "is not urlsafe base64.*generate one with"),
        ("clé" * 15, "is not urlsafe base64"),
        (base64.urlsafe_b64encode(bytes(16)).decode(), "decodes to 16 bytes; AES-256 needs exactly 32"),
        (base64.urlsafe_b64encode(bytes(33)).decode(), "decodes to 33 bytes"),
    ],
)
def test_bad_keys_are_rejected_with_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^the encryption key {message}"):
        validate_key(text)
    with pytest.raises(PayloadKeyError, match=f"^the current key {message}"):
        PayloadCipher(text)


def test_a_bad_previous_key_is_named() -> None:
    with pytest.raises(PayloadKeyError, match="^previous key #2 decodes to 3 bytes"):
        PayloadCipher(KEY, previous=[generate_key(), "YWJj"])


@pytest.mark.parametrize("text", [KEY.rstrip("="), KEY + "\n", f"  {KEY}  "])
def test_unpadded_or_newline_terminated_keys_are_accepted(text: str) -> None:
    validate_key(text)
    assert PayloadCipher(text).key_id == PayloadCipher(KEY).key_id


def test_client_id_is_stable_hex_and_pinned() -> None:
    client = anonymise(b"pepper", "agents", "alice")
    assert client == anonymise(b"pepper", "agents", "alice")
    assert len(client) == 32 and int(client, 16) >= 0
    # Pinned: a change to the encoding would split every caller's history in the existing log.
    assert client == "908dd5d9a263610d4cd13aac76159f73"
    assert "alice" not in client and "agents" not in client


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("ab", "c"), ("a", "bc")),
        (("agents", None), ("agents", "")),
        (("agents", "alice"), ("platform", "alice")),
        (("agents", "alice"), ("agents", "bob")),
        (("", "x"), ("x", "")),
    ],
)
def test_different_callers_get_different_ids(one: tuple[str, str | None], other: tuple[str, str | None]) -> None:
    assert anonymise(b"pepper", *one) != anonymise(b"pepper", *other)


def test_pepper_separates_deployments_and_must_be_set() -> None:
    assert anonymise(b"pepper-a", "agents", "alice") != anonymise(b"pepper-b", "agents", "alice")
    with pytest.raises(ValueError, match="pepper is empty"):
        anonymise(b"", "agents", "alice")


def test_user_with_a_lone_surrogate_still_hashes() -> None:
    assert len(anonymise(b"pepper", "agents", "\ud800")) == 32
