"""Secrets for `minigate.logger.redact`: API keys, tokens, private keys and passwords in plain sight.

Four shapes, from surest to loosest:

- PEM private-key blocks;
- vendor key formats (OpenAI, Anthropic, AWS, GitHub, Slack, Google, GitLab, Stripe), JSON Web Tokens
  and the value after `Bearer`, each matched against a whole token;
- the value assigned to a credential's name: `password = "..."`, `"api_key": "..."`,
  `Authorization: Basic ...`, unless it reads as code (`api_key = os.environ[...]`);
- last, a long token that looks machine-generated (`is_random_token`), ranked below every other type.

The whole text is scanned once for long tokens (`_TOKEN`) and classified in Python; the slower
assignment pattern runs only when a credential word occurs at all. Nothing here does IO or keeps state.

    >>> [(start, end, kind) for start, end, kind, _ in secret_candidates("password: hunter22x")]
    [(10, 19, 'SECRET')]
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

from minigate.logger.redact.spans import RANK_ENTROPY, RANK_SECRET, Candidate

__all__ = ["is_random_token", "secret_candidates"]

_HAS_DIGIT = re.compile(r"\d").search
_HAS_LOWER = re.compile(r"[a-z]").search
_HAS_UPPER = re.compile(r"[A-Z]").search

_PEM = re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)")
# Vendor key formats, matched against whole tokens (see `_TOKEN`).
_PREFIXED = re.compile(
    r"sk-(?:proj-|ant-[a-z0-9]+-|live-|test-|svcacct-|admin-)?[A-Za-z0-9_-]*\d[A-Za-z0-9_-]*"  # OpenAI, Anthropic
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe secret / restricted keys
)
_PREFIXES = ("sk-", "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA", "gh", "github_pat_", "xox", "AIza",
             "glpat-", "sk_", "rk_")  # fmt: skip
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*(?![\w-])")  # base64url '{"' header, payload
_BEARER_BEFORE = re.compile(r"(?i)\bbearer\s+\Z")
_BEARER_VALUE = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# Before the slower `_ASSIGNED`; substring tests, since `re` has no fast scan for an alternation.
_KEYWORD_HINTS = ("key", "secret", "token", "passw", "pwd", "credential", "authoriz")
# `password = "..."`, `"api_key": "..."`, `Authorization: Basic ...`: the value is the secret.
_ASSIGNED = re.compile(  # runs on lowered text
    r"(?:api[_-]?key|apikey|secret|token|passwd|password|pwd|access[_-]?key|auth[_-]?key|private[_-]?key"
    r"|credentials?|authorization)[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|token)\s+)?(?P<value>[^\s\"',;<>(){}\[\]]{8,})"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")

# Long runs of token characters: vendor keys, JWT headers, bearer values, or random (`is_random_token`).
_TOKEN = re.compile(r"[A-Za-z0-9_+/-]{16,}=*")  # maximal runs; the boundaries are checked in Python
_HEX_OR_UUID = re.compile(r"[0-9a-fA-F-]+")
_WORDLIKE_RUN = re.compile(r"[A-Z]?[a-z]{3,}|[A-Z]{3,}")
# Ids that API traffic carries by the thousand and that are not secrets (tool-call ids keep a
# dataset's structure): OpenAI, Anthropic and common SDK prefixes.
_ID_PREFIXES = ("call_", "chatcmpl-", "msg_", "toolu_", "req_", "resp_", "run_", "thread_", "asst_", "file-", "batch_")


def secret_candidates(text: str) -> Iterator[Candidate]:
    """Private keys, then whole tokens (vendor keys, JWTs, bearer values, random), then assigned values."""
    if "-----BEGIN" in text:
        for m in _PEM.finditer(text):
            yield m.start(), m.end(), "SECRET", RANK_SECRET
    for m in _TOKEN.finditer(text):
        start, end = m.span()
        if _is_word_char(text, start - 1) or _is_word_char(text, end) or text[start - 1 : start] == ".":
            continue  # part of a longer word, a domain or a path segment
        found = _classify_token(text, start, m.group())
        if found is not None:
            yield found
    lowered = text.lower()
    if any(hint in lowered for hint in _KEYWORD_HINTS):
        yield from _assigned(text, lowered if len(lowered) == len(text) else _lower_keeping_length(text))


def _classify_token(text: str, start: int, token: str) -> Candidate | None:
    if _BEARER_BEFORE.search(text, max(0, start - 16), start):
        value = _BEARER_VALUE.match(text, start)
        return (start, value.end(), "SECRET", RANK_SECRET) if value is not None else None
    if token.startswith("eyJ"):
        jwt = _JWT.match(text, start)
        if jwt is not None:
            return start, jwt.end(), "SECRET", RANK_SECRET
    if len(token) >= 20 and token.startswith(_PREFIXES) and _PREFIXED.fullmatch(token):
        return start, start + len(token), "SECRET", RANK_SECRET
    # Images inline as data URLs are base64 too; they are payload, not credentials.
    if len(token) >= 20 and is_random_token(token) and not text.endswith("base64,", 0, start):
        return start, start + len(token), "SECRET", RANK_ENTROPY
    return None


def _is_word_char(text: str, index: int) -> bool:
    return 0 <= index < len(text) and (text[index].isalnum() or text[index] == "_")


def _lower_keeping_length(text: str) -> str:
    """`str.lower` grows a few characters ("İ" becomes two); offsets must stay those of `text`."""
    return "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)


def _assigned(text: str, lowered: str) -> Iterator[Candidate]:
    # Scanning the lowered text with a case-sensitive pattern is ten times faster than (?i).
    for m in _ASSIGNED.finditer(lowered):
        value, after = text[m.start("value") : m.end("value")], text[m.end() : m.end() + 1]
        # `api_key = os.environ[...]`, `password: Optional[str]`, `auth = b64encode(...)`: code, not a credential.
        if after not in ("(", "[") and (not _IDENTIFIER.fullmatch(value) or _HAS_DIGIT(value)):
            yield m.start("value"), m.end("value"), "SECRET", RANK_SECRET


def is_random_token(token: str) -> bool:
    """Whether a 20+ character token looks machine-generated rather than written.

    Random base62/base64 tokens mix digits with both cases, have high Shannon entropy and few runs of
    three or more letters of one case; identifiers (`getUserAccountSettings2024`, `x86_64-unknown-linux`,
    model names) are made of such runs. Measured: misses 7-9% of random 20-24 character base62 tokens
    (under 4% from 32 characters up) and flags under 1% of the long digit-bearing identifiers in a
    Python code base. Pure hex (git SHAs, digests, UUIDs) and one-case tokens (base32, order ids)
    are left alone on purpose: agent traffic is full of them, and prefixed keys are caught above.

        >>> is_random_token("q8ZtV3mK1pXwR7nB4sLd"), is_random_token("getUserAccountSettings2024")
        (True, False)
    """
    if token.startswith(_ID_PREFIXES) or _HEX_OR_UUID.fullmatch(token):
        return False
    if not (_HAS_DIGIT(token) and _HAS_LOWER(token) and _HAS_UPPER(token)):
        return False
    letters = sum(ch.isalpha() for ch in token)
    if letters == 0 or sum(map(len, _WORDLIKE_RUN.findall(token))) >= 0.7 * letters:
        return False
    return _entropy(token) >= min(0.84 * math.log2(len(token)), 4.4)


def _entropy(token: str) -> float:
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())
