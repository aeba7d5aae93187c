"""Lexical terms of the escalation score: the words of the last user turn, weighted by a fitted file.

`minigate router fit` can learn a weight per word (see conversion/fit.py); the scoring file keeps them as a
readable mapping, `{"lexical": {"plaintiff": 0.41, "hello": -0.12, ...}}`, and a request's score adds
the weights of the distinct words it contains. The same `terms()` splits text at fit and at serve
time, so the two can't drift apart.

Words rather than hashed buckets: a lookup per word needs no hash computed in Python (crc32 per token
would cost more than the lookups), nothing collides, and an engineer can read why a prompt escalates.
The fit writes only words seen in several training prompts, which keeps the file small and keeps
one-off strings (names, ids) out of it.

    >>> lexicon = Lexicon({"plaintiff": 0.4, "balance": -0.3})
    >>> lexicon.offset({"messages": [{"role": "user", "content": "The plaintiff sued."}]})
    0.4
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from itertools import repeat
from typing import Any

__all__ = ["SCAN_CHARS", "Lexicon", "last_user_text", "terms"]

SCAN_CHARS = 4000  # like the feature cues: the end of the last user turn, so cost doesn't grow with it
# ASCII punctuation becomes a space; str.translate + split is ~3x faster than a word regex here.
_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, " "))


def terms(text: str) -> set[str]:
    """The distinct lowercased words of the text's last SCAN_CHARS characters."""
    return set(text[-SCAN_CHARS:].lower().translate(_PUNCTUATION).split())


def last_user_text(body: Mapping[str, Any]) -> str:
    """The last user message's text (text parts joined), or "" when there is none."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(part["text"] for part in content
                                 if isinstance(part, Mapping) and isinstance(part.get("text"), str))
            return ""
    return ""


class Lexicon:
    """Fitted word weights; `offset` is what a request's words add to the score's logit."""

    __slots__ = ("weights",)

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = dict(weights)

    def offset(self, body: Mapping[str, Any]) -> float:
        return sum(map(self.weights.get, terms(last_user_text(body)), repeat(0.0)), 0.0)
