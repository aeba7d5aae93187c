"""Person names for `minigate.logger.redact`: capitalised runs weighed by word kinds and context.

There is no language model here. A name is a run of capitalised words (see `lexicon`) whose
words look like names and whose context says "person". Evidence adds up: a census first name
counts most, a census surname less, an unknown word ("Zuzana", "Szöllösy") little, an ambiguous one
("Hope") nothing, and a plain English word ends the run. Several name-like words in a row, a middle
initial, a title ("Dr."), a cue before ("my name is", "Dear", "said") or after ("'s", "said", "lives"),
or a speaker label at the start of a line ("Zuzana: ...") add to it; a lone capitalised word at the
start of a sentence or after "in"/"at"/"the" takes away. Runs listed together ("Kónya, Becker and
Vasquez") are names together. An organisation's or a place's head word after a run ("Russell
Investments", "Jones, Smith and Davis Orchestra") rules it out.

    >>> from minigate.logger.redact.lexicon import capitalised_runs
    >>> text = "Ask Dr. Okafor or Jennifer Hill on Monday"
    >>> [text[s:e] for s, e, _, _ in name_candidates(text, capitalised_runs(text))]
    ['Okafor', 'Jennifer Hill']

Lower-case names are believed only right after "my name is", "called", "named" or "call me".
The weights were set by hand on half of the templates of Presidio's synthetic dataset and checked
on the other half (see bench/redaction.py).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from minigate.logger.redact.lexicon import (
    AMBIGUOUS,
    FIRST_NAME,
    LOWER,
    SURNAME,
    UNKNOWN,
    WORD,
    kind_of,
    word_kinds,
)
from minigate.logger.redact.spans import RANK_PERSON, Candidate

__all__ = ["name_candidates"]


# Context, as the lower-cased word or two before a run: set look-ups, since every run asks.
_TITLES = frozenset(
    [
        "mr", "mrs", "ms", "miss", "mx", "dr", "prof", "professor", "sir", "madam", "dame", "lady", "lord", "rev",
        "uncle", "aunt", "auntie", "grandma", "grandpa", "judge", "senator", "president", "officer", "captain",
        "coach", "agent"
    ]
)  # fmt: skip
_CUES = frozenset(
    [
        "name:", "name?", "name's", "i'm", "dear", "hi", "hello", "hey", "thanks", "regards", "sincerely", "cheers",
        "signed", "attn", "cc", "ask", "tell", "told", "met", "meet", "marry", "married", "says", "said", "by",
        "with", "featuring", "starring", "wife", "husband", "son", "daughter", "brother", "sister", "mother",
        "father", "mom", "dad", "friend", "colleague", "boss", "partner", "kid", "child", "nephew", "niece",
        "cousin", "user", "customer", "client", "patient", "tenant", "author", "contact", "called", "named",
        "user:", "from:", "to:", "cc:"
    ]
)  # fmt: skip
_CUE_PAIRS = frozenset(["name is", "name was", "i am", "this is", "call me", "calls me", "thank you", "is called"])
_PLACES = frozenset(["in", "at", "near", "from", "via", "into", "across", "visit", "visited", "the"])
_CONTEXT_WORDS = _TITLES | _CUES  # "Hi", "Dear", "Dr": never part of the name they introduce
# Words right after a run that say "person": "Ann said", "Ann, who", "Ann is a", "Ann Jr"; and "Ann's".
_CUES_AFTER = frozenset(
    [
        "said", "says", "told", "asked", "wrote", "writes", "replied", "explained", "lives", "lived", "who",
        "himself", "herself", "spent", "began", "shouted", "flew", "jr", "jr.", "sr", "sr.", "md", "phd", "dds",
        "esq"
    ]
)  # fmt: skip
_CUE_PAIRS_AFTER = frozenset(
    ["was born", "and his", "and her", "is a", "is an", "is the", "is my", "is our", "is very", "is so", "was a",
     "was an", "was the", "was my", "was very", "was so", "has been", "had been", "will be"]
)  # fmt: skip
# Capitalised head words that make the run before them an organisation or a place ("Russell Investments").
_ORG_AFTER = re.compile(
    r"(?:,?[ ]+|[ ]*&[ ]*)(?:Inc|LLC|Ltd|Corp|Co|Company|Group|GmbH|AG|SA|PLC|LLP|Investments|Partners|Associates"
    r"|Brothers|Bros|Holdings|Capital|Consulting|Solutions|Technologies|Systems|Labs|Insurance|Agency|Studios?|Media"
    r"|Records|Press|Publishing|Motors|Airlines|Ventures|Enterprises|Industries|International|Trust|Fund|Orchestra"
    r"|Band|University|College|School|Hospital|Clinic|Foundation|Institute|Bank|Street|St|Avenue|Ave|Road|Rd|Lane"
    r"|Park|County|City|Square|Hall|Center|Centre|Museum|Library|Stadium|Airport|Station|Bridge|River|Lake"
    r"|Island|Valley|Beach)\b"
)
_LIST_GAP = re.compile(r",[ ]|,?[ ](?:and|or|&)[ ]|[ ]/[ ]")

_LOWER_CUE = re.compile(r"(?i)\b(?:name(?:[ ]is|:)|called|named|call[ ]me)[ ]+")
_LOWER_WORD = re.compile(rf"{LOWER}+(?:['’-]{LOWER}+)*")

# Evidence weights: a run is a person when its words and context add up to `_THRESHOLD`.
_WORD_EVIDENCE = {FIRST_NAME: 2.0, SURNAME: 1.0, UNKNOWN: 0.5, AMBIGUOUS: 0.0}
_SEVERAL_WORDS = 1.0  # two or three name-like words in a row are rarely anything else
_FIRST_THEN_NAME = 1.0  # "Jennifer Mauer" is surer than "Steffen Mauer"
_WITH_INITIAL = 1.0  # "Mohmad R. Vizirov"
_TITLE, _CUE, _AFTER, _SPEAKER = 4.0, 2.0, 1.5, 2.0
_LONE_AT_SENTENCE_START = -0.5  # a capitalised word there may just be capitalised (a first name is one anyway)
_PLACE = -1.5
_THRESHOLD = 2.0


class _Run(NamedTuple):
    start: int
    end: int
    kinds: tuple[int, ...]  # one per word, initials left out
    has_initial: bool


def name_candidates(text: str, runs: list[tuple[int, int]]) -> list[Candidate]:
    """Person-name spans among `runs` (`capitalised_runs(text)`), and lower-case names after a cue."""
    found = _lowercase_names(text) if " " in text and ("ame" in text or "all" in text) else []  # "name", "called"
    named = _name_like(text, runs)
    if not named:
        return found
    accepted = [_score(text, run) >= _THRESHOLD for run in named]
    _accept_lists(text, named, accepted)
    return found + [(r.start, r.end, "PERSON", RANK_PERSON) for r, ok in zip(named, accepted, strict=True) if ok]


def _name_like(text: str, runs: list[tuple[int, int]]) -> list[_Run]:
    """The runs' stretches of words that are not plain English ("Dear John Smith" -> "John Smith")."""
    kinds = word_kinds()
    named: list[_Run] = []
    for start, end in runs:
        run = text[start:end]
        if " " in run:
            named += _split(run, start, kinds)
        elif (kind := kinds.get(run.lower(), UNKNOWN)) != WORD and run.lower() not in _CONTEXT_WORDS:
            named.append(_Run(start, end, (kind,), False))
    return named


