"""The spool: order, torn tails, corrupt frames, exactly-once replay across crashes, fsync policies."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from minigate.logger.spool import FsyncPolicy, Spool, SpoolBatch, SpoolInUseError
from tests.support.waiting import eventually


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool") as spool:
        yield spool


def records(n: int, start: int = 0) -> list[bytes]:
    return [f"record-{i}".encode() for i in range(start, start + n)]


def drain(spool: Spool, **limits: int) -> list[bytes]:
    """Replay everything, committing each batch as a store would after writing it."""
    out: list[bytes] = []
    for batch in spool.replay(**limits):
        out.extend(batch.records)
        spool.commit(batch)
    return out


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_replay_returns_records_in_order_in_bounded_batches(spool: Spool) -> None:
    spool.append(records(10))
    spool.append(records(15, start=10))
    assert spool.pending() == 25
    batches = list(spool.replay(max_records=7))
    assert [len(b.records) for b in batches] == [7, 7, 7, 4]
    assert [r for b in batches for r in b.records] == records(25)
    assert [b.is_segment_end for b in batches] == [False, False, False, True]


def test_committing_empties_the_spool_and_removes_its_files(spool: Spool) -> None:
    spool.append(records(100))
    assert drain(spool, max_records=30) == records(100)
    assert spool.pending() == 0
    assert segments(spool.path) == []
    assert list(spool.replay()) == []


def test_uncommitted_batches_come_back(spool: Spool) -> None:
    spool.append(records(10))
    first = list(spool.replay(max_records=4))
    spool.commit(first[0])  # the store took the first batch, then failed
    assert spool.pending() == 6
    assert drain(spool) == records(6, start=4)


def test_commit_twice_or_out_of_date_changes_nothing(spool: Spool) -> None:
    spool.append(records(10))
    first, second, _ = spool.replay(max_records=4)
    spool.commit(first)
    spool.commit(second)
    spool.commit(first)
    spool.commit(second)
    assert spool.pending() == 2
    assert drain(spool) == records(2, start=8)


def test_appends_during_replay_wait_for_the_next_replay(spool: Spool) -> None:
    spool.append(records(10))
    seen: list[bytes] = []
    for n, batch in enumerate(spool.replay(max_records=3)):
        spool.append(records(1, start=100 + n))
        seen.extend(batch.records)
        spool.commit(batch)
    assert seen == records(10)
    assert spool.pending() == 4
    assert drain(spool) == records(4, start=100)


def test_appending_thread_and_replaying_thread_together(spool: Spool) -> None:
    expected = records(5_000)

    def write() -> None:
        for start in range(0, len(expected), 10):
            spool.append(expected[start : start + 10])

    writer = threading.Thread(target=write)
    writer.start()
    replayed: list[bytes] = []
    while writer.is_alive() or spool.pending():
        replayed.extend(drain(spool, max_records=100))
    writer.join()
    assert replayed == expected
    assert segments(spool.path) == []


def test_empty_records_and_empty_appends(spool: Spool) -> None:
    spool.append([])
    assert segments(spool.path) == []
    spool.append([b"", b"x", b""])
    assert drain(spool) == [b"", b"x", b""]


def test_large_records_round_trip_and_bound_batches_by_size(spool: Spool) -> None:
    big = [bytes([i]) * (1 << 20) for i in range(5)]
    spool.append([big[0], b"small", *big[1:]])
    batches = list(spool.replay(max_bytes=2 << 20))
    assert all(sum(map(len, b.records)) <= (3 << 20) for b in batches)
    assert len(batches) >= 2
    assert [r for b in batches for r in b.records] == [big[0], b"small", *big[1:]]


def test_many_small_records_append_and_replay_in_order(spool: Spool) -> None:
    """Speed is bench/logging's business; here 100k records across many segments come back exactly."""
    batch = records(100_000)
    for offset in range(0, len(batch), 1000):
        spool.append(batch[offset : offset + 1000])
    assert drain(spool) == batch


