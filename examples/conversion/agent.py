"""The agent of the conversion run: a bank's support platform, its calls, and the teacher that answers them.

Every call is a request the agent sends with the openai SDK and the reply the frontier model (here a
scripted teacher, answering from the shared evaluation data) gives it. Six steps, as one platform runs them:

- a **triage** pipeline: every ticket (a BANKING77 message of 10 intents) is classified (`classify`, a label)
  and rated (`urgency`, high/normal/low) — two calls on the same text, the bulk of the traffic;
- a **concierge** answering travel requests with 5 tools (`tools`: BFCL questions, the gold call from
  `possible_answer`);
- **case notes** (Presidio's synthetic notes) summarised in a sentence (`summarise`) or mined for people,
  places and contacts as JSON (`extract`);
- a **generic assistant** (`open`) answering other customer questions in free text, streamed.

Like real traffic, prompts carry ticket ids, session ids and dates that change on every call, a third of
the tickets are signed with a name, an e-mail address and a phone number (PII the log redacts), and the
steps a person reads (answers, some summaries and some classifications) are streamed. The phases of the
run (logged traffic, shadow traffic, fresh traffic) use disjoint messages.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: tests/support holds the data readers
from tests.support.agent_workload import (  # noqa: E402
    CLASSIFY, DATA, EXTRACT, EXTRACT_FORMAT, GENERIC, INTENTS, OPEN_INTENTS, RATE, SUMMARISE, TOOLS, URGENCY,
    banking_messages, case_notes, missing_data, note_entities, note_summary, open_reply, tool_questions)
from tests.support.upstream import Script  # noqa: E402

__all__ = ["DATA", "FAST", "FULL", "MODEL", "STEPS", "Mix", "Teacher", "Turn", "missing_data", "workload"]

MODEL = "gpt-4.1-mini"  # what the agent asks for: the frontier model it was written against
STEPS = ("classify", "urgency", "tools", "summarise", "extract", "open")
CONCIERGE = "You are the concierge of a travel app. Use the tools to do what the user asks."
# As agents cap each step's reply; a generous multiple of the teacher's longest.
_MAX_TOKENS = {CLASSIFY.format(labels=", ".join(INTENTS)): 24, RATE: 8, CONCIERGE: 160, SUMMARISE: 160, EXTRACT: 320,
               GENERIC: 160}
_SIGNERS = ("Maria Keller", "Tom Okafor", "Ana Lima", "Wei Chen", "Priya Nair", "Jonas Berg", "Sara Rossi",
            "Omar Haddad", "Lena Novak", "Diego Ruiz", "Aiko Sato", "Liam Walsh")


@dataclass(frozen=True, slots=True)
class Mix:
    """Calls of each step in one phase; `classify` and `urgency` share their tickets."""

    tickets: int
    tools: int
    summarise: int
    extract: int
    open: int

    @property
    def calls(self) -> int:
        return 2 * self.tickets + self.tools + self.summarise + self.extract + self.open


# Phases: the traffic logged before anything is converted, the traffic shadowed while tuned miniatures are
# measured, the fresh traffic after promotion. The tools step has 326 gold questions in all.
FULL = {"logged": Mix(tickets=600, tools=200, summarise=200, extract=200, open=200),
        "shadow": Mix(tickets=150, tools=63, summarise=60, extract=60, open=60),
        "fresh": Mix(tickets=180, tools=63, summarise=60, extract=60, open=60)}
FAST = {"logged": Mix(tickets=48, tools=24, summarise=16, extract=16, open=16),
        "shadow": Mix(tickets=12, tools=8, summarise=6, extract=6, open=6),
        "fresh": Mix(tickets=12, tools=8, summarise=6, extract=6, open=6)}


@dataclass(frozen=True, slots=True)
class Turn:
    """One call of the agent: its step, the request body, the teacher's reply message, and whether it streams."""

    step: str
    request: dict[str, Any]
    reply: dict[str, Any]
    stream: bool = False

    @property
    def key(self) -> str:
        """What the teacher recognises the call by: its system prompt and user message (unique in a run)."""
        return _key(self.request["messages"])


class Teacher:
    """The frontier model's stand-in: answers each call of the workload with its gold reply (a `responder`
    for tests/support/upstream.ScriptedUpstream); anything else gets the upstream's default."""

    def __init__(self, phases: Mapping[str, list[Turn]]) -> None:
        self._replies = {turn.key: turn.reply for turns in phases.values() for turn in turns}

    def __call__(self, payload: dict[str, Any]) -> Script | None:
        messages = payload.get("messages")
        if not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages):
            return None
        reply = self._replies.get(_key(messages))
        if reply is None:
            return None
        if reply.get("tool_calls"):
            function = reply["tool_calls"][0]["function"]
            return Script(tool_call={"name": function["name"], "arguments": function["arguments"]})
        return Script(reply=reply["content"])