def _split(run: str, offset: int, kinds: dict[str, int]) -> list[_Run]:
    """A run's words one by one (str.split: no regex): initials join, English words split, particles pass."""
    named: list[_Run] = []
    words: list[int] = []
    start = end = position = offset
    has_initial = after_particle = False
    for word in run.split(" "):
        at, position = position, position + len(word) + 1
        if not word or word[0].islower():
            after_particle = bool(word) and bool(words)  # "ten" in "Willemine ten Pas"
            continue
        if len(word) == 1 or (len(word) == 2 and word[1] == "."):
            has_initial = has_initial or bool(words)
            continue
        lowered = word.lower()
        kind = WORD if lowered in _CONTEXT_WORDS else kinds.get(lowered, -1)
        kind = kind_of(word) if kind < 0 else kind
        if kind == WORD and after_particle:
            kind = AMBIGUOUS  # after a particle a word is a surname: "Willemine ten Pas", "Hugo de Groot"
        after_particle = False
        if kind == WORD:
            if words:
                named.append(_Run(start, end, tuple(words), has_initial))
            words, has_initial = [], False
            continue
        if not words:
            start = at
        words.append(kind)
        end = at + len(word)
    if words:
        named.append(_Run(start, end, tuple(words), has_initial))
    return named


def _score(text: str, run: _Run) -> float:
    words = len(run.kinds)
    if words > 4 or _is_org(text, run.end):
        return 0.0
    score = sum(_WORD_EVIDENCE[k] for k in run.kinds) + (_WITH_INITIAL if run.has_initial else 0.0)
    if words > 1:
        score += _SEVERAL_WORDS + (_FIRST_THEN_NAME if run.kinds[0] == FIRST_NAME else 0.0)
    score += _context_before(text, run.start) + _context_after(text, run.end)
    if words <= 3 and text.startswith(":", run.end) and _starts_line(text, run.start):
        score += _SPEAKER
    elif words == 1 and run.kinds[0] != FIRST_NAME and _starts_sentence(text, run.start):
        score += _LONE_AT_SENTENCE_START
    return score


