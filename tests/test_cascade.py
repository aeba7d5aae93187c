"""The cascade: a miniature that fails its rule's checks is replaced by the escalation model, unseen by clients.

The scripted upstream plays both: requests for `mini-lora` get the miniature's scripted failure,
requests for `gpt-4.1` the frontier's good answer. The task catalogue's contracts (a label task's
closed label set, a json task's schema) are checked too, for requests that don't ask for them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from minigate.router.cascade import ReplyView, StreamCheck, TaskContract, check_reply, parse_chat_reply
from minigate.router.catalogue import Catalogue, Task, save_catalogue
from minigate.router.signature import signature
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import RunningGateway
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

ALL = ["error", "timeout", "invalid_json", "invalid_tool_call", "invalid_label", "empty"]
TOOL = {"type": "function", "function": {"name": "refund", "parameters": {
    "type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}}}
LABELS = {"type": "json_schema", "json_schema": {"name": "label", "schema": {
    "type": "object", "properties": {"label": {"enum": ["billing", "shipping"]}}, "required": ["label"]}}}


def reply(content: str | None = None, calls: list[dict[str, Any]] | None = None) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"id": "c", "type": "function", "function": call} for call in calls]
    return orjson.dumps({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


@pytest.mark.parametrize(
    ("request_extra", "body", "expected"),
    [
        ({}, reply("fine"), None),
        ({}, reply("   "), "empty"),
        ({"response_format": {"type": "json_object"}}, reply('{"label": "bill'), "invalid_json"),
        ({"response_format": {"type": "json_object"}}, reply('{"label": "billing"}'), None),
        ({"response_format": LABELS}, reply('{"label": "returns"}'), "invalid_json"),
        ({"response_format": LABELS}, reply('{"label": "billing"}'), None),
        ({"tools": [TOOL]}, reply(calls=[{"name": "refund", "arguments": '{"amount": 5}'}]), None),
        ({"tools": [TOOL]}, reply(calls=[{"name": "delete_account", "arguments": "{}"}]), "invalid_tool_call"),
        ({"tools": [TOOL]}, reply(calls=[{"name": "refund", "arguments": '{"amount": "five"}'}]), "invalid_tool_call"),
        ({"tools": [TOOL]}, reply(calls=[{"name": "refund", "arguments": '{"amount": 5'}]), "invalid_tool_call"),
        ({}, b"not json", "error"),
    ],
)
def test_check_reply(request_extra: dict[str, Any], body: bytes, expected: str | None) -> None:
    request = {"messages": [{"role": "user", "content": "x"}], **request_extra}
    assert check_reply(request, parse_chat_reply(body), frozenset(ALL)) == expected


def test_checks_run_only_when_the_policy_names_them() -> None:
    assert check_reply({}, parse_chat_reply(reply("  ")), frozenset({"invalid_json"})) is None
    assert check_reply({}, None, frozenset({"empty"})) is None


@pytest.mark.parametrize(
    ("body", "view"),
    [
        (reply("fine"), ReplyView("fine")),
        (reply(None), ReplyView(None)),
        (orjson.dumps({"choices": [{"message": {"content": ["a", "part"]}}]}), ReplyView(None)),
        (reply(calls=[{"name": "refund", "arguments": "{}"}]),
         ReplyView(None, ({"id": "c", "type": "function", "function": {"name": "refund", "arguments": "{}"}},))),
        (orjson.dumps({"choices": [{"message": {"content": "x", "tool_calls": {"name": "refund"}}}]}),
         ReplyView("x", (None,))),
        (b"not json", None),
        (b'{"choices": []}', None),
        (b'{"choices": [{"message": "hello"}]}', None),
    ],
)
def test_parse_chat_reply_reads_the_first_choice_once(body: bytes, view: ReplyView | None) -> None:
    assert parse_chat_reply(body) == view


def test_a_malformed_tool_calls_member_is_an_invalid_call() -> None:
    body = orjson.dumps({"choices": [{"message": {"content": None, "tool_calls": {"name": "refund"}}}]})
    assert check_reply({"tools": [TOOL]}, parse_chat_reply(body), frozenset(ALL)) == "invalid_tool_call"


def test_a_tool_schema_with_python_type_names_is_not_checked_rather_than_failing_the_call() -> None:
    # BFCL's tools (and agents written from them) say "dict" for object: jsonschema knows no such type.
    bfcl = {"type": "function", "function": {"name": "Weather_1_GetWeather", "parameters": {
        "type": "dict", "required": ["city"], "properties": {"city": {"type": "string"}}}}}
    call = {"id": "c", "type": "function", "function": {"name": "Weather_1_GetWeather", "arguments": '{"city": "Oslo"}'}}
    assert check_reply({"tools": [bfcl]}, ReplyView(None, (call,)), frozenset(ALL)) is None
    undeclared = {**call, "function": {"name": "Weather_2", "arguments": "{}"}}
    assert check_reply({"tools": [bfcl]}, ReplyView(None, (undeclared,)), frozenset(ALL)) == "invalid_tool_call"


@pytest.fixture
def cascading(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    config = gateway_config(upstream.base_url)
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
        {"name": "strict", "when": {"metadata.lenient": {"eq": False}}, "use": "mini",
         "escalate_on": ALL, "timeout_s": 1},
        {"name": "lenient", "when": {}, "use": "mini"},
    ]}
    return make_gateway(config)


def ask(gateway: RunningGateway, *, lenient: bool = False, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Where is my parcel?"}],
            "metadata": {"lenient": lenient}, **extra}
    return httpx.post(f"{gateway.v1}/chat/completions", json=body, headers={"authorization": f"Bearer {AGENT_KEY}"},
                      timeout=30)


@pytest.mark.parametrize(
    ("failure", "extra", "reason"),
    [
        (Script(status=503), {}, "error"),
        (Script(latency_s=2.0), {}, "timeout"),
        (Script(reply=""), {}, "empty"),
        (Script(invalid_json=True), {"response_format": {"type": "json_object"}}, "invalid_json"),
        (Script(reply='{"label": "returns"}'), {"response_format": LABELS}, "invalid_json"),
        (Script(malformed_tool_call=True, tool_call={"name": "refund", "arguments": '{"amount": 5}'}),
         {"tools": [TOOL]}, "invalid_tool_call"),
        (Script(tool_call={"name": "refund", "arguments": '{"amount": "all"}'}), {"tools": [TOOL]}, "invalid_tool_call"),
    ],
)
def test_failing_miniature_is_escalated_unseen(
    cascading: RunningGateway, upstream: ScriptedUpstream, failure: Script, extra: dict[str, Any], reason: str
) -> None:
    upstream.script(failure, model="mini-lora")
    upstream.script(reply='{"label": "shipping"}', tool_call={"name": "refund", "arguments": '{"amount": 5}'}
                    if "tools" in extra else None)
    response = ask(cascading, **extra)
    assert response.status_code == 200
    assert response.headers["x-minigate-escalated"] == reason
    assert response.headers["x-minigate-model"] == "gpt-4.1" and response.headers["x-minigate-tier"] == "frontier"
    assert response.headers["x-minigate-rule"] == "strict"
    assert [r.json()["model"] for r in upstream.requests] == ["mini-lora", "gpt-4.1"]
    assert response.content == upstream.sent[-1], "the client gets the frontier's reply, byte for byte"
    assert cascading.metric("minigate_escalations_total", {"route": "gpt-4.1", "reason": reason}) == 1


def test_good_miniature_reply_is_relayed(cascading: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply='{"label": "billing"}', model="mini-lora")
    response = ask(cascading, response_format=LABELS)
    assert response.status_code == 200 and "x-minigate-escalated" not in response.headers
    assert response.headers["x-minigate-model"] == "mini" and len(upstream.requests) == 1


def test_without_escalate_on_the_failure_is_the_clients(cascading: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(Script(status=503), model="mini-lora")
    response = ask(cascading, lenient=True)
    assert response.status_code == 502 and len(upstream.requests) == 1


def test_stream_escalates_before_its_first_byte(cascading: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(Script(status=500), model="mini-lora")
    upstream.script(reply="on its way")
    with httpx.stream("POST", f"{cascading.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                      json={"model": "gpt-4.1", "stream": True, "metadata": {"lenient": False},
                            "messages": [{"role": "user", "content": "x"}]}) as response:
        body = b"".join(response.iter_bytes())
        assert response.headers["x-minigate-escalated"] == "error"
    events = [orjson.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "on its way"


def test_escalation_is_in_the_call_record(cascading: RunningGateway, upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script(Script(status=503), model="mini-lora")
    request_id = ask(cascading).headers["x-minigate-request-id"]
    # The first batch may wait for the sealing worker to start.
    eventually(lambda: cascading.metric("minigate_log_records_written_total") >= 1)
    [(escalated, model, attempts)] = fetch(f"sqlite:///{tmp_path}/calls-0.db",
                                           f"SELECT escalated, model, attempts FROM calls WHERE request_id = '{request_id}'")
    assert escalated == "error" and model == "gpt-4.1"
    assert [(a["model"], a["status"]) for a in orjson.loads(attempts)] == [("mini-lora", 503), ("gpt-4.1", 200)]


def stream(gateway: RunningGateway, **extra: Any) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    body = {"model": "gpt-4.1", "stream": True, "metadata": {"lenient": False},
            "messages": [{"role": "user", "content": "Where is my parcel?"}], **extra}
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                      json=body, timeout=30) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_bytes())
    return response.headers, [orjson.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


@pytest.mark.parametrize(
    ("failure", "extra", "reason"),
    [
        (Script(reply=""), {}, "empty"),
        (Script(reply="Sure! The label is billing."), {"response_format": {"type": "json_object"}}, "invalid_json"),
        (Script(tool_call={"name": "refund", "arguments": '{"amount": "all"}'}), {"tools": [TOOL]}, "invalid_tool_call"),
        (Script(malformed_tool_call=True), {"tools": [TOOL]}, "invalid_tool_call"),
        (Script(reply="partial answer", cut_after_chunks=1), {}, "error"),
        (Script(reply="slow answer", chunk_delay_s=2.0), {}, "timeout"),
    ],
)
def test_stream_is_held_until_its_checks_settle_and_escalated_unseen(
    cascading: RunningGateway, upstream: ScriptedUpstream, failure: Script, extra: dict[str, Any], reason: str
) -> None:
    upstream.script(failure, model="mini-lora")
    upstream.script(reply='{"label": "shipping"}', tool_call={"name": "refund", "arguments": '{"amount": 5}'}
                    if "tools" in extra else None)
    headers, events = stream(cascading, **extra)
    assert headers["x-minigate-escalated"] == reason and headers["x-minigate-model"] == "gpt-4.1"
    assert {e["model"] for e in events} == {"gpt-4.1"}, "no chunk of the miniature's stream reached the client"
    if "tools" in extra:
        arguments = "".join(e["choices"][0]["delta"]["tool_calls"][0]["function"].get("arguments") or ""
                            for e in events if e["choices"] and e["choices"][0]["delta"].get("tool_calls"))
        assert arguments == '{"amount": 5}'
    else:
        assert streamed_text(events) == '{"label": "shipping"}'
    assert cascading.metric("minigate_escalations_total", {"route": "gpt-4.1", "reason": reason}) == 1
    eventually(lambda: upstream.open_streams == 0, timeout=5, what="the abandoned miniature stream is closed")


@pytest.mark.slow
def test_good_stream_is_relayed_as_soon_as_content_starts(cascading: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply="one two three four", chunk_delay_s=0.3, model="mini-lora")
    body = {"model": "gpt-4.1", "stream": True, "metadata": {"lenient": False},
            "messages": [{"role": "user", "content": "count"}]}
    with httpx.stream("POST", f"{cascading.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                      json=body, timeout=30) as response:
        assert response.headers["x-minigate-model"] == "mini" and "x-minigate-escalated" not in response.headers
        chunks = response.iter_bytes()
        first = next(chunk for chunk in chunks if b'"content":"one' in chunk.replace(b" ", b""))
        still_streaming = upstream.open_streams  # the first word arrived while the miniature still writes
        rest = b"".join(chunks)
    assert first and still_streaming == 1
    events = [orjson.loads(line[6:]) for line in (first + rest).split(b"\n\n") if line.startswith(b"data: {")]
    assert streamed_text(events).endswith("four") and len(upstream.requests) == 1


def test_good_tool_call_stream_is_relayed_whole(cascading: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(tool_call={"name": "refund", "arguments": '{"amount": 5}'}, model="mini-lora")
    headers, events = stream(cascading, tools=[TOOL])
    assert "x-minigate-escalated" not in headers and {e["model"] for e in events} == {"mini-lora"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("events", "policy", "expected"),
    [
        ([b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n', b'data: {"choices":[{"delta":{"content":" "}}]}\n\n',
          b'data: {"choices":[{"delta":{"content":"ok"}}]}\n\n'], ALL, "relay"),
        ([b'data: {"choices":[{"delta":{"content":"o', b'k"}}]}\n', b'\n'], ALL, "relay"),  # an event split mid-way
        ([b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'], ALL, "empty"),
        ([b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'], ["error"], "relay"),
        ([b'data: {"error":{"message":"overloaded"}}\n\n'], ALL, "error"),
        ([b'data: [DONE]\n\n'], ALL, "empty"),
    ],
)
def test_stream_check_settles_on_the_right_event(events: list[bytes], policy: list[str], expected: str) -> None:
    check = StreamCheck({"messages": []}, frozenset(policy))
    verdicts = [check.feed(event) for event in events]
    settled = next((v for v in verdicts if v), None) or check.end()
    assert settled == expected
    assert all(v is None for v in verdicts[:-1]), "it holds no longer than the settling event"


# -- the task's contract: a label task's label set, a json task's schema --

TRIAGE = "Label the support ticket as billing, shipping or other. Reply with the label only."
INVOICE = "Extract the invoice's vendor and total. Reply with JSON."
INVOICE_SCHEMA = {"type": "object", "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}},
                  "required": ["vendor", "total"]}
TRIAGE_CONTRACT = TaskContract.of(["Billing", "shipping", "other"], None)


@pytest.mark.parametrize(
    ("request_extra", "contract", "content", "expected"),
    [
        ({}, TRIAGE_CONTRACT, "billing", None),
        ({}, TRIAGE_CONTRACT, "  Shipping.\n", None),  # normalised: stripped, casefolded, trailing period dropped
        ({}, TRIAGE_CONTRACT, "refund", "invalid_label"),
        ({}, TRIAGE_CONTRACT, "The ticket is about billing.", "invalid_label"),
        ({}, TaskContract.of([], INVOICE_SCHEMA), '{"vendor": "ACME", "total": 12.5}', None),
        ({}, TaskContract.of([], INVOICE_SCHEMA), '{"vendor": "ACME", "total": "lots"}', "invalid_json"),
        ({}, TaskContract.of([], INVOICE_SCHEMA), "ACME, 12.50 EUR", "invalid_json"),
        # The request's own response_format is the one checked: the client's contract comes first.
        ({"response_format": {"type": "json_object"}}, TaskContract.of([], INVOICE_SCHEMA), '{"vendor": 1}', None),
        ({"response_format": {"type": "text"}}, TaskContract.of([], INVOICE_SCHEMA), "ACME, 12.50 EUR", None),
    ],
)
def test_check_reply_knows_the_task(request_extra: dict[str, Any], contract: TaskContract, content: str,
                                    expected: str | None) -> None:
    request = {"messages": [{"role": "user", "content": "x"}], **request_extra}
    assert check_reply(request, parse_chat_reply(reply(content)), frozenset(ALL), contract) == expected


def test_the_task_checks_run_only_when_the_policy_names_them() -> None:
    assert check_reply({}, ReplyView("refund"), frozenset({"invalid_json", "empty"}), TRIAGE_CONTRACT) is None
    assert check_reply({}, ReplyView("refund"), frozenset(ALL)) is None  # no contract: nothing to compare with
    assert check_reply({}, ReplyView("ACME"), frozenset({"invalid_label"}), TaskContract.of([], INVOICE_SCHEMA)) is None


def events_of(*contents: str, finish: bool = True) -> list[bytes]:
    deltas = [{"role": "assistant", "content": ""}, *({"content": content} for content in contents)]
    chunks = [{"choices": [{"delta": delta, "finish_reason": None}]} for delta in deltas]
    if finish:
        chunks.append({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]


@pytest.mark.parametrize(
    ("contents", "expected", "settled_at"),
    [
        (["Bill", "ing", "."], "relay", -1),  # held to the finish: "bill" could still become anything
        (["bill", "ed"], "invalid_label", -1),
        (["The", " ticket", " is", " about"], "invalid_label", 2),  # longer than any label: settled at once
        ([" "], "empty", -1),
    ],
)
def test_a_label_stream_is_held_until_it_finishes(contents: list[str], expected: str, settled_at: int) -> None:
    check = StreamCheck({"messages": []}, frozenset(ALL), TRIAGE_CONTRACT)
    events = events_of(*contents)
    verdicts = [check.feed(event) for event in events]
    assert verdicts[settled_at] == expected
    assert all(verdict is None for verdict in verdicts[:settled_at % len(events)]), "nothing settles before"


def test_a_label_stream_that_ends_without_a_finish_is_checked_at_its_end() -> None:
    check = StreamCheck({"messages": []}, frozenset({"invalid_label"}), TRIAGE_CONTRACT)
    assert [check.feed(event) for event in events_of("other", finish=False)] == [None, None]
    assert check.end() == "relay"


def test_a_json_task_stream_must_open_a_json_value() -> None:
    contract = TaskContract.of([], INVOICE_SCHEMA)
    assert StreamCheck({}, frozenset(ALL), contract).feed(events_of("Sure!")[1]) == "invalid_json"
    assert StreamCheck({}, frozenset(ALL), contract).feed(events_of('{"vendor"')[1]) == "relay"
    assert StreamCheck({}, frozenset(ALL)).feed(events_of("Sure!")[1]) == "relay"  # no task, no format: free text


def ask_task(system: str, user: str) -> dict[str, Any]:
    return {"model": "gpt-4.1", "metadata": {"lenient": False},
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


@pytest.fixture
def tasked(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> RunningGateway:
    """A gateway whose catalogue holds a label task (`ticket-triage`) and a json task with a schema
    (`invoice`); its strict rule sends both to the miniature, escalating on every check."""
    tasks = [Task("t001", "ticket-triage", 30, 0.5, {signature(ask_task(TRIAGE, "x")): 30}, output_kind="label",
                  labels=["Billing", "shipping", "other"]),
             Task("t002", "invoice", 30, 0.5, {signature(ask_task(INVOICE, "x")): 30}, output_kind="json",
                  schema=INVOICE_SCHEMA)]
    unit = np.eye(2, 384, dtype=np.float32)
    save_catalogue(Catalogue(tasks, {"t001": unit[0], "t002": unit[1]}, 60, "2026-01-01T00:00:00Z", "test", "test", 3),
                   tmp_path / "tasks.yaml")
    config = gateway_config(upstream.base_url, tasks={"catalogue": str(tmp_path / "tasks.yaml")})
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
        {"name": "strict", "when": {}, "use": "mini", "escalate_on": ALL}]}
    return make_gateway(config)


def post(gateway: RunningGateway, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", json=body, headers={"authorization": f"Bearer {AGENT_KEY}"},
                      timeout=30)


@pytest.mark.parametrize(("answer", "escalated"), [("refund", "invalid_label"), ("Billing.", None)])
def test_a_label_task_escalates_a_label_outside_its_set(tasked: RunningGateway, upstream: ScriptedUpstream,
                                                         answer: str, escalated: str | None) -> None:
    upstream.script(reply=answer, model="mini-lora")
    upstream.script(reply="billing")
    response = post(tasked, ask_task(TRIAGE, "I was charged twice"))
    assert response.status_code == 200 and response.headers["x-minigate-task"] == "ticket-triage"
    assert response.headers.get("x-minigate-escalated") == escalated
    served = "gpt-4.1" if escalated else "mini"
    assert response.headers["x-minigate-model"] == served
    assert response.json()["choices"][0]["message"]["content"] == ("billing" if escalated else answer)
    assert [r.json()["model"] for r in upstream.requests] == ["mini-lora", "gpt-4.1"][:2 if escalated else 1]


def test_a_json_task_checks_its_schema_without_a_response_format(tasked: RunningGateway,
                                                                 upstream: ScriptedUpstream) -> None:
    upstream.script(reply='{"vendor": "ACME", "total": "a lot"}', model="mini-lora")
    upstream.script(reply='{"vendor": "ACME", "total": 12.5}')
    body = ask_task(INVOICE, "INVOICE 7 from ACME, total 12.50")
    assert "response_format" not in body
    response = post(tasked, body)
    assert response.headers["x-minigate-task"] == "invoice"
    assert response.headers["x-minigate-escalated"] == "invalid_json"
    assert response.json()["choices"][0]["message"]["content"] == '{"vendor": "ACME", "total": 12.5}'

    upstream.script(reply='{"vendor": "ACME", "total": 12.5}', model="mini-lora")
    served = post(tasked, body)
    assert "x-minigate-escalated" not in served.headers and served.headers["x-minigate-model"] == "mini"
    assert tasked.metric("minigate_escalations_total", {"route": "gpt-4.1", "reason": "invalid_json"}) == 1


@pytest.mark.parametrize(("answer", "escalated"), [("shipping dispute", "invalid_label"), ("Shipping", None)])
def test_a_streamed_label_is_held_and_checked_whole(tasked: RunningGateway, upstream: ScriptedUpstream,
                                                     answer: str, escalated: str | None) -> None:
    upstream.script(reply=answer, model="mini-lora")
    upstream.script(reply="shipping")
    headers, events = stream(tasked, **ask_task(TRIAGE, "Where is my parcel?"))
    assert headers.get("x-minigate-escalated") == escalated
    assert {e["model"] for e in events} == {"gpt-4.1" if escalated else "mini-lora"}, "one model's chunks only"
    assert streamed_text(events) == ("shipping" if escalated else answer)
    if escalated:
        assert tasked.metric("minigate_escalations_total", {"route": "gpt-4.1", "reason": "invalid_label"}) == 1
        eventually(lambda: upstream.open_streams == 0, timeout=5, what="the abandoned miniature stream is closed")


def test_a_streamed_json_task_reply_that_is_not_json_escalates(tasked: RunningGateway,
                                                               upstream: ScriptedUpstream) -> None:
    upstream.script(reply="The vendor is ACME.", model="mini-lora")
    upstream.script(reply='{"vendor": "ACME", "total": 12.5}')
    headers, events = stream(tasked, **ask_task(INVOICE, "INVOICE 7 from ACME, total 12.50"))
    assert headers["x-minigate-escalated"] == "invalid_json" and {e["model"] for e in events} == {"gpt-4.1"}
