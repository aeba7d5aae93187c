"""Number families for `minigate.logger.redact`: credit cards, IBANs, US SSNs, IP addresses, phone numbers.

Every family pairs a deliberately loose regex with a check that only the real thing passes, as
Presidio's pattern recognizers do: credit cards must pass Luhn, IBANs mod-97 and their country's
length, SSNs the area/group/serial rules, IP addresses the `ipaddress` parser. Phone numbers have no
checksum; they are held to phone-shaped groupings and refused when they look like dates, years,
prices or parts of identifiers.

Every number-shaped entity lies in a chunk of digits and the characters numbers are written with
(`_CHUNK`), so the text is scanned whole once, for chunks, and the families run only in a small
window around each; IPv6 addresses, which need no digit, are anchored on '::' instead. Inside a
chunk, each family runs only if the chunk's digit count and separators could hold its shape (see
`_in_chunk`): most chunks in prose are prices, dates and ids that no family could match, and the
per-family Python calls, not the regex scans, are what a small window costs. Nothing here does IO or
keeps state.

    >>> text = "call 415-555-0100, card 4111 1111 1111 1111"
    >>> [(kind, text[start:end]) for start, end, kind, _ in number_candidates(text)]
    [('PHONE_NUMBER', '415-555-0100'), ('CREDIT_CARD', '4111 1111 1111 1111')]
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from minigate.logger.redact.spans import RANK_CARD, RANK_IBAN, RANK_IP, RANK_PHONE, RANK_SSN, Candidate

__all__ = ["is_luhn_valid", "is_valid_iban", "is_valid_ssn", "number_candidates"]

_HAS_DIGIT = re.compile(r"\d").search

# A run of digits and the characters numbers are written with: every number-shaped entity lies in
# one (the IBAN's check digits too), so the number patterns only ever run inside these chunks.
_CHUNK = re.compile(r"\d[\d().+x/ -]*")  # a leading digit lets `re` skip ahead fast; "+(" are added back
_CHUNK_MARGIN = 12  # lookaheads and a phone extension ("x204", "ext. 204") reach past the chunk
# A chunk is digits (any script's) and these characters only, so deleting them leaves its digits.
_CHUNK_SEPARATORS_DELETED = str.maketrans("", "", "().+x/ -")

_IBAN = re.compile(r"(?<!\w)[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?(?!\w)")
# The SWIFT IBAN registry's lengths: with mod-97 this makes a random hit practically impossible.
_IBAN_LENGTHS = {entry[:2]: int(entry[2:]) for entry in (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 DK18 DO28 "
    "EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HN28 HR21 HU28 IE22 IL23 IQ23 IS26 "
    "IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 "
    "NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 "
    "SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30"
).split()}

# Bare runs of 12-19 digits, or the groupings card issuers print (4-4-4-4[-3], Amex 4-6-5, Diners 4-6-4).
_CARD = re.compile(
    r"(?<![\w.+/-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5}|\d{12,19})(?!\w|[.,-]\d)"
)

# Only delimited SSNs: a bare nine-digit run is far more often an id than an SSN.
_SSN = re.compile(r"(?<![\w.+-])\d{3}([- .])\d{2}\1\d{4}(?!\w|[.,-]\d)")
_SSN_SAMPLES = ("078051120", "123456789", "219099999", "457555462")
_SSN_SHAPE = re.compile(r"\d{3}([- .])\d{2}\1\d{4}").search  # without the lookarounds: a cheap first test

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6_ANCHOR = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:.])")

# Possessive digit runs (Python 3.11) keep the group splits deterministic, so a long digit string
# cannot make the engine try every way of cutting it into groups.
_PHONE_INTL = re.compile(
    r"(?<![\w+])(?:\+|00(?=\d{1,3}[ .-]))[1-9]\d{0,2}(?:[ .-]?\(0\))?(?:[ .-]?\(?\d{1,8}+\)?){1,6}"
    r"(?:[ ]?(?:x|ext\.?)[ ]?\d{1,5})?(?!\w|[ .,:-]\d)"
)
_PHONE_NATIONAL = re.compile(
    r"(?<![\w+#$€£¥〒/.-])(?<!\d:)(?:1[ .-](?=\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}))?"  # NANP trunk "1-" before 3-3-4
    r"(?:\(\d{1,5}\)[ .-]?|\d{2,5}+[ .-])(?:\d{2,8}+[ .-]){0,4}\d{2,8}+"  # area code or first group, more groups
    r"(?:[ ]?(?:x|ext\.?)[ ]?\d{1,5})?(?!\w|[ .,:-]\d)"
)
# A bare run of digits is a phone number only next to a word that says so ("Fax: 9498777106").
_PHONE_BARE = re.compile(r"(?<![\w+#$€£¥〒/.-])(?<!\d:)\d{10,11}(?!\w|[.,:-]\d)")
_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:phone|telephone|t[eé]l|t[eé]l[eé]phone|telefon[o]?|mobile?|cell|cellphone|fax|call(?:ed|ing)?|desk|office"
    r"|whatsapp|sms|dial|contact|reach|ring|hotline|landline|voicemail|answering)\b"
)
# Numbers right after these words are postcodes, unit numbers or document ids, whatever their shape.
_NOT_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:zip|postal|postcode|post code|suite|apt|apartment|unit|box|licen[cs]e|passport|invoice|order)\b"
)
_WORD_AFTER = re.compile(r"[ \t]+(?P<word>[^\W\d_]+)")
_EXTENSION = re.compile(r"\s?(?:x|ext\.?)\s?\d+$")
_DIGIT_RUN = re.compile(r"\d+")
_TEN_DIGITS = re.compile(r"\d{10}").search  # the shortest bare phone number
# Groups of four, each a year of this century or the last, between runs of separators.
_YEARS = re.compile(r"(?:19|20)[^ .()-]{2}(?:[ .()-]+(?:19|20)[^ .()-]{2})*")
_SSN_OR_POSTCODE = re.compile(r"\d{3}-\d{2}-\d{4}|\d{5}-\d{3,4}")
_DIGITS_AND_DOTS = re.compile(r"[\d.]+")
_PHONE_PUNCTUATION = frozenset(" .()-")
_DATE_START = re.compile(r"(\d{4})[-./](\d{1,2})[-./](\d{1,2})|(\d{1,2})[-./](\d{1,2})[-./](\d{4})")
_CURRENCY_BEFORE = re.compile(r"(?:[$€£¥]|\b(?:USD|EUR|GBP|CHF|JPY))\s?$")
_CURRENCY_AFTER = re.compile(r"^\s?(?:[$€£¥%]|(?:USD|EUR|GBP|CHF|JPY|dollars?|euros?)\b)")


def number_candidates(text: str) -> list[Candidate]:
    """Every validated card, IBAN, SSN, IP address and phone number, overlapping ones included."""
    found = _chunked(text) if _HAS_DIGIT(text) else []
    if text.count(":") >= 2:
        found += _ipv6s(text)
    return found


def _chunked(text: str) -> list[Candidate]:
    """The families found in each chunk; an IBAN's country code, two letters before its chunk, is looked at too."""
    found: list[Candidate] = []
    for chunk in _CHUNK.finditer(text):
        start, end = chunk.span()
        while start > 0 and text[start - 1] in "+(":
            start -= 1
        if start >= 2 and text[start - 2 : start].isalpha():  # "GB82 WEST ...", "DE89370400..."
            found += _ibans(text, start - 2)
        if end - start >= 7:  # shorter chunks hold no card, SSN, IP or phone number
            found += _in_chunk(text, start, end)
    return found


