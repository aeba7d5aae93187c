"""The spool: a local, append-only home for call records while the store is down or the queue is full.

Every method does blocking file I/O: call them from a worker thread, the constructor included (it
scans what a previous run left). One process owns a spool directory at a time (a lock file enforces
it); records are opaque bytes, in order. The directory is created 0700 and its files 0600 (sealed
records are encrypted, but their metadata is not).

Layout. `path` is a directory of segments `0000000001.seg`, `0000000002.seg`, ... and `offsets.json`.
A segment is a run of frames

    [4-byte big-endian payload length][4-byte CRC32 of length and payload][payload]

and is appended to only by the `Spool` that created it. `replay` seals the segment being appended to
(later appends start a new one) and reads the sealed segments oldest first. The checksum covers the
length too, so the zero-filled tail a power cut can leave reads as corrupt rather than as empty
records. A frame whose checksum fails is skipped by its length; should the length itself be damaged,
the rest of that segment reads as a torn tail (reported, never a crash).

Why no record is lost, and at worst one batch is stored twice (the store is idempotent on request id):

1. Once `append` returns, its records are in the file, flushed to the OS under every fsync policy (a
   process crash loses nothing) and on disk under "always" and "batch" (a power cut loses nothing).
2. A segment never receives data after a torn frame: each `Spool` appends only to segments it created,
   and one whose write failed is sealed at once. So a torn frame is a tail, and reading stops there.
3. A segment's committed offset moves forward only in `commit`, which the caller calls after the
   store holds the batch; it is written to `offsets.json` by write, fsync, atomic rename. A segment is
   deleted only when `commit` is given its last batch. Hence every record the store may lack lies after
   its segment's committed offset in a segment that still exists, and the next `replay` (in this
   process or after a restart) reads it. A crash between the store's write and `commit` replays that
   one batch again; a torn `offsets.json` is ignored, which replays more, never less.
4. A stale offset (a segment deleted by `commit` before the offset file dropped its entry) can never
   apply to a later segment: new segment numbers exceed every number either file set mentions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import sys
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

import orjson

if sys.platform != "win32":
    import fcntl

__all__ = ["FsyncPolicy", "Spool", "SpoolBatch", "SpoolInUseError"]

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "batch", "never"]

_FRAME = struct.Struct(">II")
_MAX_PAYLOAD = 0xFFFF_FFFF
_SEGMENT = re.compile(r"^(\d{10})\.seg$")
_OFFSETS = "offsets.json"


class SpoolInUseError(RuntimeError):
    """Another `Spool` (in this process or another) holds the directory."""


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Records read back by `Spool.replay`; hand it to `Spool.commit` once the store holds them."""

    records: list[bytes]
    segment: int
    end: int  # offset just past the batch's last frame in its segment
    skipped: int  # corrupt frames passed over on the way
    is_segment_end: bool  # committing it deletes the segment


