"""PII redaction for call records: find spans, replace them with typed, numbered placeholders.

Records are redacted before they are encrypted or exported, so nothing downstream (stores, exports,
datasets) ever holds the raw values. Placeholders keep a record's structure: the same e-mail address
becomes `<EMAIL_1>` wherever it appears in one record (messages, tool-call arguments, response), so
a dataset built from the log still shows that the user repeated it.

    >>> redactor = Redactor()
    >>> redactor.redact("mail jane@example.com or call +1 415-555-0100")[0]
    'mail <EMAIL_1> or call <PHONE_1>'

Recognition is pattern-based (see `minigate.logger.redact.patterns`); street addresses and person
names are found by `minigate.logger.redact.addresses` and `minigate.logger.redact.names` (patterns,
name gazetteers and context cues, see `minigate.logger.redact.lexicon`: no language model), and lose
every overlap to the pattern types.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from minigate.logger.redact.addresses import address_candidates
from minigate.logger.redact.lexicon import capitalised_runs
from minigate.logger.redact.names import name_candidates
from minigate.logger.redact.patterns import candidates
from minigate.logger.redact.walk import JsonRedaction, RedactionBudget

__all__ = [
    "ENTITY_TYPES",
    "PLACEHOLDER",
    "Action",
    "Placeholders",
    "RedactionPolicy",
    "Redactor",
    "Span",
    "find_spans",
    "redact_lines",
]

Action = Literal["redact", "hash", "keep"]

# Presidio's entity names, so spans compare directly with Presidio's output and its datasets.
ENTITY_TYPES = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "SECRET",
    "PERSON", "STREET_ADDRESS",
)  # fmt: skip
_LABELS = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP",
    "SECRET": "SECRET",
    "PERSON": "PERSON",
    "STREET_ADDRESS": "STREET_ADDRESS",
}

# What redaction writes, for readers of redacted text: `<EMAIL_1>`, or `<EMAIL_3f9a0c21b7de>` for a hashed
# value; group 1 is the label.
PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*?)_(?:\d+|[0-9a-f]{12})>")


@dataclass(frozen=True, slots=True)
class Span:
    """One detected value: `text[start:end]` of the original string is an entity of `type`."""

    start: int
    end: int
    type: str


def _redact_all() -> Mapping[str, Action]:
    return MappingProxyType(dict.fromkeys(ENTITY_TYPES, "redact"))


@dataclass(frozen=True)
class RedactionPolicy:
    """What to do with each entity type: replace it (`redact`), replace it by a keyed hash, or `keep` it.

    `hash` gives `<EMAIL_3f9a0c21b7de>`: the same value hashes alike across records (so analysts can
    count repeat users) while the key, not the hash, guards against dictionary attacks. Types not in
    `actions` are redacted: forgetting a type must not leak it.

        >>> policy = RedactionPolicy({"IP_ADDRESS": "keep", "EMAIL_ADDRESS": "hash"}, hash_key=b"pepper")
        >>> Redactor(policy).redact("a@x.io from 10.0.0.1")[0]
        '<EMAIL_305b391c651b> from 10.0.0.1'
    """

    actions: Mapping[str, Action] = field(default_factory=_redact_all)
    hash_key: bytes | None = field(default=None, repr=False)  # a secret: never in logs or tracebacks

    def __post_init__(self) -> None:
        unknown = sorted(set(self.actions) - set(ENTITY_TYPES))
        if unknown:
            raise ValueError(f"unknown entity types {unknown}; known: {', '.join(ENTITY_TYPES)}")
        bad = sorted(str(a) for a in self.actions.values() if a not in get_args(Action))
        if bad:
            raise ValueError(f"unknown actions {bad}; choose from {', '.join(get_args(Action))}")
        if self.hash_key is None and "hash" in self.actions.values():
            raise ValueError("the hash action needs a hash_key")

    def action(self, entity_type: str) -> Action:
        return self.actions.get(entity_type, "redact")


@dataclass
class Placeholders:
    """Numbering state for one record: the same value keeps its placeholder across the record's strings.

        >>> state = Placeholders()
        >>> Redactor().redact("a@x.io", state)[0], Redactor().redact("b@x.io, a@x.io", state)[0]
        ('<EMAIL_1>', '<EMAIL_2>, <EMAIL_1>')
    """

    # The raw values are the keys: kept out of repr so that a logged state never leaks them.
    _assigned: dict[tuple[str, str], str] = field(default_factory=dict, init=False, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def number(self, entity_type: str, value: str) -> str:
        key = (entity_type, value)
        if key not in self._assigned:
            self._counts[entity_type] = self._counts.get(entity_type, 0) + 1
            self._assigned[key] = f"<{_LABELS.get(entity_type, entity_type)}_{self._counts[entity_type]}>"
        return self._assigned[key]


def find_spans(text: str) -> list[Span]:
    """Detected entities, non-overlapping and sorted by position.

    Overlaps are settled by type rank, then length: an explicit credential beats everything (a
    password may be all digits), checksummed types beat phone numbers and street addresses (of those
    two the longer span wins), and the entropy guess and then person names only take what is left.
    """
    found = candidates(text)
    if len(text) >= 16 or not text.islower():  # keys, roles and model names hold neither names nor addresses
        runs = capitalised_runs(text)
        found += address_candidates(text, runs) + name_candidates(text, runs)
    if not found:
        return []
    accepted: list[tuple[int, int, str]] = []
    for start, end, entity_type, _rank in sorted(found, key=lambda c: (c[3], c[0] - c[1], c[0])):
        i = bisect.bisect_left(accepted, (start,))
        if (i > 0 and accepted[i - 1][1] > start) or (i < len(accepted) and accepted[i][0] < end):
            continue
        accepted.insert(i, (start, end, entity_type))
    return [Span(start, end, entity_type) for start, end, entity_type in accepted]


# Agents resend the same system prompt, tool schemas and JSON keys on every call of a task; only the
# user's turn changes. Remembering the spans of recent strings makes the repeated bulk of a record free
# to redact. The cache lives in the writer's memory only (which holds these payloads anyway), and
# strings past `_CACHED_LENGTH` are scanned afresh, so it stays a few MiB at most.
_CACHED_STRINGS = 2048
_CACHED_LENGTH = 4096


@functools.lru_cache(maxsize=_CACHED_STRINGS)
def _cached_spans(text: str) -> tuple[Span, ...]:
    return tuple(find_spans(text))


def _spans_of(text: str) -> Sequence[Span]:
    return _cached_spans(text) if len(text) <= _CACHED_LENGTH else find_spans(text)


class Redactor:
    """Replaces detected entities according to a policy. Holds no per-call state: share one across threads.

        >>> text, spans = Redactor().redact("ssn 536-22-8718, again 536-22-8718")
        >>> text, spans[0]
        ('ssn <SSN_1>, again <SSN_1>', Span(start=4, end=15, type='US_SSN'))
    """

    def __init__(self, policy: RedactionPolicy = RedactionPolicy()) -> None:
        self._policy = policy

    def redact(self, text: str, state: Placeholders | None = None) -> tuple[str, list[Span]]:
        """The redacted text and the spans replaced in it, with offsets into the original `text`."""
        spans = _spans_of(text)
        if not spans:
            return text, []
        state = Placeholders() if state is None else state
        pieces: list[str] = []
        replaced: list[Span] = []
        position = 0
        for span in spans:
            action = self._policy.action(span.type)
            if action == "keep":
                continue
            value = _normalise(span.type, text[span.start : span.end])
            pieces += [text[position : span.start], self._placeholder(action, span.type, value, state)]
            replaced.append(span)
            position = span.end
        if not replaced:
            return text, replaced
        pieces.append(text[position:])
        return "".join(pieces), replaced

    def redact_json(
        self, value: Any, state: Placeholders | None = None, budget: RedactionBudget | None = None
    ) -> Any:
        """A redacted copy of a JSON-like value (dicts, lists, strings); other scalars are returned as-is.

        Strings holding JSON (tool-call `arguments`) are parsed and walked, so values inside escaped
        text (`"Phone:\\n0490 75 40 81"`) are found; they are re-serialised only when something changed.
        Dict keys are redacted too: a user's address can be a key. The walk is iterative and bounded
        (see `minigate.logger.redact.walk`): any value can be redacted; text past the `budget`
        (unlimited when None) and containers nested past `MAX_DEPTH` are withheld, never kept.
        """
        state = Placeholders() if state is None else state
        budget = RedactionBudget(math.inf) if budget is None else budget
        return JsonRedaction(lambda text: self.redact(text, state)[0], budget).value(value)[0]

    def _placeholder(self, action: Action, entity_type: str, value: str, state: Placeholders) -> str:
        if action == "hash" and self._policy.hash_key is not None:
            digest = hmac.new(self._policy.hash_key, f"{entity_type}:{value}".encode(), hashlib.sha256)
            return f"<{_LABELS.get(entity_type, entity_type)}_{digest.hexdigest()[:12]}>"
        return state.number(entity_type, value)


def _normalise(entity_type: str, value: str) -> str:
    """The identity of a value, so `+1 415-555-0100` and `+1 (415) 555 0100` share a placeholder."""
    if entity_type in ("PHONE_NUMBER", "CREDIT_CARD", "US_SSN"):
        return "".join(ch for ch in value if ch.isdigit())
    if entity_type == "IBAN_CODE":
        return value.replace(" ", "").upper()
    if entity_type in ("EMAIL_ADDRESS", "PERSON"):
        return " ".join(value.lower().split())  # "Ann Lee" and "ann  lee" are one person
    return value


def redact_lines(lines: Iterable[str], redactor: Redactor) -> Iterator[dict[str, Any]]:
    """Redact `minigate redact` input: JSONL `{"id", "text"}` lines or plain text, each its own record.

    Each line is judged on its own (a JSON object with a string `text` is a record; anything else is
    plain text), so a stray plain line in JSONL is still redacted rather than rejected. Lines without
    an id get their 0-based line number; blank lines are skipped but keep their number.
    """
    for number, line in enumerate(lines):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        record_id, text = _parse_line(line, number)
        redacted, spans = redactor.redact(text)
        yield {
            "id": record_id,
            "text": redacted,
            "spans": [{"start": s.start, "end": s.end, "type": s.type} for s in spans],
        }


def _parse_line(line: str, number: int) -> tuple[Any, str]:
    if line.lstrip().startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return number, line
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            return record.get("id", number), record["text"]
    return number, line
