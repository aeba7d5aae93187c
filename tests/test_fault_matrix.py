"""The call log's fault matrix: a real gateway under load while its store is locked, down, full or
deleted, stopped by SIGTERM or killed by SIGKILL. Every row checks each answered request id: stored
exactly once, or counted in `minigate_log_records_dropped_total` while `/readyz` said so.

`pytest tests/test_fault_matrix.py -s` prints the table (row, answered, stored once, dropped, lost).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AGENT_KEY, ANALYST_KEY, gateway_config
from tests.stores import allow_connections, fetch, fresh_postgres_database
from tests.support.servers import RunningGateway, run_gateway, start_gateway_process, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually
from tests.support.faults import fill, nested, tmpfs

pytestmark = pytest.mark.slow  # load against gateways whose store fails

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
BODY = {"model": "cheap", "messages": [{"role": "user", "content": "write to jane@example.com"}]}
FAST = {"flush_interval_s": 0.05, "replay_interval_s": 0.2, "store_timeout_s": 0.5, "seal_processes": 0}


@dataclass(frozen=True)
class Answer:
    request_id: str
    status: int
    sent: float  # time.monotonic()
    answered: float


@dataclass
class Load:
    """Chat calls from a few threads; remembers every answered one."""

    base_url: str
    threads: int = 3
    pace_s: float = 0.0  # each thread's pause between calls
    answers: list[Answer] = field(default_factory=list)
    _workers: list[threading.Thread] = field(default_factory=list)

    def send(self, count: int) -> None:
        """`count` calls, split over the threads; returns when all are answered."""
        self.start(count)
        self.join()

    def start(self, count: int) -> None:
        """`count` calls in the background; a thread stops early when the gateway goes away."""
        share = [count // self.threads + (i < count % self.threads) for i in range(self.threads)]
        self._workers = [threading.Thread(target=self._run, args=(n,)) for n in share]
        for worker in self._workers:
            worker.start()

    def join(self) -> None:
        for worker in self._workers:
            worker.join(timeout=60)

    def _run(self, count: int) -> None:
        with httpx.Client(base_url=self.base_url, headers=AUTH, timeout=30) as client:
            for _ in range(count):
                time.sleep(self.pace_s)
                sent = time.monotonic()
                try:
                    response = client.post("/v1/chat/completions", json=BODY)
                except httpx.TransportError:
                    return
                if "x-minigate-request-id" in response.headers:  # else no call was made (a draining server)
                    self.answers.append(Answer(response.headers["x-minigate-request-id"], response.status_code, sent,
                                               time.monotonic()))

    @property
    def ids(self) -> list[str]:
        return [answer.request_id for answer in self.answers]


@dataclass(frozen=True)
class Row:
    name: str
    answered: int
    stored_once: int
    dropped: int
    lost: int


@pytest.fixture(scope="module")
def table() -> Iterator[list[Row]]:
    rows: list[Row] = []
    yield rows
    print("\n\ncall-log fault matrix")
    print(f"{'row':<34}{'answered':>9}{'stored once':>13}{'dropped':>9}{'lost':>6}")
    for row in rows:
        print(f"{row.name:<34}{row.answered:>9}{row.stored_once:>13}{row.dropped:>9}{row.lost:>6}")


def stored(url: str) -> Counter[str]:
    return Counter(row[0] for row in fetch(url, "SELECT request_id FROM calls"))


def check(table: list[Row], name: str, load: Load, store: Counter[str], dropped: float = 0) -> Row:
    """Each answered call is stored exactly once, unless it was one of the `dropped` ones."""
    assert {a.status for a in load.answers} == {200}
    assert all(count == 1 for count in store.values()), "a record stored twice"
    missing = [request_id for request_id in load.ids if request_id not in store]
    assert len(missing) == dropped, f"{len(missing)} answered calls not stored, {dropped:g} counted as dropped"
    row = Row(name, len(load.answers), sum(1 for i in load.ids if store[i] == 1), int(dropped), 0)
    table.append(row)
    return row


def gateway_at(tmp_path: Path, upstream: ScriptedUpstream, **logging: Any) -> Path:
    return write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging={**FAST, **logging}))


def readiness(gateway: RunningGateway) -> httpx.Response:
    return httpx.get(f"{gateway.base_url}/readyz", headers={"authorization": f"Bearer {ANALYST_KEY}"}, timeout=30)


def test_store_locked(upstream: ScriptedUpstream, tmp_path: Path, table: list[Row]) -> None:
    """Another process holds an exclusive lock on the SQLite file for a while: batches spool, then replay."""
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    with run_gateway(gateway_at(tmp_path, upstream, store=store)) as gateway:
        load = Load(gateway.base_url)
        load.send(15)
        blocker = sqlite3.connect(tmp_path / "calls.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        load.send(20)
        eventually(lambda: gateway.metric("minigate_log_records_spooled_total") > 0)
        assert readiness(gateway).status_code == 200  # spooled is persisted
        blocker.execute("ROLLBACK")
        blocker.close()
        load.send(15)
        eventually(lambda: len(stored(store)) == len(load.ids))
    check(table, "store locked (sqlite, exclusive)", load, stored(store))


def test_store_down_until_its_volume_appears(upstream: ScriptedUpstream, tmp_path: Path, table: list[Row]) -> None:
    """The SQLite file's folder does not exist yet (a volume not mounted): records spool until it does."""
    store = f"sqlite:///{tmp_path / 'volume' / 'calls.db'}"
    with run_gateway(gateway_at(tmp_path, upstream, store=store, spool=str(tmp_path / "spool"),
                                payloads=False)) as gateway:
        load = Load(gateway.base_url)
        load.send(25)
        eventually(lambda: gateway.metric("minigate_log_records_spooled_total") == 25)
        (tmp_path / "volume").mkdir()
        load.send(25)
        eventually(lambda: (tmp_path / "volume" / "calls.db").exists() and len(stored(store)) == 50)
    check(table, "store down (sqlite folder missing)", load, stored(store))