def _in_chunk(text: str, start: int, end: int) -> list[Candidate]:
    """The number families' matches that start in the chunk `text[start:end]`.

    Every character a card, SSN, IPv4 or phone number (bar a phone's "ext.") is written with belongs
    to `_CHUNK`, and a chunk is a maximal run of them, so a match starting in the chunk keeps its
    digits and dots inside it: a family that needs more digits or dots than the chunk has cannot
    match, and is skipped rather than scanned and validated for nothing.
    """
    chunk = text[start:end]
    digits = len(chunk.translate(_CHUNK_SEPARATORS_DELETED))
    window_end = min(len(text), end + _CHUNK_MARGIN)
    found: list[Candidate] = []
    if digits >= 12:  # the shortest card is a bare run of 12
        found += _cards(text, start, window_end)
    if digits >= 9 and _SSN_SHAPE(chunk):
        found += _ssns(text, start, window_end)
    if digits >= 7:  # `_is_phone`'s minimum
        found += _phones(text, start, window_end, chunk, digits)
    if chunk.count(".") >= 3:
        found += _ipv4s(text, start, window_end)
    # A match starting in the margin is the next chunk's, and may be cut short by the window's end.
    return [candidate for candidate in found if candidate[0] < end]


def _ibans(text: str, start: int) -> list[Candidate]:
    m = _IBAN.match(text, start)
    if m is not None and is_valid_iban(m.group()):
        return [(m.start(), m.end(), "IBAN_CODE", RANK_IBAN)]
    return []


