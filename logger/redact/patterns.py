"""The pattern recognizers of `minigate.logger.redact`, together: e-mails here, `numbers` and `secrets` beside.

The shapes are cheap to find and expensive to get wrong, so every family pairs a deliberately loose
regex with a check that only the real thing passes, as Presidio's pattern recognizers do (see
`numbers` for the checksums and `secrets` for the credential shapes).

Speed comes from anchors, not from one giant regex: Python's `re` scans about 30 MB/s per pattern
that starts with a lookbehind, so a text is scanned whole only twice (digit chunks, long tokens);
every other pattern runs in a small window around an anchor (a digit chunk, an '@', a '::'), and
families whose anchor is absent are skipped.

Each recognizer yields a `Candidate`, `(start, end, type, rank)`; the lower rank wins an overlap (see
`spans` and `find_spans`). Nothing here does IO or keeps state, so it is safe to call from any thread.

    >>> sorted(kind for _, _, kind, _ in candidates("mail jane@example.com, key sk-proj-a1B2c3D4e5F6g7H8"))
    ['EMAIL_ADDRESS', 'SECRET']
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from minigate.logger.redact.numbers import number_candidates
from minigate.logger.redact.secrets import secret_candidates
from minigate.logger.redact.spans import RANK_EMAIL, Candidate

__all__ = ["candidates"]

# Below 16 characters (the shortest token) only a number, an e-mail, an IPv6 or `pwd=...` can match.
_SHORT_MAY_HOLD = re.compile(r"[\d@:=]").search

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}"  # local part
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"  # domain labels, TLD
)
_LOCAL_MAX = 64  # characters of a local part (`_EMAIL`'s first two classes)
_LOCAL_RUN = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+\Z")  # a whole run, ending at `endpos`


def candidates(text: str) -> list[Candidate]:
    """Every validated match of every recognizer, overlapping ones included, in no particular order."""
    if len(text) < 16 and not _SHORT_MAY_HOLD(text):
        return []  # JSON keys, roles, finish reasons: the bulk of a record's strings
    found = list(secret_candidates(text))
    found += number_candidates(text)
    if "@" in text:
        found += _emails(text)
    return found


def _emails(text: str) -> Iterator[Candidate]:
    """One `_EMAIL.match` per '@', at the only place an address around it can start.

    A local part is a run of `_LOCAL_RUN` characters that none precedes (the pattern's lookbehind), so
    an address holding this '@' starts where the run before it starts: nowhere else need be tried.
    Scanning a window around each '@' instead cost ~9 µs per byte of `a@a@a@...` (bench/redaction).
    """
    floor = 0  # no address starts before the previous '@' or inside the previous address
    at = text.find("@")
    while at != -1:
        local = _LOCAL_RUN.search(text, max(floor, at - _LOCAL_MAX - 1), at)
        if local is not None and at - local.start() <= _LOCAL_MAX:
            m = _EMAIL.match(text, local.start(), at + 256)
            if m is not None and ".." not in m.group():
                yield m.start(), m.end(), "EMAIL_ADDRESS", RANK_EMAIL
                floor = m.end()
        floor = max(floor, at + 1)
        at = text.find("@", floor)
