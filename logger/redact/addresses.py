"""Street addresses for `minigate.logger.redact`: a street core, then the unit and locality lines after it.

A core is one of the shapes streets are written in:

- a house number, a capitalised name and a street type: "24 Clarke Avenue", "1668 Glyn St";
- a street word first, then the name and the number: "Via Tasso 129", "ul. Słowicza 10", "29 Rue de Tanger";
- a name ending in a street word of its language, and the number: "Pohlstrasse 9", "Magrethevej 298",
  "Gesterbyntie 68", "Király u. 15.";
- a post-office or military box: "P.O. Box 242", "PSC 0413, Box 8144", "Unit 5477 Box 8244", "USNS Møller";
- "the corner of ... and ...";
- weaker, a capitalised name and a number ("28030 Edeby 55"): an address only where a cue precedes it
  ("lives at", "address:") or a unit, a postcode or the next line of an address block follows it.

The span then runs on over what belongs to the address: "Apt. 595", "Suite 282", and up to four
comma- or line-separated locality parts (a town, a state code, a postcode, a country), each of which
must look like one, so that the sentence after an address is never swallowed.

    >>> from minigate.logger.redact.lexicon import capitalised_runs
    >>> text = "Ship to 24 Clarke Avenue, Apt. 5, Springfield, IL 62704."
    >>> [text[s:e] for s, e, _, _ in address_candidates(text, capitalised_runs(text))]
    ['24 Clarke Avenue, Apt. 5, Springfield, IL 62704']

Cores are read off the capitalised runs that `lexicon.capitalised_runs` found once for the
names too: what precedes and follows a run (a house number, a number, a street word) is checked
with anchored matches, so the only whole-text scans here are for boxes and corners, and only when
"Box", "PSC", "US" or "corner" occurs at all.
"""

from __future__ import annotations

import re

from minigate.logger.redact.lexicon import is_english_word
from minigate.logger.redact.spans import RANK_ADDRESS, Candidate

__all__ = ["address_candidates"]

_UPPER = "A-ZÀ-ÖØ-Þ" + "".join(chr(c) for c in range(0x100, 0x250) if chr(c).isupper()) + "Α-ΩΆ-ΏА-Я"
_LETTER = "A-Za-zÀ-ÖØ-öø-ɏΆ-ώА-яё"
_NAME = rf"[{_UPPER}](?:[{_LETTER}'’-]*[{_LETTER}]\.?|\.)"  # a capitalised word of a town's name
_PARTICLE = r"(?:de|del|la|le|do|da|dos|das|van|von|der|den|nad|pod|sur|upon|en|am|an)"
_NAME_WORDS = rf"{_NAME}(?:[ ](?:{_PARTICLE}[ ])?{_NAME}){{0,3}}"
_NUMBER = r"\d{1,6}[A-Za-z]?(?:[/-]\d{1,4}[A-Za-z]?)?(?![\w-])"

