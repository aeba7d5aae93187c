"""Cheap request features: what the router knows about a chat request before choosing a model.

One pass over the parsed request, no model and no I/O, so it can run on every request. Text signals
look only at the last user turn (the system prompt is the agent's, the same for every call of a task,
and the last turn is what the model must answer now), and at most its last `_SCAN_CHARS` characters,
so their cost doesn't grow with the conversation; only the token estimate reads everything.

The five complexity factors of the EffGen-style router are named features too: `length`,
`reasoning`, `specialisation`, `multi_step` and `output_constraints`, each in [0, 1].

Speed (bench/router_micro: tens of microseconds a request) comes from how the text is read, not
from reading less of it: Python's `re` skips ahead fast only where a pattern starts with a literal or
a character class, and tries a pattern that starts with `\\b` or `^` at every position (~25 ns each).
So the cue patterns read the last turn with a "\\n" in front and start with the character before the
cue (`\\W` for `\\b`, "\\n" for `^`), and the counts are exactly those of the plain spellings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FEATURE_NAMES", "Features", "estimate_tokens", "extract_features"]

_SCAN_CHARS = 4000
_EXACT_CHARS = 6000
_WINDOWS = 6
_WINDOW_CHARS = 1000

# Word cues, matched on the lowercased text after a non-word character (see `_count_word_cues`).
_REASONING_CUES = (
    r"step[- ]by[- ]step", "prove", "proof", "derive", r"why\b", "explain why", "reason(?:ing)?", "justify",
    "analy[sz]e", "compare", "trade-?offs?", "pros and cons", "think (?:carefully|through)",
)
_DOMAIN_CUES = (
    r"diagnos\w*", r"symptom\w*", "dosage", "clinical", "patient", "statute", "contract", r"liabilit\w*",
    "plaintiff", "tort", "theorem", "lemma", r"eigen\w*", "integral", "derivative", "regression", "p-value",
    "quantum", r"molecul\w*", "enzyme", "portfolio", r"amorti[sz]\w*", "derivatives?", "ebitda", r"tax\w*",
    "kubernetes", "compiler", "concurrency", r"cryptograph\w*",
)
_STEP_CUES = ("first(?:ly)?", "then", "next", "after that", "finally", r"step \d+")
_WORD_CUES = (  # reasoning cues, domain words, step words
    re.compile(r"\W(" + "|".join(_REASONING_CUES) + ")"),
    re.compile(r"\W(" + "|".join(_DOMAIN_CUES) + r")\b"),
    re.compile(r"\W(" + "|".join(_STEP_CUES) + r")\b"),
)
_VERB = (r"(?:please )?(?:write|list|give|find|summari[sz]e|translate|explain|create|make|draft|fix|compare"
         r"|describe|tell|show|calculate|generate|rewrite|check)\b")
# An imperative is a verb at the start of a line or sentence, or after "and (then)" or "also": one
# pattern per kind of start, so that each starts with a literal; a verb with two of them counts once.
_IMPERATIVES = (
    re.compile("\n" + _VERB),
    re.compile(r"[.!?;]\s+" + _VERB),
    re.compile(r"and(?<!\wand) (?:then )?" + _VERB),
    re.compile(r"also(?<!\walso) " + _VERB),
)
# A list item: a bullet or number after the last "\n" of a run of whitespace (`_count_list_items`).
_LIST_ITEM = re.compile(r"\n[^\S\n]*+(\d+[.)]|[-*•])(?=\s)")
# Code and math read the text as written, and only text that holds one of their markers (`in` is
# far cheaper than a scan). Math starts with one of a few characters; the look-behinds tell which.
_CODE = re.compile(
    r"\W(?:(?<=`)``|def \w+\(|class \w+[:(]|function \w+\(|(?<=#)include\b|SELECT\b.+\bFROM\b|(?<==)>|(?<=;)\s*$)",
    re.MULTILINE,
)
_CODE_MARKERS = ("```", "def ", "class ", "function ", "#include", "SELECT", "=>", ";")
_MATH_MARKERS = ("$", "\\", "=", "+", "-", "*", "/", "^")  # or a symbol outside ASCII
# TeX inline math hugs its dollars (`$x + 1$`); two prices do not pair up (`$100 or $200`: no space may
# follow the opening dollar or precede the closing one, and a closing dollar is not followed by a digit).
_MATH = re.compile(r"[$\\\d∑∫√≤≥≠∞π](?:(?<=\$)(?=\S)[^$\n]*\S\$(?!\d)|(?<=\\)(?:frac|sum|int|sqrt|begin\{)"
                   r"|(?<=\d)(?<!\w\d)\d*\s*[-+*/^=]\s*\d+|(?<=[∑∫√≤≥≠∞π]))")
_CORRECTION = re.compile(  # on a lowercased turn; `^` without MULTILINE is tried at the start only
    r"^\s*(no\b|nope\b|wrong\b|that'?s (?:not|wrong|incorrect)|not what i\b|i said\b|i meant\b|actually\b|"
    r"you (?:misunderstood|forgot|missed)|try again|again,|that is incorrect|incorrect\b)",
)
_NON_LATIN = re.compile(r"[^\W\d_\u0000-\u024F]")
_LETTERS = re.compile(r"[^\W\d_]")


def _word_cue_starts() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Where a word cue may start: a non-word character, then the text all matches of a cue begin with.

    The stems are grouped by first letter, so `re` checks one letter before the rest. The second
    pattern reads ASCII text with every non-word character made a space (`_SPACES`): with a literal
    in front, `re` jumps from space to space. A hyphen in a stem may be either.
    """
    stems: dict[str, set[str]] = {}
    for cue in _REASONING_CUES + _DOMAIN_CUES + _STEP_CUES:
        stem = re.match(r"[a-z](?:[a-z -]*[a-z])?(?![?*+{])", cue)
        assert stem is not None, cue
        stems.setdefault(stem.group()[0], set()).add(re.escape(stem.group()[1:]).replace(r"\-", "[- ]"))
    ahead = "|".join(first if "" in rests else f"{first}(?:{'|'.join(sorted(rests))})"
                     for first, rests in sorted(stems.items()))
    return re.compile(rf"\W(?={ahead})"), re.compile(f" (?={ahead})")


