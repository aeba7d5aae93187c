"""Cheap request features: what the router knows about a chat request before choosing a model.

One pass over the parsed request, no model and no I/O, so it can run on every request. Text signals
look only at the last user turn (the system prompt is the agent's, the same for every call of a task,
and the last turn is what the model must answer now), and at most its last `_SCAN_CHARS` characters,
so their cost doesn't grow with the conversation; only the token estimate reads everything.

The five complexity factors of the EffGen-style router are named features too: `length`,
`reasoning`, `specialisation`, `multi_step` and `output_constraints`, each in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FEATURE_NAMES", "Features", "estimate_tokens", "extract_features"]

# Words, runs of digits, and single punctuation marks approximate BPE tokens; long words split further.
_TOKENS = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]{1,2}")
_REASONING = re.compile(
    r"\b(step[- ]by[- ]step|prove|proof|derive|why\b|explain why|reason(?:ing)?|justify|analy[sz]e|compare"
    r"|trade-?offs?|pros and cons|think (?:carefully|through))",
)
_MATH = re.compile(r"\$[^$\n]+\$|\\(?:frac|sum|int|sqrt|begin\{)|\b\d+\s*[-+*/^=]\s*\d+|[∑∫√≤≥≠∞π]")
_CODE = re.compile(r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction \w+\(|#include\b|\bSELECT\b.+\bFROM\b|=>|;\s*$",
                   re.MULTILINE)
_QUESTION = re.compile(r"\?")
_NON_LATIN = re.compile(r"[^\W\d_\u0000-\u024F]")
_LETTERS = re.compile(r"[^\W\d_]")
_SCAN_CHARS = 4000
_EXACT_CHARS = 6000
_WINDOWS = 6
_WINDOW_CHARS = 1000
_IMPERATIVE = re.compile(
    r"(?:^|[.!?;]\s+|\band (?:then )?|\balso )(?:please )?(write|list|give|find|summari[sz]e|translate|explain|"
    r"create|make|draft|fix|compare|describe|tell|show|calculate|generate|rewrite|check)\b",
    re.MULTILINE,
)
_CORRECTION = re.compile(
    r"^\s*(no\b|nope\b|wrong\b|that'?s (?:not|wrong|incorrect)|not what I|I said\b|I meant\b|actually\b|"
    r"you (?:misunderstood|forgot|missed)|try again|again,|that is incorrect|incorrect\b)",
)
_STEPS = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+|\b(first(?:ly)?|then|next|after that|finally|step \d+)\b",
                    re.MULTILINE)
_DOMAINS = re.compile(
    r"\b(diagnos\w*|symptom\w*|dosage|clinical|patient|statute|contract|liabilit\w*|plaintiff|tort|"
    r"theorem|lemma|eigen\w*|integral|derivative|regression|p-value|quantum|molecul\w*|enzyme|"
    r"portfolio|amorti[sz]\w*|derivatives?|ebitda|tax\w*|kubernetes|compiler|concurrency|cryptograph\w*)\b",
)

FEATURE_NAMES = (
    "prompt_tokens", "turns", "messages", "tools", "tool_results", "images", "audio", "code", "math",
    "reasoning_cues", "intents", "multiple_intents", "corrections", "max_tokens", "schema_depth", "json_output",
    "non_latin", "length", "reasoning", "specialisation", "multi_step", "output_constraints",
)


@dataclass(frozen=True, slots=True)
class Features:
    """The features of one request; rules refer to them by these names (see FEATURE_NAMES)."""

    prompt_tokens: int
    turns: int  # user messages
    messages: int
    tools: int
    tool_results: int
    images: int
    audio: int
    code: bool
    math: bool
    reasoning_cues: int  # in the last user turn
    intents: int  # questions and imperatives in the last user turn
    multiple_intents: bool
    corrections: int  # user turns that contradict or re-ask after an assistant turn
    max_tokens: int | None
    schema_depth: int  # nesting depth of the requested json_schema (0: none)
    json_output: bool
    non_latin: float  # share of letters outside the Latin script in the last user turn
    length: float
    reasoning: float
    specialisation: float
    multi_step: float
    output_constraints: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_tokens(text: str) -> int:
    """A BPE token estimate within ~10% on English prose and code, without a tokenizer."""
    pieces = _TOKENS.findall(text)
    long_words = sum(len(p) // 7 for p in pieces if len(p) > 7)
    return len(pieces) + long_words


def extract_features(body: Mapping[str, Any]) -> Features:
    """Features of a parsed chat completions request (unknown shapes count as absent, never raise)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, Mapping)]
    scan = _Scan()
    for message in messages:
        scan.add(message)
    last = scan.last_user[-_SCAN_CHARS:]
    lowered = last.lower()  # one lowercasing: the cue patterns are case-sensitive, which is faster
    intents = len(_QUESTION.findall(last)) + len(_IMPERATIVE.findall(lowered))
    cues = len(_REASONING.findall(lowered))
    steps = len(_STEPS.findall(lowered))
    domain_hits = len(_DOMAINS.findall(lowered))
    depth = _schema_depth(body.get("response_format"))
    json_output = _is_json_output(body.get("response_format"))
    max_tokens = _max_tokens(body)
    offered = body.get("tools")
    tools: list[Any] = offered if isinstance(offered, list) else []
    return Features(
        prompt_tokens=scan.tokens,
        turns=scan.turns,
        messages=len(messages),
        tools=len(tools),
        tool_results=scan.tool_results,
        images=scan.images,
        audio=scan.audio,
        code=bool(_CODE.search(last)),
        math=bool(_MATH.search(last)),
        reasoning_cues=cues,
        intents=intents,
        multiple_intents=intents >= 2,
        corrections=scan.corrections,
        max_tokens=max_tokens,
        schema_depth=depth,
        json_output=json_output,
        non_latin=_non_latin_share(last),
        length=min(1.0, scan.tokens / 4000),
        reasoning=min(1.0, cues / 2 + (0.5 if _MATH.search(last) else 0.0)),
        specialisation=min(1.0, domain_hits / 3),
        multi_step=min(1.0, max(steps, intents - 1) / 4),
        output_constraints=min(1.0, depth / 4 + (0.25 if json_output else 0) + 0.25 * min(len(tools), 4) / 4),
    )