# USPS street suffixes (Publication 28) common enough to name a street on their own, and abbreviations.
_STREET_TYPES = frozenset(
    [
        "Street", "St", "Str", "Road", "Rd", "Avenue", "Ave", "Av", "Boulevard", "Blvd", "Lane", "Ln", "Drive",
        "Dr", "Way", "Court", "Ct", "Place", "Pl", "Terrace", "Ter", "Crescent", "Cres", "Close", "Square", "Sq",
        "Parkway", "Pkwy", "Highway", "Hwy", "Circle", "Cir", "Trail", "Trl", "Turnpike", "Tpke", "Alley", "Row",
        "Walk", "Grove", "Gardens", "Mews", "Plaza", "Loop", "Bypass", "Route", "Rte", "Expressway", "Expy",
        "Freeway", "Fwy", "Pike", "Crossing", "Crossroad", "Ridge", "Heights", "Hts", "Estates", "Parade",
        "Promenade", "Quay", "Wharf", "Esplanade", "Causeway", "Junction", "Jct", "Motorway", "Streets", "Roads",
        "Squares"
    ]
)  # fmt: skip
# Street words written before the name, in the languages whose addresses put them first.
_STREET_FIRST = frozenset(
    [
        "rue", "rua", "via", "viale", "vicolo", "piazza", "piazzale", "corso", "largo", "strada", "avenida", "avda",
        "av", "avenue", "calle", "carrer", "paseo", "plaza", "praça", "travessa", "rodovia", "estrada", "alameda",
        "boulevard", "bd", "chemin", "allée", "impasse", "place", "quai", "ulica", "odos", "leoforos"
    ]
)  # fmt: skip
_STREET_FIRST_BEFORE = re.compile(
    r"(?:[Uu]l\.|[Aa]l\.|C/|rue|rua|via|calle|[Aa]vda\.|[Aa]v\.|avenue)[ ](?:[a-z]{1,4}[ ]|d['’])?\Z"
)
# Street words that end a name (German, Nordic, Dutch, Finnish, Slavic, Baltic, Turkish) ...
_STREET_SUFFIXES = (
    "strasse", "straße", "gasse", "weg", "allee", "platz", "damm", "ufer", "gade", "gate", "gata", "gatan", "vej",
    "vei", "veien", "vegen", "vägen", "väg", "stræti", "braut", "vegur", "katu", "tie", "kuja", "polku", "laan",
    "straat", "steeg", "plein", "gracht", "wei", "utca", "ulica", "ulice", "cesta", "iela", "gatvė", "sokak",
)  # fmt: skip
# ... or stand after it as a word of their own ("Villacher strasse 89", "Király u. 15.", "Luite tee 87").
_SUFFIX_AFTER = re.compile(
    r"[ ](?:u\.|utca|út|útja|tér|körút|rkp\.|tee|iela|gatve|sokak|caddesi|str\.|straße|strasse|gasse|vej)"
    rf"[ ]{_NUMBER}\.?"
)
_NUMBER_AFTER = re.compile(rf"[ ]{_NUMBER}")
_HOUSE_NUMBER_BEFORE = re.compile(r"(?:\d{1,6}[A-Za-z]?[ ]){1,2}\Z")
_BOX = re.compile(
    r"(?:[Pp]\.?[ ]?[Oo]\.?[ ]?[Bb]ox[ ]\d{1,6}|(?:PSC|psc)[ ]\d{3,5},?[ ][Bb]ox[ ]\d{1,6}"
    rf"|[Uu]nit[ ]\d{{3,5}},?[ ][Bb]ox[ ]\d{{1,6}}|US[NC]?[SVG]C?[ ]{_NAME})\b"
)
_CORNER = re.compile(r"corner[ ]of[ ][^\n.?!]{3,60}?[ ]and[ ][\w'’-]+(?:[ ][\w'’-]+){0,3}?(?=[.?!,]|\s*$|[ ]St\.)")
# Lower-cased words just before a weak core that make it an address.
_CUES = (
    "address", "address is", "address:", "addresses", "lives at", "live at", "lived at", "lives on", "live on",
    "lived on", "lives in", "live in", "lived in", "located at", "is at", "sent to", "send to", "one to", "deliver to",
    "delivered to", "ship to", "shipped to", "moved to", "meet me at", "meet you at", "arrived at", "return to",
    "off at", "enter on", "is on", "corner of", "following?", "following:",
)  # fmt: skip
_UNIT_BEFORE = re.compile(r"(?i)(?:apt\.?|apartment|suite|ste\.?|unit|flat)[ ]?\d{1,5}[A-Za-z]?[ ,]*\Z")
_UNIT = re.compile(
    r"(?i)[ ,]*(?:\n[ >?]*)?(?:apt\.?|apartment|suite|ste\.?|unit|flat|floor|fl\.|room|rm\.?|#)[ ]?\d{1,5}[A-Za-z]?\b"
)
_LOCALITY_GAP = re.compile(r",[ ]*|[ ]*(?:\n[ \t>?]*){1,2}(?:,[ ]*)?|[ ]")
_POSTCODE = r"(?:\d{4,6}(?:-\d{3,4})?|[A-Z]\d[A-Z][ ]?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?[ ]\d[A-Z]{2}|\d{2}-\d{3})"
# A locality part ends where its line or sentence goes on; a postcode is never the start of a phone number.
_LOCALITY = re.compile(
    rf"(?:(?:{_NAME_WORDS}|[A-Z]{{2,3}})(?:[ ](?P<postcode>{_POSTCODE}))?"
    rf"|(?P<bare>{_POSTCODE})(?:[ ]{_NAME_WORDS})?|nan)"
    r"(?![\w@]|[ ]?[\d(])"
)
_APO_LINE = re.compile(r"(?i)[ ,]*\n?[ >?]*(?:apo|fpo|dpo)[ ](?:aa|ae|ap)[ ]\d{5}\b")

_HAS_DIGIT = re.compile(r"\d").search
_Core = tuple[int, int, bool]  # start, end, whether it is an address on its own