class Spool:
    """Append-only, checksummed, crash-safe record spool with replay and commit.

    >>> spool = Spool(tmp_path / "spool")  # doctest: +SKIP
    >>> spool.append([b"record 1", b"record 2"])  # doctest: +SKIP
    >>> for batch in spool.replay():  # doctest: +SKIP
    ...     store.write(batch.records)
    ...     spool.commit(batch)
    """

    def __init__(self, path: Path, fsync: FsyncPolicy = "batch") -> None:
        if fsync not in ("always", "batch", "never"):
            raise ValueError(f"fsync policy must be 'always', 'batch' or 'never', not {fsync!r}")
        self.path = path
        self.fsync: FsyncPolicy = fsync
        self._mutex = threading.Lock()
        _make_private_dir(path)
        self._lock_file: BinaryIO | None = _lock(path)
        self._active: BinaryIO | None = None
        self._corrupt = 0
        self._torn = 0
        offsets = _read_offsets(path / _OFFSETS)
        segments = self._segments()
        self._offsets = {seq: offset for seq, offset in offsets.items() if seq in segments}
        self._counts = {seq: _count_frames(self._segment_path(seq), self._offsets.get(seq, 0)) for seq in segments}
        self._active_seq = max([0, *segments, *offsets]) + 1

    # -- writing --------------------------------------------------------------------------------------

    def append(self, records: Sequence[bytes]) -> None:
        """Add records after all others; durable per the fsync policy when this returns."""
        for record in records:
            if len(record) > _MAX_PAYLOAD:
                raise ValueError(f"spool record of {len(record)} bytes exceeds the 4 GiB frame limit")
        if not records:
            return
        with self._mutex:
            if self._lock_file is None:
                raise RuntimeError("the spool is closed")
            try:
                self._write(self._active_file(), records)
            except BaseException:
                self._abandon_active()
                raise
            self._counts[self._active_seq] = self._counts.get(self._active_seq, 0) + len(records)

    def _write(self, file: BinaryIO, records: Sequence[bytes]) -> None:
        if self.fsync == "always":
            for record in records:
                file.write(_header(record) + record)
                file.flush()
                os.fsync(file.fileno())
            return
        file.write(b"".join(part for record in records for part in (_header(record), record)))
        file.flush()
        if self.fsync == "batch":
            os.fsync(file.fileno())

    def _active_file(self) -> BinaryIO:
        if self._active is None:
            self._active = _open_private(self._segment_path(self._active_seq), os.O_APPEND)  # kept open: appends are the hot path
            if self.fsync != "never":
                _fsync_dir(self.path)  # the new file's name must survive a power cut too
        return self._active

    def _seal(self) -> None:
        if self._active is not None:
            active, self._active = self._active, None
            self._active_seq += 1
            # After a failed write, closing flushes the same unwritable bytes again and fails again: the
            # file is closed all the same, and its torn tail is what replay is built to skip.
            with contextlib.suppress(OSError):
                active.close()

    def _abandon_active(self) -> None:
        """After a failed write: the segment may end in a torn frame, so nothing is appended to it again.

        One that holds no whole record is removed, so a disk that stays full for hours, retried every
        few seconds, leaves no trail of empty segments.
        """
        seq = self._active_seq
        self._seal()
        if seq not in self._counts:
            with contextlib.suppress(OSError):
                self._segment_path(seq).unlink(missing_ok=True)

    # -- reading back ---------------------------------------------------------------------------------

    def replay(self, max_records: int = 256, max_bytes: int = 8 << 20) -> Iterator[SpoolBatch]:
        """Yield what waits, oldest first, in batches of up to `max_records` records or about `max_bytes`.

        Each call starts again from the committed position, so a batch that was not committed (the
        store failed) comes back on the next call. Records appended meanwhile wait for the next call.
        """
        with self._mutex:
            self._seal()
            segments = sorted(self._counts)
            starts = {seq: self._offsets.get(seq, 0) for seq in segments}
        for seq in segments:
            yield from self._replay_segment(seq, starts[seq], max_records, max_bytes)

    def _replay_segment(self, seq: int, start: int, max_records: int, max_bytes: int) -> Iterator[SpoolBatch]:
        records: list[bytes] = []
        size = skipped = last_end = 0
        with open(self._segment_path(seq), "rb") as file:
            for payload, end, passed in self._frames(file, start):
                if payload is None:  # the segment's readable end; trailing corrupt frames go with the last batch
                    if records:
                        yield SpoolBatch(records, seq, end, skipped + passed, is_segment_end=True)
                        return
                    break
                # Emitting a full batch only once the next record is in hand tells us it is not the last.
                if records and (len(records) >= max_records or size >= max_bytes):
                    yield SpoolBatch(records, seq, last_end, skipped, is_segment_end=False)
                    records, size, skipped = [], 0, 0
                records.append(payload)
                size += len(payload)
                skipped += passed
                last_end = end
        with self._mutex:  # nothing valid after the committed offset, so nothing to store first
            self._finish(seq)

    def _frames(self, file: BinaryIO, start: int) -> Iterator[tuple[bytes | None, int, int]]:
        """(payload, end offset, corrupt frames just before it) per valid frame from `start`, then
        (None, end of the readable frames, corrupt frames before that)."""
        file_size = os.fstat(file.fileno()).st_size
        file.seek(start)
        offset, passed, corrupt = start, 0, 0
        while offset < file_size:
            header = file.read(_FRAME.size)
            length, crc = _FRAME.unpack(header) if len(header) == _FRAME.size else (file_size, 0)
            if offset + _FRAME.size + length > file_size:  # a partial header counts as overlong
                self._torn += 1
                log.warning(
                    "spool %s ends in a torn record (%d bytes, from an interrupted write): discarded",
                    file.name, file_size - offset,
                )
                break
            payload = file.read(length)
            offset += _FRAME.size + length
            if zlib.crc32(payload, zlib.crc32(header[:4])) == crc:
                yield payload, offset, passed
                passed = 0
            else:
                passed += 1
                corrupt += 1
        if corrupt:
            self._corrupt += corrupt
            log.warning("spool %s: %d records failed their checksum and were skipped", file.name, corrupt)
        yield None, offset, passed

    def commit(self, batch: SpoolBatch) -> None:
        """Record that the store holds `batch`: it will not be replayed again, here or after a restart.

        Commit batches in the order `replay` yields them. Committing one twice, or one older than what
        is committed, does nothing.
        """
        with self._mutex:
            seq = batch.segment
            if seq not in self._counts or batch.end <= self._offsets.get(seq, 0):
                return
            if batch.is_segment_end:
                self._finish(seq)
                return
            self._offsets[seq] = batch.end
            _write_offsets(self.path / _OFFSETS, self._offsets)
            self._counts[seq] -= len(batch.records) + batch.skipped

    def _finish(self, seq: int) -> None:
        """Delete a fully stored segment. The offset entry goes second: see point 4 of the module docstring."""
        self._segment_path(seq).unlink(missing_ok=True)
        _fsync_dir(self.path)
        self._counts.pop(seq, None)
        if self._offsets.pop(seq, None) is not None:
            _write_offsets(self.path / _OFFSETS, self._offsets)

    # -- state ----------------------------------------------------------------------------------------

    def pending(self) -> int:
        """Records waiting to be replayed and committed (corrupt ones included until they are passed)."""
        with self._mutex:
            return sum(self._counts.values())

    @property
    def corrupt_records(self) -> int:
        """Frames skipped for a failed checksum by this instance (again each time they are re-read)."""
        return self._corrupt

    @property
    def torn_tails(self) -> int:
        """Segments found ending in a partial frame by this instance."""
        return self._torn

    def close(self) -> None:
        """Close the file being appended to and release the directory; on disk this is the same as a crash."""
        with self._mutex:
            self._seal()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _segments(self) -> list[int]:
        return sorted(int(m[1]) for name in os.listdir(self.path) if (m := _SEGMENT.match(name)))

    def _segment_path(self, seq: int) -> Path:
        return self.path / f"{seq:010d}.seg"