_WORD_CUE_START, _SPACED_WORD_CUE_START = _word_cue_starts()
_SPACES = bytes(ord(" ") if re.match(rb"\W", bytes([i])) else i for i in range(128)) + bytes(range(128, 256))


def _token_classes() -> bytes:
    """A `bytes.translate` table: ASCII letters to 'a', whitespace to ' ', anything else to '.'.

    The text is UTF-8 with the continuation bytes deleted, so a character outside ASCII is one '.'.
    """
    letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    spaces = b" \t\n\r\v\f\x1c\x1d\x1e\x1f"  # what `\s` matches in ASCII
    return bytes(ord("a") if i in letters else ord(" ") if i in spaces else ord(".") for i in range(256))


_TOKEN_CLASSES = _token_classes()
_UTF8_CONTINUATION = bytes(range(0x80, 0xC0))

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
    """A BPE token estimate within ~10% on English prose, JSON and code, without a tokenizer.

    A word of ASCII letters is a token, plus one per eight letters; other non-space characters
    (punctuation, digits, other scripts) are a token per two in a row. `bytes.count` on the text's
    character classes does the counting in C, some ten times faster than a regex pass.
    """
    classes = text.encode("utf-8", "surrogatepass").translate(_TOKEN_CLASSES, _UTF8_CONTINUATION)
    words = classes.count(b" a") + classes.count(b".a") + classes.startswith(b"a")
    long_words = classes.count(b"aaaaaaaa")
    symbols = classes.count(b".") - classes.count(b"..")
    return words + long_words + symbols