def address_candidates(text: str, runs: list[tuple[int, int]]) -> list[Candidate]:
    """Street-address spans around `runs` (`capitalised_runs(text)`) and boxes, with their units and localities."""
    if not _HAS_DIGIT(text):
        return []
    cores = [core for start, end in runs if (core := _street(text, start, end)) is not None]
    if "ox " in text or "PSC" in text or "US" in text:
        cores += [(m.start(), m.end(), True) for m in _BOX.finditer(text) if not _is_inside_word(text, m.start())]
    if "corner of" in text:
        cores += [(m.start(), m.end(), True) for m in _CORNER.finditer(text)]
    found: list[Candidate] = []
    done = -1
    for start, end, is_strong in sorted(cores, key=lambda c: (c[0], -c[1])):
        if start < done:
            continue
        extended, is_confirmed = _extend(text, end)
        if is_strong or is_confirmed or _has_cue(text, start):
            unit = _UNIT_BEFORE.search(text, max(done, start - 16), start)  # "Apt. 675 62314 Mellemvej 32"
            found.append((start if unit is None else unit.start(), extended, "STREET_ADDRESS", RANK_ADDRESS))
            done = extended
    return found


def _street(text: str, start: int, end: int) -> _Core | None:
    """The street core around a capitalised run, if the run is the name of a street."""
    has_house_number = start >= 2 and text[start - 2].isdigit() and text[start - 1] == " "
    follower = text[end + 1 : end + 2] if text[end : end + 1] == " " else ""
    if not (has_house_number or follower.isdigit() or follower.islower()):
        return None  # most runs: neither a house number before nor a number after
    if has_house_number:
        house = _HOUSE_NUMBER_BEFORE.search(text, max(0, start - 14), start)
        numbered = _numbered(text, start, end, house.start() if house else start)
        if numbered is not None:
            return numbered
    after = _NUMBER_AFTER.match(text, end) if follower.isdigit() else _SUFFIX_AFTER.match(text, end)
    if after is None:
        return None
    first = _STREET_FIRST_BEFORE.search(text, max(0, start - 12), start)
    is_strong = first is not None or after.group()[1].isalpha() or _has_street_word(text[start:end])
    begin = first.start() if first is not None else start
    if text[begin - 2 : begin - 1].isdigit():
        house = _HOUSE_NUMBER_BEFORE.search(text, max(0, begin - 14), begin)
        begin = house.start() if house is not None else begin
    else:
        house = None
    if is_strong or house is not None or _has_cue(text, begin):
        return begin, after.end(), is_strong
    return None


def _numbered(text: str, start: int, end: int, house: int) -> _Core | None:
    """ "24 Clarke Avenue", "17031 2202 Rissik St", "29 Rue de Tanger": a house number, then a street."""
    words = text[start:end].split(" ")
    if words[0].lower() in _STREET_FIRST and len(words) > 1:  # and the number after it: "31195 Piazza Rezzonico 35"
        number = _NUMBER_AFTER.match(text, end)
        return house, end if number is None else number.end(), True
    for i, word in enumerate(words[1:], start=1):
        if word in _STREET_TYPES:
            stop = start + len(" ".join(words[: i + 1]))
            return house, stop + (len(word) <= 4 and text[stop : stop + 1] == "."), True  # "St.", not "Avenue."
    return None


def _has_street_word(name: str) -> bool:
    words = name.split(" ")
    last = words[-1].lower()
    return words[0].lower() in _STREET_FIRST or (last.endswith(_STREET_SUFFIXES) and not is_english_word(last))


def _is_inside_word(text: str, start: int) -> bool:
    return start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_.,/-")


def _has_cue(text: str, start: int) -> bool:
    return text[max(0, start - 24) : start].lower().rstrip(" \n\t,").endswith(_CUES)


def _extend(text: str, end: int) -> tuple[int, bool]:
    """The end of the address whose street part ends at `end`, and whether a unit, postcode or box line was there."""
    is_confirmed = False
    while (unit := _UNIT.match(text, end)) is not None:
        end, is_confirmed = unit.end(), True
    apo = _APO_LINE.match(text, end)
    if apo is not None:
        return apo.end(), True
    for _ in range(4):
        gap = _LOCALITY_GAP.match(text, end)
        part = _LOCALITY.match(text, gap.end()) if gap is not None else None
        if gap is None or part is None or (gap.group() == " " and not part.group()[:1].isdigit()):
            break
        end = part.end()
        is_confirmed = is_confirmed or part.lastgroup is not None or "\n" in gap.group()  # a postcode, a new line
    return end, is_confirmed