def workload(mixes: Mapping[str, Mix], *, seed: int = 0, data: Path = DATA) -> dict[str, list[Turn]]:
    """Each phase's calls, interleaved as traffic is; the same mixes and seed give the same calls."""
    rng = random.Random(seed)
    banking = banking_messages(data)
    tickets = [(intent, text) for intent in INTENTS for text in banking[intent]]
    questions = [(intent, text) for intent in OPEN_INTENTS for text in banking[intent]]
    notes = case_notes(data)
    tool_calls, definitions = tool_questions(data)
    for pool in (tickets, questions, notes, tool_calls):
        rng.shuffle(pool)
    offered = [{"type": "function", "function": definitions[name]} for name in TOOLS]
    sources = {"tickets": iter(tickets), "open": iter(questions), "notes": iter(notes), "tools": iter(tool_calls)}
    counter = iter(range(10**6))
    phases = {}
    for phase, mix in mixes.items():
        turns = [*_triage(mix.tickets, sources["tickets"], counter, rng),
                 *_concierge(mix.tools, sources["tools"], offered, counter, rng),
                 *_case_notes(mix.summarise, mix.extract, sources["notes"], counter, rng),
                 *_assistant(mix.open, sources["open"])]
        rng.shuffle(turns)
        phases[phase] = turns
    return phases


def _triage(count: int, tickets: Iterator[tuple[str, str]], counter: Iterator[int], rng: random.Random) -> list[Turn]:
    labels = CLASSIFY.format(labels=", ".join(INTENTS))
    turns = []
    for intent, text in _take(tickets, count, "ticket messages"):
        number = next(counter)
        message = f"[ticket #{48000 + 7 * number} · {_date(rng)}] {text}"
        if number % 3 == 0:
            signer = _SIGNERS[number % len(_SIGNERS)]
            handle = signer.lower().replace(" ", ".")
            message += f"\n-- {signer}, {handle}@example.com, +44 20 7946 {number % 10000:04d}"
        turns.append(Turn("classify", _request(labels, message), _text(intent), stream=number % 10 == 0))
        turns.append(Turn("urgency", _request(RATE, message), _text(URGENCY[intent])))
    return turns


def _concierge(count: int, questions: Iterator[tuple[str, str, dict[str, Any]]], offered: list[dict[str, Any]],
               counter: Iterator[int], rng: random.Random) -> list[Turn]:
    turns = []
    for text, name, arguments in _take(questions, count, "BFCL tool questions"):
        number = next(counter)
        call = {"id": f"call_{number}", "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)}}
        turns.append(Turn("tools", _request(CONCIERGE, f"{text} [session {rng.randrange(16**6):06x}]", tools=offered),
                          {"role": "assistant", "content": None, "tool_calls": [call]}))
    return turns


def _case_notes(summaries: int, extractions: int, notes: Iterator[dict[str, Any]], counter: Iterator[int],
                rng: random.Random) -> list[Turn]:
    turns = []
    for position, note in enumerate(_take(notes, summaries + extractions, "case notes")):
        text = " ".join(note["full_text"].split())
        header = f"Case {next(counter):05d}, filed {_date(rng)}:\n"
        if position < summaries:
            turns.append(Turn("summarise", _request(SUMMARISE, header + text), _text(note_summary(text)),
                              stream=position % 2 == 0))
        else:
            turns.append(Turn("extract", _request(EXTRACT, header + text, response_format=EXTRACT_FORMAT),
                              _text(json.dumps(note_entities(note)))))
    return turns


def _assistant(count: int, questions: Iterator[tuple[str, str]]) -> list[Turn]:
    return [Turn("open", _request(GENERIC, text), _text(open_reply(intent)), stream=True)
            for intent, text in _take(questions, count, "customer questions")]


def _key(messages: list[dict[str, Any]]) -> str:
    return f"{messages[0].get('content')}\n\n{messages[-1].get('content')}"


def _take(source: Iterator[Any], count: int, what: str) -> list[Any]:
    taken = [item for _, item in zip(range(count), source)]
    if len(taken) < count:
        raise ValueError(f"the shared data holds too few {what} for this workload ({len(taken)} left, {count} asked)")
    return taken


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _request(system: str, user: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0, "max_tokens": _MAX_TOKENS[system], **extra}


def _text(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}