def extract_features(body: Mapping[str, Any]) -> Features:
    """Features of a parsed chat completions request (unknown shapes count as absent, never raise)."""
    listed = body.get("messages")
    messages = [m for m in listed if isinstance(m, Mapping)] if isinstance(listed, list | tuple) else []
    scan = _Scan()
    for message in messages:
        scan.add(message)
    tokens = scan.tokens()
    cues = _Cues("\n" + scan.last_user[-_SCAN_CHARS:])
    response_format = body.get("response_format")
    depth = _schema_depth(response_format)
    json_output = _is_json_output(response_format)
    offered = body.get("tools")
    tools = len(offered) if isinstance(offered, list) else 0
    return Features(
        prompt_tokens=tokens,
        turns=scan.turns,
        messages=len(messages),
        tools=tools,
        tool_results=scan.tool_results,
        images=scan.images,
        audio=scan.audio,
        code=cues.code,
        math=cues.math,
        reasoning_cues=cues.reasoning,
        intents=cues.intents,
        multiple_intents=cues.intents >= 2,
        corrections=scan.corrections,
        max_tokens=_max_tokens(body),
        schema_depth=depth,
        json_output=json_output,
        non_latin=_non_latin_share(cues.text),
        length=min(1.0, tokens / 4000),
        reasoning=min(1.0, cues.reasoning / 2 + (0.5 if cues.math else 0.0)),
        specialisation=min(1.0, cues.domains / 3),
        multi_step=min(1.0, max(cues.steps, cues.intents - 1) / 4),
        output_constraints=min(1.0, depth / 4 + (0.25 if json_output else 0) + 0.25 * min(tools, 4) / 4),
    )


class _Cues:
    """The text signals of the last user turn, given with a "\\n" in front."""

    def __init__(self, text: str) -> None:
        self.text = text
        lowered = text.lower()  # the cue patterns are case-sensitive, which is faster
        verbs = {match.end() for pattern in _IMPERATIVES for match in pattern.finditer(lowered)}
        self.intents = text.count("?") + len(verbs)
        self.reasoning, self.domains, step_words = _count_word_cues(lowered)
        self.steps = _count_list_items(lowered) + step_words
        self.code = _holds_any(text, _CODE_MARKERS) and _CODE.search(text) is not None
        self.math = (_holds_any(text, _MATH_MARKERS) or not text.isascii()) and _MATH.search(text) is not None


def _count_word_cues(lowered: str) -> list[int]:
    """`len(pattern.findall(lowered))` for each of `_WORD_CUES`, trying them only where a cue may start."""
    if lowered.isascii():
        starts = _SPACED_WORD_CUE_START.finditer(lowered.encode().translate(_SPACES).decode())
    else:
        starts = _WORD_CUE_START.finditer(lowered)
    counts = [0] * len(_WORD_CUES)
    ends = [0] * len(_WORD_CUES)  # where each findall would go on from
    for start in starts:
        at = start.start()
        for i, pattern in enumerate(_WORD_CUES):
            if at >= ends[i] and (match := pattern.match(lowered, at)):
                counts[i] += 1
                ends[i] = match.end()
    return counts


def _holds_any(text: str, needles: tuple[str, ...]) -> bool:
    for needle in needles:
        if needle in text:
            return True
    return False


def _count_list_items(lowered: str) -> int:
    """What `len(re.findall(r"^\\s*(?:\\d+[.)]|[-*•])\\s+", lowered, re.MULTILINE))` would be, in linear time.

    That pattern tries every line start, and `\\s*` reads on over all the blank lines below it, so a
    turn of blank lines costs quadratic time. Every line start in one run of whitespace leads to the
    same bullet, and `_LIST_ITEM` reads from a "\\n" only up to the next, so only the last "\\n" of
    a run finds it. findall skips the run after an item (its `\\s+` took it) unless it ends in "\\n".
    """
    count, item_end = 0, -1
    for item in _LIST_ITEM.finditer(lowered):
        bullet = item.start(1)
        after_item = item_end >= 0 and lowered[item_end:bullet].isspace()
        if not after_item or lowered[bullet - 1] == "\n":
            count += 1
            item_end = item.end()
    return count


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
        content = message.get("content")
        text = content if isinstance(content, str) else self._parts_text(content)
        self._texts.append(text)
        if role == "user":
            self.turns += 1
            self.last_user = text
            if self._after_assistant and _CORRECTION.search(text[:200].lower()):
                self.corrections += 1
        elif role == "tool":
            self.tool_results += 1
        self._after_assistant = role == "assistant"
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list | tuple) else ():
            if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                self._texts.append(str(call["function"].get("arguments") or ""))

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

    def _parts_text(self, content: Any) -> str:
        """The text of a list of content parts, counting the images and audio among them."""
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
