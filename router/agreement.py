"""Whether two models' replies to one request agree, judged by what the task's replies are (S6).

Pure code over two `ReplyView`s, no I/O: the gateway's shadow calls judge each pair as it completes, and
offline jobs can judge logged pairs the same way. The reference is the frontier's reply, the candidate
the miniature's; which was the client's depends on the direction of the shadow.

- label: the same text once normalised (case, spacing, quotes, a trailing full stop);
- json: both parse, the candidate matches the request's JSON schema when it gave one, and every leaf
  (path → value) is equal;
- tool_call: the same functions with arguments equal as JSON, in any order;
- free_text: the cosine of their MiniLM embeddings reaches a threshold. Without an embedding model in
  the process (`tasks.embedding` off) the verdict is `unjudged`: counted, never guessed.

>>> from minigate.router.cascade import ReplyView
>>> judge(ReplyView("Card_Arrived."), ReplyView(" card_arrived"), "label").verdict
'agree'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, UnknownType

from minigate.router.cascade import ReplyView, normalise_label

__all__ = ["JUDGE_PROMPT", "Comparison", "Kind", "Similarity", "Verdict", "as_kind", "infer_kind", "judge_messages",
           "judge_verdict", "judge", "wilson"]

Kind = Literal["free_text", "json", "tool_call", "label"]
Verdict = Literal["agree", "disagree", "unjudged", "error"]  # error: the shadow call itself failed
Similarity = Callable[[str, str], float]  # cosine of two texts' embeddings

TEXT_THRESHOLD = 0.8  # MiniLM cosine at which two free-text replies say the same thing
_LABEL_WORDS = 6  # a reply this short, on one line, reads as a label when nothing says otherwise


@dataclass(frozen=True, slots=True)
class Comparison:
    """A verdict and the figure behind it (1.0 / 0.0 for exact kinds, the share of equal leaves for JSON,
    the cosine for free text; None when unjudged)."""

    verdict: Verdict
    kind: Kind
    score: float | None = None


def judge(reference: ReplyView, candidate: ReplyView, kind: Kind, *, request: Mapping[str, Any] | None = None,
          similarity: Similarity | None = None, threshold: float = TEXT_THRESHOLD) -> Comparison:
    """The candidate's reply against the reference's, by the task's output kind."""
    if kind == "tool_call" and (reference.tool_calls or candidate.tool_calls):
        return _exact(kind, _calls(reference.tool_calls) == _calls(candidate.tool_calls))
    if kind == "tool_call":  # both answered in words instead: the same words, or not
        return _exact(kind, normalise_label(reference.content) == normalise_label(candidate.content))
    if kind == "label":
        return _exact(kind, normalise_label(reference.content) == normalise_label(candidate.content))
    if kind == "json":
        return _json(reference.content, candidate.content, request or {})
    if similarity is None or not reference.content or not candidate.content:
        return Comparison("unjudged" if similarity is None else "disagree", kind)
    score = similarity(reference.content, candidate.content)
    return Comparison("agree" if score >= threshold else "disagree", kind, round(score, 4))


JUDGE_PROMPT = """You compare two answers to the same request. The reference answer is known to be good.
Decide whether the candidate answer would serve the person who asked just as well: the same facts, the same
decision, the same instructions, whatever the wording. Extra politeness or length does not matter; a wrong
fact, a missing step or a different conclusion does.
Reply with exactly one word: AGREE or DISAGREE."""


def judge_messages(question: str, reference: str, candidate: str) -> list[dict[str, str]]:
    """The chat an LLM judge gets for one free-text pair (its answer is read by `judge_verdict`)."""
    return [{"role": "system", "content": JUDGE_PROMPT},
            {"role": "user", "content": f"Request:\n{question}\n\nReference answer:\n{reference}\n\n"
                                        f"Candidate answer:\n{candidate}"}]


def judge_verdict(reply: str | None) -> Verdict:
    """The judge's word as a verdict; anything but AGREE or DISAGREE leaves the pair unjudged.

    >>> judge_verdict(" Agree."), judge_verdict("DISAGREE"), judge_verdict("maybe")
    ('agree', 'disagree', 'unjudged')
    """
    word = normalise_label(reply)
    return "agree" if word == "agree" else "disagree" if word == "disagree" else "unjudged"


def as_kind(value: str | None) -> Kind | None:
    """A catalogue's output kind as a judging kind; None for anything else (then the kind is inferred)."""
    return value if value in ("free_text", "json", "tool_call", "label") else None  # type: ignore[return-value]


def infer_kind(request: Mapping[str, Any], reference: ReplyView) -> Kind:
    """The kind of a task nobody catalogued, from the request and the reference reply."""
    if reference.tool_calls:
        return "tool_call"
    response_format = request.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema"):
        return "json"
    text = (reference.content or "").strip()
    if text[:1] in ("{", "[") and _parses(text):
        return "json"
    if text and "\n" not in text and len(text.split()) <= _LABEL_WORDS:
        return "label"
    return "free_text"


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion, rounded to three places: honest at the
    small samples and the shares near 1 that promotion decisions are made on.

    >>> wilson(194, 200)
    (0.936, 0.986)
    """
    if n == 0:
        return (0.0, 1.0)
    share = successes / n
    centre = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return (round(max(0.0, (centre - spread) / scale), 3), round(min(1.0, (centre + spread) / scale), 3))


def _exact(kind: Kind, equal: bool) -> Comparison:
    return Comparison("agree" if equal else "disagree", kind, 1.0 if equal else 0.0)


def _json(reference: str | None, candidate: str | None, request: Mapping[str, Any]) -> Comparison:
    expected, got = _loads(reference), _loads(candidate)
    if got is _INVALID or (schema := _schema(request)) is not None and not _matches(schema, got):
        return Comparison("disagree", "json", 0.0)
    if expected is _INVALID:  # nothing to compare with: the candidate's validity is all that can be said
        return Comparison("unjudged", "json")
    leaves, theirs = dict(_leaves(expected)), dict(_leaves(got))
    paths = leaves.keys() | theirs.keys()
    equal = sum(1 for path in paths if path in leaves and path in theirs and leaves[path] == theirs[path])
    share = equal / len(paths) if paths else 1.0
    return Comparison("agree" if share == 1.0 else "disagree", "json", round(share, 4))


_INVALID = object()


def _loads(text: str | None) -> Any:
    try:
        return orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return _INVALID


def _parses(text: str) -> bool:
    return _loads(text) is not _INVALID


def _leaves(value: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}")
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def _schema(request: Mapping[str, Any]) -> Mapping[str, Any] | None:
    response_format = request.get("response_format")
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return schema if isinstance(schema, Mapping) else None


def _matches(schema: Mapping[str, Any], value: Any) -> bool:
    try:
        return Draft202012Validator(schema).is_valid(value)
    except (SchemaError, UnknownType):  # the client's schema is broken: it can't count against the candidate
        return True


def _calls(calls: Sequence[Any]) -> list[tuple[str, bytes]]:
    """Each call as (name, canonical arguments), sorted: parallel calls may come in any order."""
    found: list[tuple[str, bytes]] = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            return [("", b"malformed")]
        arguments = _loads(function.get("arguments") or "{}")
        canonical = b"invalid" if arguments is _INVALID else orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
        found.append((str(function.get("name")), canonical))
    return sorted(found)
