"""What the name and address recognizers share: runs of capitalised words, and what kind of word each is.

Runs are found once per text (`capitalised_runs`) and handed to both `names` and
`addresses`: a regex pass over the whole text is the expensive part, so there is one.

Word kinds come from two lexicons shipped in PyPI packages, loaded once per process on first use:

- the US Census 1990 first- and last-name frequency lists (public domain; the `names` package, MIT);
- English word frequencies, Google Books n-grams intersected with SCOWL (the `symspellpy` package, MIT;
  the n-gram counts are CC BY 3.0, SCOWL is under an MIT-like licence).

A census name is name-like when its share of the population outweighs its frequency as an English
word: "Jennifer" and "Smith" are names, "Will", "May", "Apple" and "Monday" are words, "Hope" and
"Summer" are ambiguous. A word in neither lexicon ("Zuzana", "Szöllösy", "Koskikatu") is unknown.

    >>> [kind_of(word) for word in ("Jennifer", "Smith", "Hope", "Apple", "Zuzana")] == [
    ...     FIRST_NAME, SURNAME, AMBIGUOUS, WORD, UNKNOWN]
    True
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = [
    "AMBIGUOUS",
    "CAPITALISED",
    "FIRST_NAME",
    "LOWER",
    "SURNAME",
    "UNKNOWN",
    "UPPER",
    "WORD",
    "capitalised_runs",
    "is_english_word",
    "kind_of",
    "word_kinds",
]

# Word kinds, the strongest evidence of a name first.
FIRST_NAME, SURNAME, UNKNOWN, AMBIGUOUS, WORD = range(5)

# A census name outweighs its use as a word by this factor: its share of the population (0.0327 for
# "john") over its share of English text (0.00037 for "john"): "white" gives 7, "hope" 2.5, "will" 0.07.
_NAME_OVER_WORD = 5.0
_AMBIGUOUS_OVER_WORD = 1.0
_RARE_SHARE = 2e-6  # the census prints shares under 0.0005% as 0.000
# Books mention foreign first names ("philippe", 3 million times; "beatrix", 0.6 million) about as often as
# rare words ("zebra", 2.9 million; "tweezers", 0.5 million): a word this rare may be either.
_RARE_WORD = 2.5e-6  # share of English text; below it a word that is no census name counts as unknown

# Capitalised words that are never a person: titles (context, not names), calendar words, and the
# assistant, model and tool names that an LLM gateway's traffic is full of.
_NEVER_NAMES = (
    "mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "dame", "lord", "lady", "rev", "fr", "st", "jr",
    "sr", "md", "phd", "esq", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "january", "february", "march", "april", "june", "july", "august", "september", "october", "november",
    "december", "claude", "gemini", "alexa", "siri", "cortana", "copilot", "bard", "llama", "mistral", "grok",
    "ruby", "julia", "jenkins", "ada"
)  # fmt: skip

# Latin (with its extensions), Greek and Cyrillic: the scripts that have capital letters.
_SCRIPTS = [*range(0x41, 0x250), *range(0x370, 0x530), *range(0x1E00, 0x1F00)]
UPPER = "[" + "".join(re.escape(chr(c)) for c in _SCRIPTS if chr(c).isupper()) + "]"
LOWER = "[" + "".join(re.escape(chr(c)) for c in _SCRIPTS if chr(c).islower()) + "]"
# A capitalised word: "Zoë", "O'Brien", "McDonald", "Smith-Jones".
CAPITALISED = rf"{UPPER}(?:{LOWER}+|['’](?={UPPER}))(?:{UPPER}{LOWER}+)?(?:['’-]{UPPER}?{LOWER}+)*"
_PARTICLES = (
    r"(?:van|von|de|der|den|del|della|delle|dei|di|da|do|du|dos|das|la|le|bin|ibn|al|el|ten|ter|y|e|nad|pod)"
)
_GAP = rf"[ ]{{1,2}}(?:{_PARTICLES}[ ]){{0,2}}"
# Capitalised words joined by single spaces, initials and particles: "Szabina J Gelencsér", "Rue de Tanger".
_RUN = re.compile(rf"{CAPITALISED}(?:{_GAP}(?:{UPPER}\.?{_GAP})?{CAPITALISED})*")


def capitalised_runs(text: str) -> list[tuple[int, int]]:
    """Spans of runs of capitalised words that start a word (not "Phone" in "iPhone", nor "Smith" in "x.Smith")."""
    return [
        m.span()
        for m in _RUN.finditer(text)
        if not m.start() or not (text[m.start() - 1].isalnum() or text[m.start() - 1] in "_'’@.-")
    ]


def kind_of(word: str) -> int:
    """The kind of a word; a hyphenated or apostrophised one is as name-like as its most name-like part."""
    kinds = word_kinds()
    lowered = word.lower()
    kind = kinds.get(lowered)
    if kind is None and ("-" in lowered or "'" in lowered or "’" in lowered):
        kind = min((kinds.get(part, UNKNOWN) for part in re.split(r"['’-]", lowered) if len(part) > 1), default=None)
    return UNKNOWN if kind is None else kind


def is_english_word(word: str) -> bool:
    """Whether `word` is a common English word rather than a name ("During", "Apple", "Hope")."""
    return word_kinds().get(word.lower()) in (WORD, AMBIGUOUS)


@functools.cache
def word_kinds() -> dict[str, int]:
    """Lower-cased word -> kind, for every census name and English word (about 170,000)."""
    words = _english_frequencies()
    total = sum(words.values())
    first, last = _census("dist.female.first", "dist.male.first"), _census("dist.all.last")
    kinds = {word: WORD for word, count in words.items() if count / total >= _RARE_WORD}
    for name in first.keys() | last.keys():
        share = max(first.get(name, 0.0), last.get(name, 0.0), _RARE_SHARE)
        ratio = share / (words[name] / total) if name in words else float("inf")
        if ratio >= _NAME_OVER_WORD:
            kinds[name] = FIRST_NAME if name in first else SURNAME
        elif ratio >= _AMBIGUOUS_OVER_WORD:
            kinds[name] = AMBIGUOUS
    return kinds | dict.fromkeys(_NEVER_NAMES, WORD)


def _census(*files: str) -> dict[str, float]:
    """Name -> share of the population (0..1), from the census lists that the `names` package ships."""
    shares: dict[str, float] = {}
    for file in files:
        for line in resources.files("names").joinpath(file).read_text(encoding="ascii").splitlines():
            name, percent, _cumulative, _rank = line.split()
            shares[name.lower()] = max(shares.get(name.lower(), 0.0), float(percent) / 100)
    return shares


def _english_frequencies() -> dict[str, int]:
    text = resources.files("symspellpy").joinpath("frequency_dictionary_en_82_765.txt").read_text(encoding="utf-8")
    pairs = (line.split() for line in text.splitlines())
    return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2}