@pytest.mark.integration
def test_store_down_postgres(upstream: ScriptedUpstream, tmp_path: Path, table: list[Row]) -> None:
    """The PostgreSQL database refuses connections mid-run, then takes them again."""
    with fresh_postgres_database() as url:
        with run_gateway(gateway_at(tmp_path, upstream, store=url, spool=str(tmp_path / "spool"))) as gateway:
            load = Load(gateway.base_url)
            load.send(15)
            allow_connections(url, False)
            load.send(20)
            eventually(lambda: gateway.metric("minigate_log_records_spooled_total") > 0)
            allow_connections(url, True)
            load.send(15)
            eventually(lambda: len(stored(url)) == len(load.ids))
        check(table, "store down (postgresql refusing)", load, stored(url))


def test_store_full(upstream: ScriptedUpstream, tmp_path: Path, table: list[Row]) -> None:
    """Store and spool on one full disk: /readyz says why; at most queue_size records are held (the rest are
    dropped and counted); once space returns everything held is stored, once."""
    with tmpfs(tmp_path / "disk") as disk:
        store = f"sqlite:///{disk / 'calls.db'}"
        with run_gateway(gateway_at(tmp_path, upstream, store=store, queue_size=10, payloads=False)) as gateway:
            load = Load(gateway.base_url)
            load.send(10)
            eventually(lambda: len(stored(store)) == 10)
            filler = fill(disk)
            load.send(3)
            eventually(lambda: readiness(gateway).status_code == 503)
            load.send(30)
            not_ready = readiness(gateway).json()
            dropped = gateway.metric("minigate_log_records_dropped_total")
            filler.unlink()
            eventually(lambda: readiness(gateway).status_code == 200)
            load.send(10)
            eventually(lambda: len(stored(store)) + dropped == len(load.ids))
            assert gateway.metric("minigate_log_records_dropped_total") == dropped
        assert not_ready["status"] == "not_ready"
        assert "database or disk is full" in not_ready["call_log"] and "No space left" in not_ready["call_log"]
        # The 3 held stay. Of the 30 sent after, as many wait in the queue as it has room for: 10 when the
        # failing batch took all 3, down to 7 when some of the 3 still sat in the queue as the write failed.
        assert 30 - 10 <= dropped <= 30 - 10 + 3
        check(table, "store full (tmpfs, queue_size 10)", load, stored(store), dropped)


