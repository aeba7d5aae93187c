"""Task signatures: what stays the same across the calls one agent step makes.

An agent step sends the same system prompt (give or take a date, an id, a customer's e-mail), offers
the same tools and asks for the same response format every time; only the user content changes. The
signature hashes exactly that: the system prompt with its variable values masked, the sorted names
of the offered tools, and the response_format as canonical JSON. Two calls of one step share it, so
the live matcher can tag a request with its task by a dictionary lookup, no model involved.

Masking happens once per distinct system prompt (a bounded memo), so a signature costs a hash and a
dictionary lookup on the hot path (bench/task_match).

>>> body = {"messages": [{"role": "system", "content": "Today is 2024-06-01. Ticket #4411."},
...                      {"role": "user", "content": "My card never arrived"}]}
>>> template(body)
'system: Today is <date>. Ticket #<num>.\\ntools: \\nformat: '
>>> signature(body) == signature({**body, "messages": [body["messages"][0], {"role": "user", "content": "hi"}]})
True
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = ["mask", "message_text", "signature", "system_prompt", "template", "tool_names"]

_DIGEST_BYTES = 8
_MEMO_SIZE = 4096  # distinct system prompts remembered; an agent fleet has far fewer steps than this

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
          r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_WEEKDAY = r"(?:Mon|Tues?|Wed(?:nes)?|Thu(?:rs)?|Fri|Sat(?:ur)?|Sun)(?:day)?"
_TIME = r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s?[AaPp][Mm])?(?:\s?(?:Z|UTC|GMT|[+-]\d{2}:?\d{2}))?"
# One alternation, most specific first: at any position the first alternative that matches wins, so a
# UUID is not read as a date and an e-mail's digits are not read as numbers.
_VALUES = re.compile(
    "|".join([
        r"(?P<url>\b(?:https?://|www\.)[^\s<>\"')\]]*[^\s<>\"')\].,;:!?])",
        r"(?P<email>\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+)",
        r"(?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)",
        (rf"(?P<date>\b(?:{_WEEKDAY},?\s*)?(?:\d{{4}}-\d{{2}}-\d{{2}}(?:[T ]{_TIME})?"
         rf"|\d{{1,2}}[/.]\d{{1,2}}[/.]\d{{2,4}}"
         rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}(?:,?\s+\d{{4}})?"
         rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
         rf"|{_MONTH}\s+\d{{4}}|{_WEEKDAY})(?!\w))"),
        rf"(?P<time>\b{_TIME}(?!\w))",
        r"(?P<id>\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]{7,}\b|\b\d{7,}\b)",
        r"(?P<num>(?<![\w.])[-+]?\d+(?:[.,]\d+)*%?)",
        r"(?P<quote>\"[^\"\n]{1,200}\"|“[^”\n]{1,200}”|(?<!\w)'[^'\n]{1,200}'(?!\w))",
    ])
)
# A seed is one character of a class, so that the scan skips ahead (a lookahead here would stop that);
# a capital seeds only a date word, a "w" only "www.".
_SEEDS = re.compile(r"[\d@\"“':ADFJMNOSTWw]")
_DATE_WORDS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
               "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-")


def signature(body: Mapping[str, Any]) -> str:
    """The 16-hex-digit signature of a chat completions request body."""
    return hashlib.blake2b(template(body).encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES).hexdigest()


def template(body: Mapping[str, Any]) -> str:
    """What the signature hashes: the masked system prompt, the sorted tool names, the response format."""
    return (f"system: {_masked(system_prompt(body))}\ntools: {','.join(tool_names(body))}\n"
            f"format: {_response_format(body.get('response_format'))}")


def mask(text: str) -> str:
    """`text` with URLs, e-mails, ids, dates, times, numbers and quoted values replaced by <kind> markers."""
    # `_VALUES.sub` would try its alternation at every character (~250 ns each). Every value holds a
    # seed (a digit, "@", the ":" of "://", "www.", a quote, a month or weekday name), rare in prose;
    # so only seeds are looked at, from the start of the word they are in.
    parts: list[str] = []
    done = 0
    for seed in _SEEDS.finditer(text):
        at = seed.start()
        if at < done or not _is_seed(text, at):
            continue  # inside a value already masked, or a letter that starts no value
        start = at
        while start > done and text[start - 1] in _WORD:
            start -= 1
        value = _VALUES.match(text, start) or (_VALUES.match(text, at) if start < at else None)
        if value is not None:
            parts += (text[done:value.start()], _marker(value))
            done = value.end()
    parts.append(text[done:])
    return "".join(parts)


def system_prompt(body: Mapping[str, Any]) -> str:
    """The text of every system (and developer) message, in order."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(message_text(message.get("content")) for message in messages
                     if isinstance(message, dict) and message.get("role") in ("system", "developer"))


def tool_names(body: Mapping[str, Any]) -> list[str]:
    """The names of the offered tools (and legacy `functions`), sorted and distinct."""
    names: set[str] = set()
    for tool in _dicts(body.get("tools")):
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else tool.get("name", tool.get("type"))
        if isinstance(name, str):
            names.add(name)
    legacy = (function.get("name") for function in _dicts(body.get("functions")))
    names.update(name for name in legacy if isinstance(name, str))
    return sorted(names)


def message_text(content: Any) -> str:
    """The text of a message's content: the string itself, or its text parts one per line."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts say what the step is
        texts = (part.get("text") for part in content if isinstance(part, dict))
        return "\n".join(text for text in texts if isinstance(text, str))
    return ""


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _masked(system: str) -> str:
    # A memo, not state: masking is a pure function of the prompt, and a step's prompt recurs.
    return mask(system)


def _is_seed(text: str, at: int) -> bool:
    char = text[at]
    if char == "w":
        return text.startswith("www.", at)
    return not char.isupper() or text.startswith(_DATE_WORDS, at)


def _marker(match: re.Match[str]) -> str:
    kind = match.lastgroup or "value"
    return '"<quoted>"' if kind == "quote" else f"<{kind if kind != 'uuid' else 'id'}>"


def _response_format(value: Any) -> str:
    if not isinstance(value, dict) or value.get("type") in (None, "text"):
        return ""  # plain text is what an absent response_format means
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    return (item for item in value if isinstance(item, dict)) if isinstance(value, list) else ()
