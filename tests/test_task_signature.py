"""Task signatures: one per agent step, whatever the user asks and whatever values the prompt carries."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from minigate.router.signature import mask, signature, template, tool_names
from minigate.router.task_text import content_text, context_text

BFCL = Path(__file__).resolve().parents[2] / "shared" / "data" / "bfcl"

SUPPORT_PROMPT = (
    "You are the support assistant of ACME Bank. Today is {date}. The customer is {email} "
    "(account {account}, session {session}). Their plan is \"{plan}\"; see {url} for the fee table. "
    "Answer in at most {limit} words."
)
WEATHER_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_forecast", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}}}},
]
INVOICE_FORMAT: dict[str, Any] = {"type": "json_schema", "json_schema": {"name": "invoice", "strict": True, "schema": {
    "type": "object", "properties": {"total": {"type": "number"}, "due": {"type": "string"}},
    "required": ["total", "due"]}}}


def support_call(user: str, *, date: str, email: str, account: str, session: str, plan: str, url: str,
                 limit: int) -> dict[str, Any]:
    system = SUPPORT_PROMPT.format(date=date, email=email, account=account, session=session, plan=plan, url=url,
                                   limit=limit)
    return {"model": "gpt-4.1", "temperature": 0.2,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def test_one_agent_step_shares_its_signature_across_users_and_values() -> None:
    first = support_call("My card still hasn't arrived, what now?", date="2025-06-01", email="ann@example.com",
                         account="40011234567", session="550e8400-e29b-41d4-a716-446655440000", plan="Gold",
                         url="https://acme.example/fees?id=1", limit=120)
    second = support_call("Why was I charged twice for a top-up?", date="June 3, 2025",
                          email="bob.smith+bank@mail.example.org", account="40019876543",
                          session="9f2c41d07a5be113c4", plan="Gold Plus", url="https://acme.example/fees?id=7",
                          limit=80)
    assert signature(first) == signature(second)
    assert len(signature(first)) == 16 and int(signature(first), 16) >= 0
    # Values are masked; the instructions around them are kept.
    assert template(first) == template(second)
    assert "support assistant of ACME Bank" in template(first)
    for value in ("ann@example.com", "2025-06-01", "40011234567", "550e8400", "Gold", "acme.example", "120"):
        assert value not in template(first)


def test_a_different_instruction_is_a_different_step() -> None:
    answer = support_call("My card is late", date="2025-06-01", email="a@b.co", account="1234567",
                          session="abcdef123456", plan="Gold", url="https://x.example", limit=50)
    instruction = {"role": "system", "content": "Classify the customer's message into one intent."}
    classify = {**answer, "messages": [instruction, answer["messages"][1]]}
    assert signature(answer) != signature(classify)


def test_tools_count_by_name_in_any_order() -> None:
    base = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Weather in Oslo?"}]}
    offered = {**base, "tools": WEATHER_TOOLS}
    reordered = {**base, "tools": list(reversed(WEATHER_TOOLS)),
                 "messages": [{"role": "user", "content": "Rain in Rome?"}]}
    fewer = {**base, "tools": WEATHER_TOOLS[:1]}
    assert tool_names(offered) == ["get_forecast", "get_weather"]
    assert signature(offered) == signature(reordered)
    assert len({signature(base), signature(offered), signature(fewer)}) == 3
    legacy = {**base, "functions": [{"name": "get_weather", "parameters": {}}]}
    assert tool_names(legacy) == ["get_weather"]


def test_the_response_format_counts_as_canonical_json() -> None:
    base = {"model": "gpt-4.1", "messages": [{"role": "system", "content": "Extract the invoice."},
                                             {"role": "user", "content": "Invoice 7, total 12 EUR"}]}
    shuffled = json.loads(json.dumps(INVOICE_FORMAT, sort_keys=True))  # same schema, keys in another order
    other_schema = {**INVOICE_FORMAT, "json_schema": {**INVOICE_FORMAT["json_schema"], "name": "receipt"}}
    assert signature({**base, "response_format": INVOICE_FORMAT}) == signature({**base, "response_format": shuffled})
    assert signature({**base, "response_format": INVOICE_FORMAT}) != signature(
        {**base, "response_format": other_schema})
    assert signature({**base, "response_format": {"type": "text"}}) == signature(base)


def test_system_prompts_as_content_parts_and_developer_messages_count() -> None:
    parts = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Summarise the call notes."}]},
                          {"role": "user", "content": [{"type": "text", "text": "Notes: ..."},
                                                       {"type": "image_url", "image_url": {"url": "data:,x"}}]}]}
    plain = {"messages": [{"role": "system", "content": "Summarise the call notes."},
                          {"role": "user", "content": "Other notes"}]}
    assert signature(parts) == signature(plain)
    assert content_text(parts) == "Notes: ..."


def test_masking_names_what_it_replaced() -> None:
    text = ("Order ORD-99812 of 2024-06-01T10:30:00Z for jane.doe@example.com: 3 items, $1,234.56, ref "
            "3f2a9c1b7e, call back Monday at 10:30 am, docs at www.acme.org. Say 'thanks' but don't repeat \"X\".")
    assert mask(text) == ('Order <id> of <date> for <email>: <num> items, $<num>, ref <id>, call back <date> at '
                          '<time>, docs at <url>. Say "<quoted>" but don\'t repeat "<quoted>".')
    assert mask("Plain instructions stay as they are.") == "Plain instructions stay as they are."


def test_context_text_reads_tools_format_and_masked_prompt() -> None:
    body = {"messages": [{"role": "system", "content": "Extract fields. Today is 2025-01-02."},
                         {"role": "user", "content": "x"}],
            "tools": WEATHER_TOOLS, "response_format": INVOICE_FORMAT}
    assert context_text(body) == "tools: get_forecast, get_weather. format: invoice. Extract fields. Today is <date>."
    long_turn = "start " + "pasted material " * 200 + "so what is the total?"
    cut = content_text({"messages": [{"role": "user", "content": long_turn}]})
    assert cut.startswith("start pasted") and cut.endswith("so what is the total?") and len(cut) < 1100


def test_a_known_prompt_costs_microseconds() -> None:
    body = support_call("Where is my card?", date="2025-06-01", email="a@b.co", account="40011234567",
                        session="abc123def456", plan="Gold", url="https://x.example", limit=100)
    body["messages"][0]["content"] *= 8  # ~2,000 characters
    body["tools"] = WEATHER_TOOLS
    signature(body)
    runs = 2000
    started = time.process_time()
    for _ in range(runs):
        signature(body)
    per_call = (time.process_time() - started) / runs
    assert per_call < 100e-6, f"{per_call * 1e6:.1f} us per signature"  # ~6 us on this machine; slack for load


@pytest.mark.skipif(not BFCL.is_dir(), reason=f"no BFCL data at {BFCL}")
def test_signatures_recover_every_bfcl_tool_set() -> None:
    sets_of: dict[str, set[tuple[str, ...]]] = {}
    tool_sets = set()
    for path in sorted(BFCL.glob("BFCL_v4_*.json")):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if "function" not in item:
                continue  # multi-turn prompts: their function docs were not copied
            body = {"messages": item["question"][0],
                    "tools": [{"type": "function", "function": function} for function in item["function"]]}
            names = tuple(sorted({function["name"] for function in item["function"]}))
            tool_sets.add(names)
            sets_of.setdefault(signature(body), set()).add(names)
    assert len(tool_sets) > 1000
    assert all(len(sets) == 1 for sets in sets_of.values())  # no signature mixes two tool sets
    assert {names for sets in sets_of.values() for names in sets} == tool_sets
