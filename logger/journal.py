"""The journal: every call record the log accepted, on local disk from the moment `submit` took it.

The call log keeps records in memory for up to `flush_interval_s` plus a sealing and a store write
(`minigate.logger.pipeline`); the journal is what lets a process killed outright (SIGKILL, the OOM
killer) lose none of them. `append` writes each record, unsealed, with one `os.writev` to a file opened
O_APPEND: a copy into the page cache, which outlives the process (about 10 microseconds a record). There is
no fsync: the journal guards against a dead process, not a power cut (`spool_fsync` is the spool's). The
next process on the same spool directory (`recover`) reads the records back and the call log stores them;
stores are idempotent on request id, so a record that was also stored before the kill is not stored twice.

Files. `journal-0000000001.log`, `-0000000002.log`, ... in the spool directory, which the spool creates
0700 and locks to one process, so one journal has one writer. Files are created 0600. A file is a run of
frames, as in the spool:

    [4-byte big-endian length n][4-byte CRC32 of the length and the n bytes][1 byte: 0 plain, 1 sealed][entry]

where the entry is `minigate.logger.records.unsealed_record_to_bytes`; sealed, it is encrypted with the
payload cipher (AES-256-GCM, a few microseconds a record). Without a log key the entry is plaintext and
leaves out what sealing would not use (the request body and `user`: without a key no payload or client
id is stored); the reply stays, for its token usage.

Rotation. `rotate` starts a new file; `release` deletes the files from before the last `rotate`. The
call log decides when (`CallLog._rotate_journal`, `_release_journal`): it releases only files whose
records are all stored or spooled, so no record is ever in memory alone. A write that fails (a full disk) may leave a
partial frame: the file is closed and the next append starts another, so a torn frame is always a file's
last and reading stops there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import Counter

from minigate.logger.crypto import PayloadCipher
from minigate.logger.records import CallRecord, unsealed_record_from_bytes, unsealed_record_to_bytes

__all__ = ["Journal"]

log = logging.getLogger("minigate.logger")

_FRAME = struct.Struct(">II")
_FILE = re.compile(r"^journal-(\d{10})\.log$")
_PLAIN, _SEALED = b"\x00", b"\x01"
_AAD = b"minigate call-log journal"
_UNUSED_WITHOUT_KEY = ("request_body", "user")  # see the module docstring


class Journal:
    """Write-ahead file of the records a call log holds in memory.

    >>> journal = Journal(spool_dir, cipher, failures)  # blocking: from a thread  # doctest: +SKIP
    >>> records = journal.recover()  # what a killed process left: store them, then `release()`  # doctest: +SKIP
    >>> journal.append(record)  # on the request path; never raises  # doctest: +SKIP
    """

    def __init__(self, directory: Path, cipher: PayloadCipher | None, failures: Counter) -> None:
        self.directory = directory
        self.cipher = cipher
        self._failures = failures
        self._fd: int | None = None
        self._is_failing = False
        self._is_closed = False
        self._left = self._files()  # by a previous process
        self._active = max(self._left, default=0) + 1
        self._release_below = self._active

    def recover(self) -> list[CallRecord]:
        """The records previous processes left, oldest first (blocking). A file with entries that can't be
        read (a key no longer configured) is renamed `journal-N.unreadable` and kept for an operator."""
        records: list[CallRecord] = []
        for seq in self._left:
            records += self._read(self._path(seq))
        if records:
            log.warning("call log journal: %d records left by a process that did not stop cleanly; storing them",
                        len(records))
        return records

    def append(self, record: CallRecord) -> None:
        """Write the record after all others. Never raises: a failure is counted, logged when it starts and
        ends, and the record lives on in memory only."""
        if self._is_closed:
            return
        try:
            frame = self._frame(record)
            if self._fd is None:
                self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            written, size = os.writev(self._fd, frame), sum(map(len, frame))
            if written != size:
                raise OSError(f"short write: {written} of {size} bytes (disk full?)")
        except Exception as exc:  # a full disk, a record it can't encode: never the request's failure
            self._failed(exc)
            return
        if self._is_failing:
            self._is_failing = False
            log.warning("call log journal writes again")

    def rotate(self) -> None:
        """Append to a new file from now on; `release` will delete the earlier ones."""
        self._abandon()
        self._release_below = self._active

    def release(self) -> None:
        """Delete the files from before the last `rotate` (or left by a previous process). Blocking; it may
        run in a thread while `append` runs, but not beside `rotate`."""
        for seq in self._files():
            if seq < self._release_below:
                self._path(seq).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop appending. Call it where `append` is called: it closes the file `append` writes to."""
        self._is_closed = True
        self._abandon()

    def discard(self) -> None:
        """After `close`, once everything is stored or spooled: delete every file (blocking)."""
        self._release_below = self._active
        self.release()

    def _frame(self, record: CallRecord) -> list[bytes]:
        """The frame's parts, for one `writev` (one append, no copy to join them)."""
        if self.cipher is None:
            kind, entry = _PLAIN, unsealed_record_to_bytes(record, omit=_UNUSED_WITHOUT_KEY)
        else:
            kind, entry = _SEALED, self.cipher.encrypt(unsealed_record_to_bytes(record), _AAD)
        length = (1 + len(entry)).to_bytes(4, "big")
        return [length + zlib.crc32(entry, zlib.crc32(kind, zlib.crc32(length))).to_bytes(4, "big") + kind, entry]

    def _read(self, path: Path) -> list[CallRecord]:
        records: list[CallRecord] = []
        errors: list[str] = []
        for entry in _entries(path):
            try:
                records.append(self._decode(entry))
            except Exception as exc:  # a wrong key, a damaged entry: keep the file, read the rest
                errors.append(f"{type(exc).__name__}: {exc}")
        if errors:
            kept = path.with_suffix(".unreadable")
            log.error("call log journal %s: %d records cannot be read (%s); kept as %s", path, len(errors),
                      errors[-1], kept.name)
            path.replace(kept)
        return records

    def _decode(self, entry: bytes) -> CallRecord:
        kind, body = entry[:1], entry[1:]
        if kind == _SEALED:
            if self.cipher is None:
                raise ValueError("encrypted with a log key, and none is configured now")
            body = self.cipher.decrypt(body, _AAD)
        elif kind != _PLAIN:
            raise ValueError(f"unknown entry kind {kind!r}")
        return unsealed_record_from_bytes(body)

    def _failed(self, exc: Exception) -> None:
        self._failures.inc()
        if not self._is_failing:
            self._is_failing = True
            log.error("call log journal write failed (%s: %s): until it works again, a killed process loses the"
                      " records it holds in memory (counted in minigate_log_journal_failures_total)",
                      type(exc).__name__, exc)
        self._abandon()  # the file may end in a torn frame: nothing goes after it

    def _abandon(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._active += 1
            with contextlib.suppress(OSError):
                os.close(fd)

    def _files(self) -> list[int]:
        return sorted(int(m[1]) for name in os.listdir(self.directory) if (m := _FILE.match(name)))

    def _path(self, seq: int) -> Path:
        return self.directory / f"journal-{seq:010d}.log"


def _entries(path: Path) -> Iterator[bytes]:
    """The entries of whole frames with a valid checksum; a torn tail (a killed write) ends the file."""
    data = path.read_bytes()
    offset = skipped = 0
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        end = offset + _FRAME.size + length
        if end > len(data):
            break
        entry = data[offset + _FRAME.size : end]
        if zlib.crc32(entry, zlib.crc32(data[offset : offset + 4])) == crc:
            yield entry
        else:
            skipped += 1
        offset = end
    if offset < len(data):
        log.warning("call log journal %s ends in a torn record (%d bytes, an interrupted write): discarded",
                    path, len(data) - offset)
    if skipped:
        log.warning("call log journal %s: %d records failed their checksum and were skipped", path, skipped)
