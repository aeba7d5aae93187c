"""Where the log key comes from: the config (`logging.encryption_key`, usually `${MINIGATE_LOG_KEY}`) or a
key file, which the embedded default creates on first start so that a laptop run encrypts payloads
with no set-up.

A key file holds one key per line, newest first: the first encrypts, the others still decrypt and are
what `minigate keys rotate` re-wraps away from. It is written once, atomically, readable by its owner
only (0600), and refused with a clear error when it is malformed.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from minigate.logger.crypto import PayloadCipher, generate_key, validate_key
from minigate.logger.settings import LoggingSection

__all__ = ["KeyFileError", "LogKeys", "key_file_path", "load_keys", "rotate_key_file", "write_key_file"]

log = logging.getLogger("minigate.logger")


class KeyFileError(Exception):
    """A key file that can't be read or holds a malformed key; the message names file and line."""


@dataclass(frozen=True, slots=True)
class LogKeys:
    current: str
    previous: tuple[str, ...]
    source: str  # "logging.encryption_key", or the key file's path
    file: Path | None = None  # set when the keys come from a key file

    def cipher(self) -> PayloadCipher:
        return PayloadCipher(self.current, self.previous)


def key_file_path(settings: LoggingSection) -> Path | None:
    """The configured key file, or the embedded default's `<sqlite file>.key`; None for PostgreSQL."""
    if settings.key_file is not None:
        return settings.key_file
    if settings.store.startswith("sqlite:///"):
        return Path(settings.store.removeprefix("sqlite:///") + ".key")
    return None


def load_keys(settings: LoggingSection, *, create: bool) -> LogKeys | None:
    """The keys payloads are sealed with; None means payloads are not stored.

    `create`: make the key file when it is missing (the gateway at start-up; never a reading command).
    """
    if not settings.payloads:
        return None
    configured = settings.encryption_key.get_secret_value().strip() if settings.encryption_key else ""
    previous = tuple(k.get_secret_value() for k in settings.previous_keys if k.get_secret_value().strip())
    if configured:
        return LogKeys(configured, previous, "logging.encryption_key")
    path = key_file_path(settings)
    if path is None:
        return None
    if not path.exists():
        if not create:
            return None
        write_key_file(path, [generate_key()])
        log.warning("generated a new log key in %s (owner-only, 0600): back it up, without it the logged "
                    "payloads can't be read; or set MINIGATE_LOG_KEY / logging.encryption_key", path)
    keys = _read_key_file(path)
    return LogKeys(keys[0], tuple(keys[1:]) + previous, str(path), path)


def rotate_key_file(keys: LogKeys) -> LogKeys:
    """A new key, written first in the key file; the old ones stay in it as previous keys, still decrypting.

    Keys from `logging.encryption_key` live in the config, which minigate never writes: a person rotates
    those by setting the new key there and moving the old one to `logging.previous_keys`.
    """
    if keys.file is None:
        raise KeyFileError(f"the log key comes from {keys.source}: set the new key there and move the old one "
                           "to logging.previous_keys")
    fresh = generate_key()
    write_key_file(keys.file, [fresh, keys.current, *keys.previous])
    return LogKeys(fresh, (keys.current, *keys.previous), keys.source, keys.file)


def write_key_file(path: Path, keys: list[str]) -> None:
    """Replace the file atomically; it is 0600 from its first byte, never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("# minigate log keys, newest first: the first encrypts, all decrypt\n")
            handle.writelines(f"{key}\n" for key in keys)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_key_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: can't read the log key file: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users (mode %o); run `chmod 600 %s`", path, mode & 0o777, path)
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        try:
            validate_key(key)
        except ValueError as exc:
            raise KeyFileError(f"{path}:{number}: {exc}") from None
        keys.append(key)
    if not keys:
        raise KeyFileError(f"{path}: holds no key; delete it to have a new one generated, or add one")
    return keys