def is_valid_iban(value: str) -> bool:
    """Country length and the ISO 7064 mod-97 check (the rearranged number must leave remainder 1)."""
    compact = value.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    if rearranged.isascii() and rearranged.isalnum():  # what `_IBAN` matches: one translate, not a loop
        return int(rearranged.translate(_BASE36_LETTERS)) % 97 == 1
    # Other digits (`int` reads "٣" as 3), or the ValueError `int` raises for what no IBAN holds.
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# Each letter's base-36 value as text ("A" -> "10"); ASCII digits stand for themselves.
_BASE36_LETTERS = str.maketrans({ch: str(int(ch, 36)) for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"})


def _cards(text: str, start: int, end: int) -> list[Candidate]:
    matches = _CARD.finditer(text, start, end)
    return [(m.start(), m.end(), "CREDIT_CARD", RANK_CARD) for m in matches if is_luhn_valid(m.group())]


def is_luhn_valid(value: str) -> bool:
    """Luhn checksum over the digits; runs of one repeated digit pass Luhn but are placeholders, not cards."""
    digits = list(map(int, filter(str.isdigit, value)))
    if len(set(digits)) == 1:
        return False
    total = sum(digits[-1::-2]) + sum(map(_LUHN_DOUBLED.__getitem__, digits[-2::-2]))
    return total % 10 == 0


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # the digit sum of twice each digit


def _ssns(text: str, start: int, end: int) -> list[Candidate]:
    matches = _SSN.finditer(text, start, end)
    return [(m.start(), m.end(), "US_SSN", RANK_SSN) for m in matches if is_valid_ssn(m.group())]


def is_valid_ssn(value: str) -> bool:
    """SSA rules: area not 000, 666 or 9xx (ITINs), group not 00, serial not 0000; no advertised samples."""
    digits = "".join(filter(str.isdigit, value))
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return len(set(digits)) > 1 and digits not in _SSN_SAMPLES


def _ipv4s(text: str, start: int, end: int) -> list[Candidate]:
    matches = _IPV4.finditer(text, start, end)
    return [(m.start(), m.end(), "IP_ADDRESS", RANK_IP) for m in matches if _parses_as_ip(m.group())]


def _ipv6s(text: str) -> Iterator[Candidate]:
    done = 0  # an address has several anchors; each window is searched once
    for anchor in _IPV6_ANCHOR.finditer(text):
        if anchor.start() < done:
            continue
        done = anchor.end()
        for m in _IPV6.finditer(text, max(0, anchor.start() - 40), anchor.end() + 45):
            if m.start() <= anchor.start() < m.end():
                done = max(done, m.end())
                if _looks_like_ipv6(m.group()) and _parses_as_ip(m.group()):
                    yield m.start(), m.end(), "IP_ADDRESS", RANK_IP


def _looks_like_ipv6(value: str) -> bool:
    """Slices (`a[1::2]`), C++/Rust paths (`be::`) and clock times share the alphabet; addresses have more groups."""
    groups = [g for g in value.split(":") if g]
    return len(groups) >= 3 or (len(groups) == 2 and max(map(len, groups)) >= 3)


def _parses_as_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _phones(text: str, window_start: int, window_end: int, chunk: str, digits: int) -> list[Candidate]:
    found: list[Candidate] = []
    for pattern in _phone_patterns(chunk, digits):
        for m in pattern.finditer(text, window_start, window_end):
            start, end = m.span()
            if _is_phone(text, start, end, pattern) and not _has_non_phone_context(text, start):
                found.append((start, end, "PHONE_NUMBER", RANK_PHONE))
    return found


def _phone_patterns(chunk: str, digits: int) -> list[re.Pattern[str]]:
    """The phone patterns whose shape the chunk can hold, with `_is_phone`'s digit minimums."""
    patterns = []
    if digits >= 8 and ("+" in chunk or "00" in chunk):  # international numbers start "+" or "00"
        patterns.append(_PHONE_INTL)
    if "(" in chunk or " " in chunk or "-" in chunk or "." in chunk:  # national numbers have 2+ groups
        patterns.append(_PHONE_NATIONAL)
    if digits >= 10 and _TEN_DIGITS(chunk):
        patterns.append(_PHONE_BARE)
    return patterns


def _is_phone(text: str, start: int, end: int, pattern: re.Pattern[str]) -> bool:
    value = text[start:end]
    if "x" in value:  # both spellings of an extension have one
        value = _EXTENSION.sub("", value)
    digits = sum(map(str.isdigit, value.removeprefix("00")))  # "00" is the dialling prefix, not the number
    if not (8 if pattern is _PHONE_INTL else 7) <= digits <= 15:
        return False
    if _CURRENCY_BEFORE.search(text, max(0, start - 5), start) or _CURRENCY_AFTER.match(text[end : end + 9]):
        return False
    if pattern is _PHONE_INTL:
        return True
    if pattern is _PHONE_BARE or _group_count(value) == 2:
        # Weak shapes: "17151 2450 Crown St" is a house number and a street number. Two groups pass
        # alone only when no word follows on the line; bare digit runs always need a phone word.
        word = _WORD_AFTER.match(text, end)
        needs_context = pattern is _PHONE_BARE or (word is not None and not _PHONE_CONTEXT.fullmatch(word["word"]))
        if needs_context and not _has_phone_context(text, start, end):
            return False
    return _is_national_phone(value)


def _is_national_phone(value: str) -> bool:
    """Refuse the number-like things that share a phone's shape: dates, years, SSN-shaped ids, decimals."""
    if _starts_with_date(value):
        return False
    if _YEARS.fullmatch(value.strip("()")):
        return False  # "2019 2020 2021"
    if _SSN_OR_POSTCODE.fullmatch(value) or len(set(value) - _PHONE_PUNCTUATION) == 1:
        return False  # SSN-shaped (an invalid SSN is not thereby a phone), ZIP+4, Brazil's CEP, "00 00 00 00"
    # Dots only alone and thrice or more ("03.93.92.16.85", "(02).4506.1231"), never "12.50 34.99".
    bare = value.replace("(", "").replace(")", "")
    return "." not in bare or (_DIGITS_AND_DOTS.fullmatch(bare) is not None and bare.count(".") >= 2)


def _starts_with_date(value: str) -> bool:
    m = _DATE_START.match(value)
    if m is None:
        return False
    if m.group(1):
        month, day = int(m.group(2)), int(m.group(3))
    else:  # day-month-year or month-day-year: either order may be meant
        month, day = sorted((int(m.group(4)), int(m.group(5))))
    return 1 <= month <= 12 and 1 <= day <= 31


def _group_count(value: str) -> int:
    return len(_DIGIT_RUN.findall(value))


def _has_phone_context(text: str, start: int, end: int) -> bool:
    return bool(_PHONE_CONTEXT.search(text, max(0, start - 30), start) or _PHONE_CONTEXT.search(text[end : end + 15]))


def _has_non_phone_context(text: str, start: int) -> bool:
    """A postcode/unit/licence word earlier on the same line, with no phone word after it."""
    window = text[max(text.rfind("\n", 0, start) + 1, start - 30) : start]
    if _NOT_PHONE_CONTEXT.search(window) is None:  # the usual case: no need to look for phone words
        return False
    negative = [m.start() for m in _NOT_PHONE_CONTEXT.finditer(window)]
    positive = [m.start() for m in _PHONE_CONTEXT.finditer(window)]
    return max(negative) > max(positive, default=-1)
