"""`GET /v1/minigate/calls`: reads behind roles, cursor paging, filters, audited payload reads."""

from __future__ import annotations

from pathlib import Path

import httpx

from minigate.logger.crypto import generate_key
from tests.conftest import ADMIN_KEY, AGENT_KEY, ANALYST_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_reads_behind_roles(upstream: ScriptedUpstream, tmp_path: Path, store_url: str) -> None:
    logging = {"store": store_url, "encryption_key": generate_key(), "flush_interval_s": 0.05,
               "spool": str(tmp_path / "spool")}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    with run_gateway(path) as gateway:
        sent = []
        for i in range(5):
            response = httpx.post(f"{gateway.v1}/chat/completions", headers=bearer(AGENT_KEY), json={
                "model": "cheap" if i < 3 else "gpt-4.1",
                "messages": [{"role": "user", "content": f"call {i}: write to ann{i}@example.org"}]})
            sent.append(response.headers["x-minigate-request-id"])
        # The first batch may wait for the sealing worker to start.
        eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 5)
        url = f"{gateway.v1}/minigate/calls"

        assert httpx.get(url, headers=bearer(AGENT_KEY)).status_code == 403
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=bearer(ANALYST_KEY), params={"payloads": "true"}).status_code == 403

        first = httpx.get(url, headers=bearer(ANALYST_KEY), params={"limit": 2}).json()
        second = httpx.get(url, headers=bearer(ANALYST_KEY), params={"limit": 2, "cursor": first["next_cursor"]}).json()
        third = httpx.get(url, headers=bearer(ANALYST_KEY), params={"limit": 2, "cursor": second["next_cursor"]}).json()
        pages = first["data"] + second["data"] + third["data"]
        assert [row["request_id"] for row in pages] == sent and third["next_cursor"] is None
        assert "request" not in pages[0] and "request_payload" not in pages[0]
        assert pages[0]["key_name"] == "agents" and pages[0]["tier"] == "miniature"
        assert 0 < pages[0]["ttft_s"] <= pages[0]["latency_s"]
        [attempt] = pages[0]["attempts"]
        assert attempt["upstream"] == "scripted" and attempt["model"] == "mini-lora" and attempt["status"] == 200

        routed = httpx.get(url, headers=bearer(ANALYST_KEY), params={"route": "gpt-4.1"}).json()["data"]
        assert [row["request_id"] for row in routed] == sent[3:]
        later = httpx.get(url, headers=bearer(ANALYST_KEY), params={"since": pages[4]["started_at"]}).json()["data"]
        assert [row["request_id"] for row in later] == sent[4:]

        admin = httpx.get(url, headers=bearer(ADMIN_KEY), params={"payloads": "true", "limit": 1}).json()["data"][0]
        assert admin["request"]["messages"][0]["content"] == "call 0: write to <EMAIL_1>"
        assert admin["response"]["choices"][0]["message"]["content"] == "call 0: write to <EMAIL_1>"

        bad = httpx.get(url, headers=bearer(ANALYST_KEY), params={"cursor": "nonsense"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "cursor"
        assert httpx.get(url, headers=bearer(ANALYST_KEY), params={"since": "yesterday"}).status_code == 400
        assert httpx.get(url, headers=bearer(ANALYST_KEY), params={"limit": 5000}).status_code == 400
    audit = fetch(store_url, "SELECT actor, action, detail FROM audit")
    assert audit == [("platform", "read_payloads", f"1 calls, {sent[0]} .. {sent[0]}")]
