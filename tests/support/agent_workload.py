"""A logged multi-step agent built from the shared evaluation data, as `minigate logs export` writes it.

Six steps of one support platform, each call a `logs export` row (request, and the teacher's reply):
- `classify`: BANKING77 messages of 10 intents, a system prompt listing the labels; the reply is the label.
- `urgency`: other messages of the same intents under another instruction; the reply is high/normal/low.
  Same kind of content, different step: discovery must not merge it with `classify`.
- `tools`: BFCL questions whose gold call uses one of 5 tools, all 5 offered every time, the date in the
  system prompt changing; the reply is the gold tool call (first allowed value of every argument).
- `summarise`: Presidio's synthetic notes; the reply is a one-sentence summary (the note's first sentence).
- `extract`: other Presidio notes with a JSON schema; the reply is the gold entities as JSON.
- `open`: BANKING77 messages of 4 other intents to a generic assistant ("You are a helpful assistant.");
  free-text replies. The only open-ended step: discovery may split it, by intent (`Call.topic`).

bench/clustering measures discovery on a large one; tests/test_discovery_steps.py on a small one.
Calls come interleaved, as traffic is; everything is drawn with a seed, so a size and a seed give the
same workload every time.

>>> calls = agent_workload(per_step=20)  # doctest: +SKIP
>>> calls[0].step, calls[0].row["response"]["choices"][0]["message"]["content"]  # doctest: +SKIP
('classify', 'card_arrival')
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CLASSIFY", "CONCIERGE", "DATA", "EXTRACT", "EXTRACT_FORMAT", "GENERIC", "INTENTS", "MAX_PER_STEP",
           "OPEN_INTENTS", "RATE", "STEPS", "SUMMARISE", "TOOLS", "URGENCY", "Call", "agent_workload", "banking_messages",
           "case_notes", "missing_data", "note_entities", "note_summary", "open_reply", "tool_questions", "write_rows"]

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MAX_PER_STEP = 300
STEPS = ("classify", "urgency", "tools", "summarise", "extract", "open")
INTENTS = ("card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked",
           "transfer_not_received_by_recipient", "Refund_not_showing_up", "cash_withdrawal_charge", "change_pin",
           "declined_card_payment")
URGENCY = {"lost_or_stolen_card": "high", "pin_blocked": "high", "transfer_not_received_by_recipient": "high",
           "declined_card_payment": "high", "top_up_failed": "normal", "Refund_not_showing_up": "normal",
           "card_arrival": "normal", "cash_withdrawal_charge": "low", "exchange_rate": "low", "change_pin": "low"}
OPEN_INTENTS = ("apple_pay_or_google_pay", "country_support", "age_limit", "terminate_account")
TOOLS = ("Movies_3_FindMovies", "Events_3_FindEvents", "Music_3_LookupMusic", "Weather_1_GetWeather",
         "Travel_1_FindAttractions")
CLASSIFY = ("You are the intent classifier of ACME Bank's support desk. Classify the customer's message into "
            "exactly one of these labels: {labels}. Reply with the label only.")
RATE = ("Decide how urgent the customer's message is for ACME Bank's support desk: high, normal or low. "
        "Reply with one word.")
CONCIERGE = "You are the concierge of a travel app. Today is {date}. Use the tools to do what the user asks."
SUMMARISE = "Summarise the customer's note in one sentence for the case file."
EXTRACT = "Extract the people, places, organisations and contact details mentioned in the note."
GENERIC = "You are a helpful assistant."
_ENTITIES = {"PERSON": "people", "GPE": "places", "STREET_ADDRESS": "places", "ORGANIZATION": "organisations",
             "PHONE_NUMBER": "contacts", "EMAIL_ADDRESS": "contacts"}
EXTRACT_FORMAT = {"type": "json_schema", "json_schema": {"name": "note_entities", "schema": {
    "type": "object", "properties": {kind: {"type": "array", "items": {"type": "string"}}
                                     for kind in sorted(set(_ENTITIES.values()))}}}}


@dataclass(frozen=True)
class Call:
    """One logged call: its step, the `logs export` row, and its topic (the intent, or the tool called)."""

    step: str
    row: dict[str, Any]
    topic: str | None = None


def missing_data(data: Path = DATA) -> str | None:
    """Why the workload can't be built here (the shared data is absent), or None."""
    needed = [data / "banking77" / "train.csv", data / "bfcl" / "possible_answer",
              data / "presidio_synth" / "synth_dataset_v2.json"]
    absent = [str(path) for path in needed if not path.exists()]
    return f"shared evaluation data absent: {', '.join(absent)}" if absent else None


def agent_workload(per_step: int, *, seed: int = 0, data: Path = DATA) -> list[Call]:
    """`per_step` calls of each step, interleaved; up to `MAX_PER_STEP` (no message is used twice)."""
    if not 0 < per_step <= MAX_PER_STEP:
        raise ValueError(f"per_step must be 1..{MAX_PER_STEP}: the rarest intent has too few messages for more")
    rng = random.Random(seed)
    banking = banking_messages(data)
    notes = case_notes(data)
    rng.shuffle(notes)
    calls = [*_classify(banking, per_step, rng), *_tools(data, per_step, rng),
             *_summarise(notes[:per_step]), *_extract(notes[per_step:2 * per_step]), *_open(banking, per_step, rng)]
    rng.shuffle(calls)
    return calls


def write_rows(path: Path, calls: Iterable[Call]) -> Path:
    """The calls as a `logs export` JSONL file."""
    path.write_text("".join(json.dumps(call.row) + "\n" for call in calls), encoding="utf-8")
    return path


