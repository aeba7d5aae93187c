"""Sealing that nothing a record holds can break, through the real worker-process pool; and workers
that die with a gateway killed by SIGKILL (a real `minigate serve` process).

Each payload is decrypted with the log's cipher: what is stored is redacted, marked as withheld, or
marked unsealable, and never holds the PII that went in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from minigate.logger.crypto import generate_key
from minigate.logger.records import CallRecord
from minigate.logger.redact import MAX_DEPTH
from minigate.logger.seal import Sealer, SealerPool
from minigate.logger.settings import LoggingSection
from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import start_gateway_process, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

_EMAIL, _SSN = "jane@example.com", "536-22-8718"
_REPLY = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 1}})


@pytest.fixture(scope="module")
def sealer() -> Sealer:
    return Sealer.from_settings(LoggingSection(encryption_key=generate_key()))  # type: ignore[arg-type]


def _record(body: bytes, **raw: Any) -> CallRecord:
    return CallRecord(request_id=uuid.uuid4().hex, started_at=time.time(), key_name="agents", route="r", model="m",
                      tier="frontier", task="unknown", rule="default", upstream="up", status=200, latency_s=0.01,
                      stream="chunks" in raw, request_body=body, **raw)


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"mail {_EMAIL} now"}], **extra}


def _seal(sealer: Sealer, records: list[CallRecord]) -> list[CallRecord]:
    async def seal() -> list[CallRecord]:
        pool = SealerPool(sealer, 1)
        try:
            return await pool.seal(records)
        finally:
            await asyncio.to_thread(pool.close)

    return asyncio.run(seal())


def _opened(sealer: Sealer, record: CallRecord, payload: bytes | None) -> str:
    """The stored payload's plaintext; the PII that went in is in neither it nor the stored bytes."""
    assert sealer.cipher is not None and payload is not None
    text = sealer.cipher.decrypt(payload, record.request_id.encode()).decode()
    for value in (_EMAIL, _SSN):
        assert value not in text and value.encode() not in payload
    return text


def _nested(pairs: int, inner: Any) -> Any:
    """`inner` under `pairs` times a dict and a list: twice as many levels."""
    for _ in range(pairs):
        inner = {"a": [inner]}
    return inner


def test_a_field_nested_300_deep_is_sealed_with_the_depth_withheld(sealer: Sealer) -> None:
    body = json.dumps(_chat(metadata=_nested(150, f"ssn {_SSN}"))).encode()  # orjson writes 254 levels at most
    record = _seal(sealer, [_record(body, reply=_REPLY)])[0]
    request = json.loads(_opened(sealer, record, record.request_payload))
    assert request["messages"][0]["content"] == "mail <EMAIL_1> now"
    assert f"<NESTED DEEPER THAN {MAX_DEPTH} LEVELS: " in json.dumps(request)
    assert "<SSN_1>" not in json.dumps(request)  # withheld whole, beyond the depth limit
    assert json.loads(_opened(sealer, record, record.response_payload))["choices"][0]["message"]["content"] == "ok"
    assert (record.input_tokens, record.output_tokens) == (7, 1) and record.key_id == sealer.cipher.key_id


def test_a_body_nested_5000_deep_is_kept_as_redacted_text(sealer: Sealer) -> None:
    body = b'{"model": "m", "x": ' + b"[" * 5000 + f'"{_EMAIL}"'.encode() + b"]" * 5000 + b"}"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    record = _seal(sealer, [_record(body, reply=_REPLY)])[0]
    request = json.loads(_opened(sealer, record, record.request_payload))
    assert request["raw"] == body.decode().replace(_EMAIL, "<EMAIL_1>")


def test_a_string_holding_deeply_nested_json_is_redacted(sealer: Sealer) -> None:
    too_deep_to_parse = "[" * 5000 + f'"{_EMAIL}"' + "]" * 5000
    parsed_then_cut = json.dumps(_nested(300, f"ssn {_SSN}"))  # 600 levels: orjson parses up to 1,024
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": parsed_then_cut}}
    messages = [{"role": "user", "content": too_deep_to_parse}, {"role": "assistant", "tool_calls": [call]}]
    record = _seal(sealer, [_record(orjson.dumps({"model": "m", "messages": messages}))])[0]
    request = json.loads(_opened(sealer, record, record.request_payload))
    assert request["messages"][0]["content"] == too_deep_to_parse.replace(_EMAIL, "<EMAIL_1>")
    assert "<NESTED DEEPER THAN" in request["messages"][1]["tool_calls"][0]["function"]["arguments"]