def test_torn_tail_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool"
    with Spool(path) as spool:
        spool.append(records(5))
    (segment,) = segments(path)
    segment.write_bytes(segment.read_bytes()[:-3])  # the crash hit mid-way through the last record
    with Spool(path) as spool:
        assert spool.pending() == 4
        with caplog.at_level(logging.WARNING, logger="minigate.logger.spool"):
            assert drain(spool) == records(4)
        assert spool.torn_tails == 1
        assert "torn record" in caplog.text
        assert segments(path) == []


@pytest.mark.parametrize("cut", [1, 4, 8, 9])
def test_torn_header_or_payload_never_breaks_later_appends(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "spool"
    with Spool(path) as spool:
        spool.append(records(3))
    (segment,) = segments(path)
    with segment.open("ab") as file:
        file.write((b"\x00\x00\x00\x10" + b"\x00" * 4 + b"p" * 16)[:cut])
    with Spool(path) as spool:
        spool.append(records(2, start=3))  # goes to a new segment, never after the torn bytes
        assert drain(spool) == records(5)
        assert spool.torn_tails == 1


def test_bad_checksum_skips_the_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool"
    with Spool(path) as spool:
        spool.append(records(5))
    (segment,) = segments(path)
    data = bytearray(segment.read_bytes())
    data[data.index(b"record-2") + 7] ^= 0xFF
    segment.write_bytes(bytes(data))
    with Spool(path) as spool:
        with caplog.at_level(logging.WARNING, logger="minigate.logger.spool"):
            assert drain(spool, max_records=2) == [r for r in records(5) if r != b"record-2"]
        assert spool.corrupt_records == 1
        assert spool.pending() == 0
        assert "failed their checksum" in caplog.text


def test_zero_filled_tail_is_corrupt_not_empty_records(tmp_path: Path) -> None:
    # After a power cut some filesystems keep a file's new length but not its data.
    path = tmp_path / "spool"
    with Spool(path) as spool:
        spool.append(records(3))
    (segment,) = segments(path)
    with segment.open("ab") as file:
        file.write(bytes(64))
    with Spool(path) as spool:
        assert drain(spool) == records(3)
        assert spool.corrupt_records == 8


def test_a_segment_of_garbage_never_crashes(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.mkdir()
    (path / "0000000001.seg").write_bytes(os.urandom(100_000))
    with Spool(path) as spool:
        spool.append(records(3))
        assert drain(spool)[-3:] == records(3)
        assert segments(path) == []


def test_crash_between_store_and_commit_replays_that_batch_only(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    stored: list[bytes] = []
    with Spool(path) as spool:  # closing leaves the disk exactly as a crash would
        spool.append(records(100))
        for n, batch in enumerate(spool.replay(max_records=10)):
            stored.extend(batch.records)
            if n == 4:
                break  # stored, then the process died before commit
            spool.commit(batch)
    with Spool(path) as spool:
        assert spool.pending() == 60
        stored.extend(drain(spool, max_records=10))
    assert set(stored) == set(records(100))
    assert len(stored) == 110  # one batch twice, nothing lost


def test_unreadable_offsets_replay_more_never_less(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool"
    with Spool(path) as spool:
        spool.append(records(20))
        spool.commit(next(spool.replay(max_records=10)))
    (path / "offsets.json").write_bytes(b"\x00\x00\x00")
    with Spool(path) as spool, caplog.at_level(logging.WARNING, logger="minigate.logger.spool"):
        assert drain(spool) == records(20)
    assert "unreadable" in caplog.text


def test_a_stale_offset_never_applies_to_a_new_segment(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.mkdir()
    (path / "offsets.json").write_text('{"1": 30, "2": 30}')  # left by a crash; the segments are gone
    with Spool(path) as spool:
        spool.append(records(10))
        assert drain(spool) == records(10)


def test_one_owner_per_spool_directory(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    spool = Spool(path)
    with pytest.raises(SpoolInUseError, match="give each process its own spool path"):
        Spool(path)
    spool.close()
    with pytest.raises(RuntimeError, match="closed"):
        spool.append(records(1))
    Spool(path).close()


def test_unknown_fsync_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'always', 'batch' or 'never'"):
        Spool(tmp_path / "spool", "sometimes")  # type: ignore[arg-type]


# -- real crashes: a child process killed without any cleanup -------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from minigate.logger.spool import Spool

    path, mode, policy = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    spool = Spool(path, policy)
    if mode == "append-then-exit":
        spool.append([b"record-%d" % i for i in range(50)])
        os._exit(0)
    if mode == "append-forever":
        ack = open(path.parent / "acked", "w")
        i = 0
        while True:
            spool.append([b"record-%d" % i + b"." * (i % 300)])
            i += 1
            ack.write("%d\\n" % i)
            ack.flush()
    if mode == "replay-and-die":
        store = open(path.parent / "store", "a")
        for n, batch in enumerate(spool.replay(max_records=8)):
            store.write("".join(r.decode() + "\\n" for r in batch.records))
            store.flush()
            if n == int(sys.argv[4]):
                os._exit(1)
            spool.commit(batch)
    """
)


def run_child(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "spool"), *args])


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_records_survive_a_process_crash_right_after_append(tmp_path: Path, policy: FsyncPolicy) -> None:
    assert run_child(tmp_path, "append-then-exit", policy).wait() == 0
    with Spool(tmp_path / "spool", policy) as spool:
        assert spool.pending() == 50
        assert drain(spool) == [b"record-%d" % i for i in range(50)]


def test_sigkill_while_appending_loses_no_acknowledged_record(tmp_path: Path) -> None:
    child = run_child(tmp_path, "append-forever", "batch")
    acked = tmp_path / "acked"
    eventually(lambda: acked.exists() and acked.read_text().count("\n") >= 300, interval=0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    acknowledged = acked.read_text().count("\n")
    with Spool(tmp_path / "spool") as spool:
        replayed = drain(spool)
    assert len(replayed) >= acknowledged >= 300
    assert replayed == [b"record-%d" % i + b"." * (i % 300) for i in range(len(replayed))]


@pytest.mark.parametrize("die_after_batch", [0, 3, 5])
def test_replay_killed_mid_way_then_restarted_stores_everything(tmp_path: Path, die_after_batch: int) -> None:
    with Spool(tmp_path / "spool") as spool:
        spool.append(records(50))
    assert run_child(tmp_path, "replay-and-die", "batch", str(die_after_batch)).wait() == 1
    with Spool(tmp_path / "spool") as spool:
        assert spool.pending() == 50 - 8 * die_after_batch
        rest = drain(spool)
    stored = (tmp_path / "store").read_text().split() + [r.decode() for r in rest]
    assert set(stored) == {r.decode() for r in records(50)}
    assert len(stored) - 50 == 8  # exactly the one batch stored but not committed


def test_batch_fields_describe_the_position(spool: Spool) -> None:
    spool.append(records(3))
    (batch,) = spool.replay()
    assert isinstance(batch, SpoolBatch)
    assert (batch.skipped, batch.is_segment_end) == (0, True)
    assert batch.end == sum(8 + len(r) for r in records(3))


def test_the_spool_folder_and_files_are_private(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:
        spool.append(records(3))
        spool.commit(next(spool.replay(max_records=1)))
        spool.append(records(3))
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700
    files = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "spool").iterdir()}
    assert {"lock", "offsets.json"} <= set(files) and set(files.values()) == {0o600}, files


def test_appends_to_a_full_disk_fail_cleanly_and_work_again_once_there_is_space(tmp_path: Path) -> None:
    """Retried for as long as the disk is full, failed appends leave no empty segments and no torn frame
    in front of later records."""
    from tests.support.faults import fill, tmpfs

    with tmpfs(tmp_path / "disk", size="1m") as disk, Spool(disk / "spool") as spool:
        spool.append(records(2))
        filler = fill(disk)
        for _ in range(20):
            with pytest.raises(OSError):
                spool.append([b"x" * 8192])
        assert len(segments(spool.path)) <= 2
        filler.unlink()
        spool.append(records(2, start=2))
        assert drain(spool) == records(4)