def _classify(banking: dict[str, list[str]], per_step: int, rng: random.Random) -> list[Call]:
    system = CLASSIFY.format(labels=", ".join(INTENTS))
    calls = []
    for number, intent in enumerate(rng.choices(INTENTS, k=2 * per_step)):
        step = "classify" if number % 2 == 0 else "urgency"
        text = banking[intent].pop()
        reply = intent if step == "classify" else URGENCY[intent]
        calls.append(Call(step, _row(f"{step}-{number // 2}", system if step == "classify" else RATE, text,
                                     _text(reply)), intent))
    return calls


def _open(banking: dict[str, list[str]], per_step: int, rng: random.Random) -> list[Call]:
    calls = []
    for number, intent in enumerate(rng.choices(OPEN_INTENTS, k=per_step)):
        calls.append(Call("open", _row(f"open-{number}", GENERIC, banking[intent].pop(), _text(open_reply(intent))),
                          intent))
    return calls


def open_reply(intent: str) -> str:
    """The teacher's answer to a generic question about one of OPEN_INTENTS."""
    words = intent.replace("_", " ")
    return (f"Thanks for asking about {words}. You will find the details in the app under Help, and our "
            "team can walk you through it if anything is unclear.")


def _tools(data: Path, per_step: int, rng: random.Random) -> list[Call]:
    questions, definitions = tool_questions(data)
    offered = [{"type": "function", "function": definitions[name]} for name in TOOLS]
    calls = []
    for number, (text, name, arguments) in enumerate(rng.sample(questions, min(per_step, len(questions)))):
        system = CONCIERGE.format(date=f"2025-{1 + number % 12:02d}-{1 + number % 28:02d}")
        reply = {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{number}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}]}
        calls.append(Call("tools", _row(f"tools-{number}", system, text, reply, tools=offered), name))
    return calls


def _summarise(notes: list[dict[str, Any]]) -> list[Call]:
    calls = []
    for number, note in enumerate(notes):
        text = " ".join(note["full_text"].split())
        calls.append(Call("summarise", _row(f"summarise-{number}", SUMMARISE, text, _text(note_summary(text)))))
    return calls


def note_summary(text: str) -> str:
    """The teacher's one-sentence summary of a note: its first sentence, reported."""
    first = text.split(". ")[0].rstrip(".")
    return f"The customer's note says that {first[:1].lower()}{first[1:]}."


def note_entities(note: dict[str, Any]) -> dict[str, list[str]]:
    """The teacher's extraction of a note: its gold Presidio spans, grouped as the schema asks."""
    found: dict[str, list[str]] = {kind: [] for kind in sorted(set(_ENTITIES.values()))}
    for span in note["spans"]:
        if span["entity_type"] in _ENTITIES:
            found[_ENTITIES[span["entity_type"]]].append(" ".join(span["entity_value"].split()))
    return found


def _extract(notes: list[dict[str, Any]]) -> list[Call]:
    return [Call("extract", _row(f"extract-{number}", EXTRACT, note["full_text"], _text(json.dumps(note_entities(note))),
                                 response_format=EXTRACT_FORMAT)) for number, note in enumerate(notes)]


def _row(request_id: str, system: str, user: str, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    request = {"model": "gpt-4.1", "messages": [{"role": "system", "content": system},
                                                {"role": "user", "content": user}], **extra}
    reply = message.get("content") or json.dumps(message.get("tool_calls"))
    finish = "tool_calls" if "tool_calls" in message else "stop"
    return {"request_id": request_id, "route": "gpt-4.1", "model": "gpt-4.1", "tier": "frontier",
            "input_tokens": (len(system) + len(user)) // 4 + 8, "output_tokens": len(reply) // 4 + 1,
            "request": request, "response": {"object": "chat.completion", "choices": [
                {"index": 0, "message": message, "finish_reason": finish}]}}


def _text(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def banking_messages(data: Path) -> dict[str, list[str]]:
    """Messages by intent, in a fixed shuffled order: steps pop from them, so no message is used twice."""
    with (data / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_intent: dict[str, list[str]] = {}
    for row in rows:
        by_intent.setdefault(row["category"], []).append(row["text"])
    for number, texts in enumerate(by_intent.values()):
        random.Random(number).shuffle(texts)
    return by_intent


def case_notes(data: Path) -> list[dict[str, Any]]:
    notes = json.loads((data / "presidio_synth" / "synth_dataset_v2.json").read_text(encoding="utf-8"))
    return [note for note in notes if len(note["full_text"].split()) >= 4]


def tool_questions(data: Path) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """(user text, tool, arguments) of every single-call BFCL question using one of TOOLS; each tool's definition."""
    gold: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((data / "bfcl" / "possible_answer").glob("*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            gold[item["id"]] = item["ground_truth"]
    questions: list[tuple[str, str, dict[str, Any]]] = []
    definitions: dict[str, dict[str, Any]] = {}
    for path in sorted((data / "bfcl").glob("BFCL_v4_*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            calls = gold.get(item["id"], [])
            for function in item.get("function", []):
                definitions.setdefault(function["name"], function)
            if len(calls) != 1 or next(iter(calls[0])) not in TOOLS:
                continue
            name, allowed = next(iter(calls[0].items()))
            users = [turn["content"] for turn in item["question"][0] if turn["role"] == "user"]
            arguments = {key: values[0] for key, values in allowed.items() if values and values[0] != ""}
            questions.append((users[-1], name, arguments))
    return questions, definitions