def test_file_deleted_mid_serving(upstream: ScriptedUpstream, tmp_path: Path, table: list[Row],
                                  caplog: pytest.LogCaptureFixture) -> None:
    """The SQLite file (with -wal and -shm) deleted under the gateway: it is re-created before the next batch.
    Records committed before the deletion went with the file; every call sent after it is in the new one."""
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    with caplog.at_level(logging.WARNING, logger="minigate.logger"), \
            run_gateway(gateway_at(tmp_path, upstream, store=store)) as gateway:
        load = Load(gateway.base_url)
        load.send(20)
        eventually(lambda: len(stored(store)) == 20)
        for name in ("calls.db", "calls.db-wal", "calls.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        deleted_at = time.monotonic()
        load.send(30)
        eventually(lambda: (tmp_path / "calls.db").exists() and len(stored(store)) >= 30)
    after = Load(load.base_url, answers=[a for a in load.answers if a.sent > deleted_at])
    assert [r for r in caplog.records if "deleted or replaced" in r.getMessage()]
    row = check(table, "file deleted (sent after deletion)", after, stored(store))
    assert row.answered == 30


@pytest.mark.integration
def test_sigterm_under_load(upstream: ScriptedUpstream, tmp_path: Path, table: list[Row]) -> None:
    """A real `minigate serve` (sealing in its worker process) drains and stores every answered call."""
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    path = gateway_at(tmp_path, upstream, store=store, seal_processes=1, flush_interval_s=2)
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:
        load = Load(gateway.base_url)
        load.start(3000)
        eventually(lambda: len(load.answers) >= 40)
        gateway.signal(signal.SIGTERM)
        load.join()
        assert gateway.wait() == 0
    check(table, "SIGTERM under load", load, stored(store))


@pytest.mark.integration
def test_sigkill_then_restart_under_load(upstream: ScriptedUpstream, tmp_path: Path, table: list[Row]) -> None:
    """Killed while its store is locked: what was spooled survives and is replayed at the restart. Only calls
    answered within the documented window (flush_interval_s + store_timeout_s) before the kill may be lost."""
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    path = gateway_at(tmp_path, upstream, store=store, flush_interval_s=0.2, store_timeout_s=0.5)
    window_s = 0.2 + 0.5
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:
        # Paced, so the gateway's core keeps up with sealing: the window holds for a writer that is not behind.
        load = Load(gateway.base_url, pace_s=0.01)
        load.send(5)  # the first batch also loads the redaction lexicons
        eventually(lambda: len(stored(store)) == 5)
        blocker = sqlite3.connect(tmp_path / "calls.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        load.start(3000)
        eventually(lambda: len(load.answers) >= 45 and time.monotonic() - started > 3 * window_s)
        gateway.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        load.join()
        gateway.wait()
    blocker.execute("ROLLBACK")
    blocker.close()
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:
        eventually(lambda: len(stored(store)) >= sum(1 for a in load.answers if a.answered < killed_at - window_s), 10)
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
    records = stored(store)
    assert all(count == 1 for count in records.values())
    early = [a for a in load.answers if a.answered < killed_at - window_s]
    assert [a.request_id for a in early if a.request_id not in records] == [], "lost outside the window"
    lost = sum(1 for a in load.answers if a.request_id not in records)
    table.append(Row(f"SIGKILL + restart (window {window_s:g} s)", len(load.answers),
                     sum(1 for a in load.answers if records[a.request_id] == 1), 0, lost))


def test_deeply_nested_request_keeps_the_writer_alive(upstream: ScriptedUpstream, tmp_path: Path,
                                                      table: list[Row]) -> None:
    """A field nested 300 deep once killed the log writer: refused at the door now (400) or stored without
    its payload; either way every later call is stored."""
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    with run_gateway(gateway_at(tmp_path, upstream, store=store)) as gateway:
        deep = httpx.post(f"{gateway.v1}/chat/completions", headers={**AUTH, "content-type": "application/json"},
                          content=nested(300, b'"jane@example.com"'), timeout=30)
        assert deep.status_code in (200, 400), deep.text
        load = Load(gateway.base_url)
        load.send(20)
        eventually(lambda: len(stored(store)) == 20 + (deep.status_code == 200))
        assert readiness(gateway).status_code == 200
    if deep.status_code == 200:
        load.answers.append(Answer(deep.headers["x-minigate-request-id"], 200, 0.0, 0.0))
    check(table, f"nested 300 deep (answered {deep.status_code})", load, stored(store))
