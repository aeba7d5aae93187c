"""Agent steps: which calls one miniature can learn as a single task, and which are open-ended.

A task is what one miniature can learn. An agent step that constrains its output (a fixed tool set, a
JSON response format, replies that are short labels) or gives a specific instruction in its system
prompt ("Classify ...", "Summarise ...") is one task: its calls share a signature, and however
varied their content, splitting them by what they ask about (one task per label, say) or folding
them into another step would hand a miniature half a job or two jobs. Only open-ended calls, with no
system prompt or a generic one (a persona, a date, a tone: "You are a helpful assistant. Be brief."),
are split by their content: those are the calls that ask about many things.

A prompt is generic when every sentence of it is a persona, a context value or a tone; anything else
is an instruction, so a prompt this module cannot read counts as specific (a step kept whole can
still be split by a person; a step cut into pieces is what issue 15 found exported empty).

>>> calls = [{"messages": [{"role": "system", "content": "You are a helpful assistant. Today is 2025-06-01."}]},
...          {"messages": [{"role": "system", "content": "Summarise the ticket in one sentence."}]}]
>>> [step.kind for step in find_steps(calls, [None, None])]
['open', 'instruction']
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from minigate.router.catalogue import OutputKind
from minigate.router.signature import mask, signature, system_prompt, tool_names

__all__ = ["Step", "StepKind", "find_steps", "is_generic_prompt"]

StepKind = Literal["tools", "format", "replies", "instruction", "open"]  # why a step is one task; "open": it isn't

_CONSTRAINED_SHARE = 0.8  # replies that are labels or JSON make a step constrained when this share of them are
_KNOWN_SHARE = 0.5  # ... and when at least this share of the step's calls logged a reply
_CONSTRAINED_KINDS: frozenset[OutputKind] = frozenset({"label", "json", "tool_call"})
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_MARKER = re.compile(r"<(?:url|email|id|date|time|num)>|\"<quoted>\"")
_TASK_WORDS = re.compile(
    r"\b(?:classif|categor|label|tag|summar|extract|translat|rewrite|rephrase|paraphras|convert|score|rank|rate\b"
    r"|detect|route|json|tool|function|only|exactly|one of|choose|select|pick|list|format|output|return)", re.I)
_PERSONA = re.compile(r"^(?:you are|you're|act as|you act as)\b(?P<rest>.*)$")
_PERSONA_NOUNS = re.compile(
    r"\b(?:assistant|agent|bot|chatbot|ai|model|advisor|adviser|representative|helper|concierge|companion|expert)\b")
_TONE = re.compile(r"^(?:please )?(?:always )?(?:be|stay|remain|sound|keep (?:it|answers|replies|responses))"
                   r"(?: [\w,'-]+){0,5}$")  # "Be brief", "Keep answers short and friendly"
_GENERIC_ASKS = re.compile(
    r"^(?:please )?(?:answer|respond to|reply to|help(?: with)?|assist(?: with)?|support)"
    r"(?: (?:the|a|any|all|their|your|each))?(?: (?:user|customer|client|caller|person)(?:'s|s'|s)?)?"
    r"(?: (?:question|message|request|query|queries|problem|issue|need)s?)?"
    r"(?: (?:briefly|concisely|politely|helpfully|accurately|clearly|kindly|honestly))*$")
_PERSONA_WORDS = 14
_CONTEXT_WORDS = 5


@dataclass(frozen=True)
class Step:
    """The calls (rows of the input) that share one signature, and why they are, or aren't, one task.

    >>> Step("9f2c41d07a5be113", "tools", (0, 3, 4)).is_one_task
    True
    """

    signature: str
    kind: StepKind
    rows: tuple[int, ...]

    @property
    def is_one_task(self) -> bool:
        return self.kind != "open"


def find_steps(bodies: Sequence[Mapping[str, Any]], kinds: Sequence[OutputKind | None]) -> list[Step]:
    """The steps of `bodies` (request bodies, with each reply's kind when logged), in order of first call."""
    rows: dict[str, list[int]] = {}
    for row, body in enumerate(bodies):
        rows.setdefault(signature(body), []).append(row)
    return [Step(key, _kind(bodies[members[0]], [kinds[row] for row in members]), tuple(members))
            for key, members in rows.items()]


def is_generic_prompt(text: str) -> bool:
    """True for no system prompt, or one whose every sentence is a persona, a context value or a tone."""
    sentences = (sentence.strip(" \t-*•:;,.!?").lower() for sentence in _SENTENCES.split(mask(text)))
    return all(_is_generic_sentence(" ".join(sentence.split())) for sentence in sentences if sentence)


def _kind(body: Mapping[str, Any], replies: Sequence[OutputKind | None]) -> StepKind:
    if tool_names(body):
        return "tools"
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        return "format"
    if _replies_constrained(replies):
        return "replies"
    return "open" if is_generic_prompt(system_prompt(body)) else "instruction"


def _replies_constrained(replies: Sequence[OutputKind | None]) -> bool:
    """Most logged replies are labels or JSON: the step answers from a closed form, whatever its prompt."""
    counts = Counter(kind for kind in replies if kind is not None)
    known = sum(counts.values())
    constrained = sum(counts[kind] for kind in _CONSTRAINED_KINDS)
    return known >= _KNOWN_SHARE * len(replies) and known > 0 and constrained >= _CONSTRAINED_SHARE * known


def _is_generic_sentence(sentence: str) -> bool:
    if _TASK_WORDS.search(sentence):
        return False
    persona = _PERSONA.match(sentence)
    if persona:
        return len(sentence.split()) <= _PERSONA_WORDS and bool(_PERSONA_NOUNS.search(persona["rest"]))
    if _MARKER.search(sentence):  # "Today is <date>", "Customer <email>": a value the step is given
        return len(_MARKER.sub(" ", sentence).split()) <= _CONTEXT_WORDS
    return bool(_TONE.match(sentence) or _GENERIC_ASKS.match(sentence))