def _context_before(text: str, start: int) -> float:
    before = text[max(0, start - 24) : start]
    if not before.endswith(" "):
        return 0.0
    words = before.lower().split()[-2:]
    if not words:
        return 0.0
    last = words[-1]
    if last.rstrip(".") in _TITLES:
        return _TITLE
    if last in _CUES or last.rstrip(",:") in _CUES or " ".join(words) in _CUE_PAIRS:
        return _CUE
    return _PLACE if last in _PLACES else 0.0


def _context_after(text: str, end: int) -> float:
    after = text[end : end + 16]
    if after.startswith(("'s", "’s")):
        return _AFTER
    words = after.lower().replace(",", " ").split()[:2]
    if words and (words[0] in _CUES_AFTER or " ".join(words) in _CUE_PAIRS_AFTER):
        return _AFTER
    return 0.0


def _is_org(text: str, end: int) -> bool:
    """Whether a head word such as "Inc" or "Orchestra" follows (checked cheaply before the regex)."""
    is_capital_next = text[end + 1 : end + 2].isupper() or text[end + 2 : end + 3].isupper()
    return is_capital_next and _ORG_AFTER.match(text, end) is not None


def _starts_line(text: str, start: int) -> bool:
    return not text[text.rfind("\n", 0, start) + 1 : start].strip(" >?\t")


def _starts_sentence(text: str, start: int) -> bool:
    before = text[max(0, start - 3) : start].rstrip(" \"'(>")
    return not before or before[-1] in ".!?:\n"


def _accept_lists(text: str, runs: list[_Run], accepted: list[bool]) -> None:
    """Runs listed together are all names when one of them is, or when together they score."""
    i = 0
    while i < len(runs):
        j = i
        while j + 1 < len(runs) and _LIST_GAP.fullmatch(text, runs[j].end, runs[j + 1].start):
            j += 1
        members = range(i, j + 1)
        if j > i and not any(AMBIGUOUS in runs[k].kinds for k in members) and not _is_org(text, runs[j].end):
            evidence = sum(_WORD_EVIDENCE[kind] for k in members for kind in runs[k].kinds)
            if evidence >= _THRESHOLD or any(accepted[k] for k in members):
                for k in members:
                    accepted[k] = True
        i = j + 1


def _lowercase_names(text: str) -> list[Candidate]:
    """Names typed in lower case, after a strong cue: "my name is lena andersson", "call me rubija"."""
    found: list[Candidate] = []
    kinds = word_kinds()
    for cue in _LOWER_CUE.finditer(text):
        start = end = cue.end()
        words = 0
        for m in _LOWER_WORD.finditer(text, start, start + 60):
            if m.start() != end + (1 if words else 0) or words == 3 or len(m.group()) < 2:
                break
            if kinds.get(m.group(), UNKNOWN) not in (FIRST_NAME, SURNAME, UNKNOWN):
                break
            words, end = words + 1, m.end()
        if words:
            found.append((start, end, "PERSON", RANK_PERSON))
    return found
