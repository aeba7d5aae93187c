"""The call log loses nothing: store outages, a stalled store, and SIGTERM under load (real stores)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx

from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import POSTGRES_URL, fetch, fresh_postgres_database
from tests.support.servers import run_gateway, start_gateway_process, write_config
from tests.support.upstream import ScriptedUpstream

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


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def stored_ids(url: str) -> list[str]:
    return [row[0] for row in fetch(url, "SELECT request_id FROM calls")]


async def _set_connections(url: str, allowed: bool) -> None:
    name = url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await connection.close()


def test_postgres_outage_under_load(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        logging = {"store": url, "spool": str(tmp_path / "spool"), "flush_interval_s": 0.05, "replay_interval_s": 0.2}
        path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
        with run_gateway(path) as gateway, Load(gateway.base_url) as load:
            wait_for(lambda: len(load.ids) > 50)
            asyncio.run(_set_connections(url, False))  # the store goes away mid-run...
            wait_for(lambda: gateway.metric("minigate_log_records_spooled_total") > 0)
            asyncio.run(_set_connections(url, True))  # ...and comes back
            count = len(load.ids)
            wait_for(lambda: len(load.ids) > count + 50)
        assert set(load.statuses) == {200}
        ids = stored_ids(url)
        assert sorted(ids) == sorted(load.ids), "exactly one record per request, none twice"
        assert gateway.metric("minigate_log_records_dropped_total") == 0


def test_stalled_store_and_full_queue_spool_instead_of_dropping(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    logging = {"store": store, "queue_size": 5, "batch_size": 5, "flush_interval_s": 0.05, "replay_interval_s": 0.2}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    with run_gateway(path) as gateway:
        wait_for(lambda: (tmp_path / "calls.db").exists())
        blocker = sqlite3.connect(tmp_path / "calls.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database: writes stall, then fail
        with Load(gateway.base_url) as load:
            wait_for(lambda: gateway.metric("minigate_log_records_spooled_total") >= 20)
        blocker.execute("ROLLBACK")
        blocker.close()
        wait_for(lambda: gateway.metric("minigate_log_records_written_total") >= len(load.ids))
    assert set(load.statuses) == {200}
    assert sorted(stored_ids(store)) == sorted(load.ids)
    assert gateway.metric("minigate_log_records_dropped_total") == 0


def test_sigterm_under_load_keeps_every_record(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'calls.db'}"
    path = write_config(tmp_path / "minigate.yaml",
                        gateway_config(upstream.base_url, logging={"store": store, "flush_interval_s": 5}))
    with start_gateway_process("--config", str(path), "--port", "0") as gateway:
        with Load(gateway.base_url) as load:
            wait_for(lambda: len(load.ids) > 100)
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
    # The flush interval had not passed: the records were written by the shutdown drain.
    assert sorted(stored_ids(store)) == sorted(load.ids)