def _header(record: bytes) -> bytes:
    length = len(record).to_bytes(4, "big")
    return length + zlib.crc32(record, zlib.crc32(length)).to_bytes(4, "big")


def _count_frames(path: Path, start: int) -> int:
    """Whole frames after `start`, by their headers alone: cheap enough for start-up."""
    count = 0
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        offset = start
        while offset + _FRAME.size <= file_size:
            file.seek(offset)
            length, _ = _FRAME.unpack(file.read(_FRAME.size))
            offset += _FRAME.size + length
            count += offset <= file_size
    return count


def _read_offsets(path: Path) -> dict[int, int]:
    try:
        raw = orjson.loads(path.read_bytes())
        return {int(seq): int(offset) for seq, offset in raw.items()}
    except FileNotFoundError:
        return {}
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        # A torn write (the rename landed, the data did not): starting from 0 replays more, loses nothing.
        log.warning("spool offsets %s are unreadable: replaying its segments from the start", path)
        return {}


def _write_offsets(path: Path, offsets: dict[int, int]) -> None:
    temporary = path.with_suffix(".tmp")
    with _open_private(temporary, os.O_TRUNC) as file:
        file.write(orjson.dumps({str(seq): offset for seq, offset in offsets.items()}))
        file.flush()
        os.fsync(file.fileno())
    # No directory fsync: if a power cut undoes the rename, the older offsets replay a batch twice.
    os.replace(temporary, path)


def _fsync_dir(path: Path) -> None:
    """Make a file's creation, rename or removal durable, not just its contents."""
    if sys.platform == "win32":  # directories can't be opened there; NTFS journals metadata anyway
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private_dir(path: Path) -> None:
    """The spool folder, created owner-only; an existing one is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)


def _open_private(path: Path, flags: int) -> BinaryIO:
    """Open for writing, creating the file owner-only (0600; the umask can only take bits away)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600), "ab" if flags & os.O_APPEND else "wb")


def _lock(path: Path) -> BinaryIO:
    file = _open_private(path / "lock", os.O_APPEND)  # held for the spool's lifetime
    if sys.platform != "win32":
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise SpoolInUseError(
                f"spool {path} is in use by another minigate process; give each process its own spool path"
            ) from None
    return file
