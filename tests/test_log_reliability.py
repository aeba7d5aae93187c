"""The call log loses nothing it can keep: store outages, a stalled store, a full disk, records that
can't be sealed, and SIGTERM under load (real stores; the fault matrix is tests/test_fault_matrix.py)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from minigate.logger.crypto import PayloadCipher, generate_key
from minigate.logger.pipeline import CallLog
from minigate.logger.records import CallRecord
from minigate.logger.seal import Sealer
from minigate.logger.settings import LoggingSection
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import allow_connections, fetch, fresh_postgres_database
from tests.support.faults import fill, nested, tmpfs
from tests.support.servers import run_gateway, start_gateway_process, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually, eventually_async

pytestmark = pytest.mark.slow  # load against gateways whose store fails

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
BODY = {"model": "cheap", "messages": [{"role": "user", "content": "x"}]}


class Load:
    """Requests in a background thread until stopped; remembers every request id that got a response."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.ids: list[str] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=AUTH, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v1/chat/completions", json=BODY)
                except httpx.TransportError:
                    return  # the gateway went away (SIGTERM test)
                self.ids.append(response.headers["x-minigate-request-id"])
                self.statuses.append(response.status_code)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def stored_ids(url: str) -> list[str]:
    return [row[0] for row in fetch(url, "SELECT request_id FROM calls")]