class _Scan:
    """Accumulates per-message counts in the single pass over the conversation."""

    def __init__(self) -> None:
        self.turns = 0
        self._texts: list[str] = []
        self.tool_results = 0
        self.images = 0
        self.audio = 0
        self.corrections = 0
        self.last_user = ""
        self._after_assistant = False

    def add(self, message: Mapping[str, Any]) -> None:
        role = message.get("role")
        text = self._text(message.get("content"))
        self._texts.append(text)
        if role == "user":
            self.turns += 1
            self.last_user = text
            if self._after_assistant and _CORRECTION.search(text[:200].lower()):
                self.corrections += 1
        elif role == "tool":
            self.tool_results += 1
        self._after_assistant = role == "assistant"
        for call in message.get("tool_calls") or []:
            if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                self._texts.append(str(call["function"].get("arguments") or ""))

    @property
    def tokens(self) -> int:
        """The conversation's token estimate, plus chat-template framing per message.

        Past `_EXACT_CHARS` the estimate reads evenly spaced windows and scales by length, so long
        conversations cost a bounded amount; the windows keep the text's mix of prose and code.
        """
        framing = 4 * len(self._texts)
        joined = "\n".join(self._texts)
        if len(joined) <= _EXACT_CHARS:
            return estimate_tokens(joined) + framing
        step = len(joined) // _WINDOWS
        windows = [joined[i * step : i * step + _WINDOW_CHARS] for i in range(_WINDOWS)]
        ratio = sum(estimate_tokens(w) for w in windows) / sum(len(w) for w in windows)
        return round(ratio * len(joined)) + framing

    def _text(self, content: Any) -> str:
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            return ""
        texts = []
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind in ("image_url", "image", "input_image"):
                self.images += 1
            elif kind in ("input_audio", "audio"):
                self.audio += 1
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)



def _non_latin_share(text: str) -> float:
    """Share of letters outside the Latin script: a cheap language signal."""
    if text.isascii():
        return 0.0
    letters = len(_LETTERS.findall(text))
    return len(_NON_LATIN.findall(text)) / letters if letters else 0.0


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_json_output(response_format: Any) -> bool:
    return isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema")


def _schema_depth(response_format: Any) -> int:
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return 0
    spec = response_format.get("json_schema")
    return _depth(spec.get("schema")) if isinstance(spec, Mapping) else 0


def _depth(node: Any, level: int = 0) -> int:
    """Nesting depth of objects and arrays in a JSON schema (an object of scalars is depth 1)."""
    if level > 32 or not isinstance(node, Mapping):
        return level
    children = []
    if isinstance(node.get("properties"), Mapping):
        children.extend(node["properties"].values())
    if isinstance(node.get("items"), Mapping):
        children.append(node["items"])
    if not children:
        return level + 1 if node.get("type") in ("object", "array") else level
    return max(_depth(child, level + 1) for child in children)