@pytest.mark.slow
def test_adversarial_text_is_redacted_or_withheld_never_kept(sealer: Sealer) -> None:
    text = f"{_EMAIL} " + "a@" * (1 << 20) + f" ssn {_SSN}"
    body = orjson.dumps(_chat(messages=[{"role": "user", "content": text}]))
    no_budget = Sealer.from_recipe(dataclasses.replace(sealer.recipe, redaction_budget_s=0.0))
    with_budget, spent = _seal(sealer, [_record(body)])[0], _seal(no_budget, [_record(body)])[0]
    content = json.loads(_opened(sealer, with_budget, with_budget.request_payload))["messages"][0]["content"]
    assert content.startswith("<EMAIL_1> a@a@")  # redacted within the budget (or cut, then withheld)
    withheld = json.loads(_opened(sealer, spent, spent.request_payload))  # the whole body, keys too
    size = len(text) + sum(map(len, ["model", "m", "messages", "role", "user", "content"]))
    assert withheld == f"<REDACTION BUDGET EXCEEDED: {size} bytes withheld>"


def test_a_stream_of_garbage_chunks_keeps_what_it_can(sealer: Sealer) -> None:
    chunks = [
        b'data: {"choices": 5, "usage": {"prompt_tokens": "many", "completion_tokens": -1}}\n\n',
        b'data: {"choices": [1, {"delta": []}, {"index": [1], "delta": {"content": 7, "tool_calls": '
        b'[{"index": {}, "id": 3, "function": {"name": 3, "arguments": null}}, 4]}}]}\n\n',
        b"\xff\xfe not an event\n", b"data: [[[[[\n\n", b"data: " + b"[" * 2000 + b"]" * 2000 + b"\n\n",
        f'data: {{"choices": [{{"index": 0, "delta": {{"content": "mail {_EMAIL}"}}}}]}}\n\n'.encode(),
        b"data: [DONE]\n\n",
    ]  # fmt: skip
    record = _seal(sealer, [_record(orjson.dumps(_chat()), chunks=chunks)])[0]
    response = json.loads(_opened(sealer, record, record.response_payload))
    assert response["choices"][0]["message"]["content"] == "mail <EMAIL_1>"
    assert (record.input_tokens, record.output_tokens) == (None, None)


def test_a_record_that_cannot_be_sealed_keeps_its_metadata(sealer: Sealer, caplog: pytest.LogCaptureFixture) -> None:
    # Raw material of a type the gateway never builds stands for any defect left in sealing.
    broken = _record(orjson.dumps(_chat()), chunks=[b"data: {}\n\n", _EMAIL])
    good = _record(orjson.dumps(_chat()), reply=_REPLY)
    sealer.seal(broken)  # in this process, to see its log line; the pool seals the next pair the same way
    assert broken.request_id in caplog.text and _EMAIL not in caplog.text
    records = _seal(sealer, [_record(orjson.dumps(_chat()), chunks=[b"data: {}\n\n", _EMAIL]), good])
    for record in (broken, records[0]):
        marker = json.loads(_opened(sealer, record, record.request_payload))
        assert marker["minigate_unsealable"].startswith("TypeError: ")
        assert record.response_payload is None and record.chunks is None and record.client_id is not None
    assert "<EMAIL_1>" in _opened(sealer, records[1], records[1].request_payload)  # its neighbour: sealed


def _sealing_tree(pid: int) -> set[int] | None:
    """The gateway's descendants once its sealing pool runs (tracker, forkserver, worker), else None."""
    tree = _descendants(pid)
    return tree if len(tree) >= 3 else None


def _descendants(pid: int) -> set[int]:
    """Every process under `pid`, from /proc (each /proc/N/stat names its parent)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(int(stat[1]), []).append(int(entry))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _stat(pid: int) -> list[str] | None:
    """State and parent pid onwards of /proc/PID/stat; None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _is_alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from Linux's /proc")
def test_sealing_processes_exit_when_the_gateway_is_killed(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/calls.db",
                                                        "seal_processes": 1, "flush_interval_s": 0.05})
    path = write_config(tmp_path / "minigate.yaml", config)
    with start_gateway_process("--config", str(path), "--port", "0", cwd=tmp_path) as gateway:
        answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                            json=_chat(model="gpt-4.1"), timeout=30)
        assert answer.status_code == 200
        tree = eventually(lambda: _sealing_tree(gateway.process.pid), what="a sealing worker started")
        gateway.signal(signal.SIGKILL)
        gateway.wait()
        eventually(lambda: not {pid for pid in tree if _is_alive(pid)}, what="the gateway's children end with it")