@pytest.mark.integration
def test_postgres_outage_under_load(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        logging = {"store": url, "spool": str(tmp_path / "spool"), "flush_interval_s": 0.05, "replay_interval_s": 0.2}
        path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
        with run_gateway(path) as gateway, Load(gateway.base_url) as load:
            eventually(lambda: len(load.ids) > 50)
            allow_connections(url, False)  # the store goes away mid-run...
            eventually(lambda: gateway.metric("minigate_log_records_spooled_total") > 0)
            allow_connections(url, True)  # ...and comes back
            count = len(load.ids)
            eventually(lambda: len(load.ids) > count + 50)
        assert set(load.statuses) == {200}
        ids = stored_ids(url)
        assert sorted(ids) == sorted(load.ids), "exactly one record per request, none twice"
        assert gateway.metric("minigate_log_records_dropped_total") == 0


def test_stalled_store_and_full_queue_spool_instead_of_dropping(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    logging = {"store": store, "queue_size": 5, "batch_size": 5, "flush_interval_s": 0.05, "replay_interval_s": 0.2}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    with run_gateway(path) as gateway:
        eventually(lambda: (tmp_path / "calls.db").exists())
        blocker = sqlite3.connect(tmp_path / "calls.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database: writes stall, then fail
        with Load(gateway.base_url) as load:
            eventually(lambda: gateway.metric("minigate_log_records_spooled_total") >= 20)
        blocker.execute("ROLLBACK")
        blocker.close()
        eventually(lambda: gateway.metric("minigate_log_records_written_total") >= len(load.ids))
    assert set(load.statuses) == {200}
    assert sorted(stored_ids(store)) == sorted(load.ids)
    assert gateway.metric("minigate_log_records_dropped_total") == 0


@pytest.mark.integration
def test_sigterm_under_load_keeps_every_record(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    path = write_config(tmp_path / "minigate.yaml",
                        gateway_config(upstream.base_url, logging={"store": store, "flush_interval_s": 5}))
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:
        with Load(gateway.base_url) as load:
            eventually(lambda: len(load.ids) > 100)
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
    # The flush interval had not passed: the records were written by the shutdown drain.
    assert sorted(stored_ids(store)) == sorted(load.ids)


# -- the writer alone: a CallLog over a real store, no gateway ---------------------------------------


def record(request_id: str, **fields: Any) -> CallRecord:
    return CallRecord(request_id=request_id, started_at=time.time(), key_name="agents", route="cheap", model="mini",
                      tier="miniature", task="unknown", rule="default", upstream="scripted", status=200,
                      latency_s=0.01, stream=False, **fields)


def call_log(store: str, **settings: Any) -> tuple[CallLog, CollectorRegistry]:
    section = LoggingSection(store=store, flush_interval_s=0.05, replay_interval_s=0.2, **settings)
    registry = CollectorRegistry()
    return CallLog(section, registry, Sealer.from_settings(section)), registry


def sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


@pytest.mark.parametrize("seal_processes", [0, 1])
def test_a_record_that_cannot_be_sealed_costs_its_payload_only(tmp_path: Path, seal_processes: int) -> None:
    """A body nested 300 deep used to kill the writer, and every later record waited in memory for ever."""
    key = generate_key()
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    calls, registry = call_log(store, encryption_key=key, seal_processes=seal_processes)
    later = [f"later-{i}" for i in range(5)]

    async def scenario() -> None:
        await calls.start()
        calls.submit(record("deep", request_body=nested(300, b'"jane.deep@example.com"')))
        for request_id in later:
            calls.submit(record(request_id, request_body=b'{"messages":[{"role":"user","content":"a@b.co"}]}'))
        await eventually_async(lambda: sample(registry, "minigate_log_records_written_total") >= 6)
        assert calls.problem is None
        await calls.stop()

    asyncio.run(scenario())
    rows = {row[0]: row[1] for row in fetch(store, "SELECT request_id, request_payload FROM calls")}
    assert set(rows) == {"deep", *later}
    cipher = PayloadCipher(key)
    if rows["deep"] is not None:  # sealed with a marker in place of what could not be redacted
        assert b"jane.deep" not in cipher.decrypt(bytes(rows["deep"]), b"deep")
    for request_id in later:
        assert b"<EMAIL_1>" in cipher.decrypt(bytes(rows[request_id]), request_id.encode())
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("calls.db*") if p.is_file())
    assert b"jane.deep" not in raw
    assert sample(registry, "minigate_log_records_dropped_total") == 0


def test_a_full_disk_holds_a_bounded_number_of_records_and_recovers(tmp_path: Path) -> None:
    """Store and spool both fail: records are held (queue_size at most) and retried; the rest are dropped,
    counted and reported by `problem`; once space returns, everything held is stored, once."""
    with tmpfs(tmp_path / "disk") as disk:
        store = f"sqlite:///{disk / 'calls.db'}"
        calls, registry = call_log(store, queue_size=5, batch_size=5, payloads=False)

        async def scenario() -> tuple[str | None, str | None]:
            await calls.start()
            calls.submit(record("before"))
            await eventually_async(lambda: sample(registry, "minigate_log_records_written_total") == 1)
            filler = fill(disk)
            for i in range(3):
                calls.submit(record(f"held-{i}"))
            await eventually_async(lambda: calls.problem is not None)
            for i in range(20):  # the writer takes none while it retries: 5 wait in the queue, 15 are dropped
                calls.submit(record(f"late-{i}"))
            full = calls.problem
            filler.unlink()
            await eventually_async(lambda: calls.problem is None and sample(registry, "minigate_log_queue_depth") == 0)
            recovered = calls.problem
            await calls.stop()
            return full, recovered

        full, recovered = asyncio.run(scenario())
        stored = [row[0] for row in fetch(store, "SELECT request_id FROM calls")]
    assert full is not None and full.startswith("call log cannot persist: store: database or disk is full; spool: ")
    assert "No space left on device" in full and full.endswith("; 8 records held in memory")
    assert recovered is None
    assert sorted(stored) == sorted(["before", "held-0", "held-1", "held-2", *(f"late-{i}" for i in range(5))])
    assert sample(registry, "minigate_log_records_dropped_total") == 15


@pytest.mark.integration
def test_a_store_that_hangs_costs_a_timeout_then_the_spool(tmp_path: Path) -> None:
    """A PostgreSQL write stuck behind a lock would hold every later record in memory: it gets
    `store_timeout_s`, then the batch is spooled; once the lock goes, replay stores each record once."""
    with fresh_postgres_database() as url:
        calls, registry = call_log(url, spool=tmp_path / "spool", store_timeout_s=0.3, payloads=False)

        async def scenario() -> None:
            await calls.start()
            blocker = await asyncpg.connect(url)
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
            for i in range(10):
                calls.submit(record(f"stalled-{i}"))
            await eventually_async(lambda: sample(registry, "minigate_log_records_spooled_total") == 10)
            assert calls.problem is None  # spooled is persisted
            await transaction.rollback()
            await blocker.close()
            await eventually_async(lambda: sample(registry, "minigate_log_records_written_total") >= 10)
            await calls.stop()

        asyncio.run(scenario())
        assert sorted(row[0] for row in fetch(url, "SELECT request_id FROM calls")) == sorted(
            f"stalled-{i}" for i in range(10))
