"""What every recognizer of `minigate.logger.redact` yields: a candidate span and the rank that settles overlaps.

A candidate is `(start, end, type, rank)`. Where candidates overlap, the lower rank wins, then the
longer span (see `find_spans` in `redactor`). The ranks are listed here together, since their order
is the one decision the recognizers share:

- explicit credentials first: a password may be all digits;
- then the checksummed number types, and e-mails;
- phone numbers, the looser grammar, tied with street addresses: of the two, the longer span wins,
  so a house number that looks like a phone number stays in its address ("17031 2202 Rissik St");
- the entropy guess, which should only claim what nothing else did;
- person names, which take only what is left.

    >>> RANK_SECRET < RANK_CARD < RANK_PHONE == RANK_ADDRESS < RANK_ENTROPY < RANK_PERSON
    True
"""

from __future__ import annotations

__all__ = [
    "RANK_ADDRESS", "RANK_CARD", "RANK_EMAIL", "RANK_ENTROPY", "RANK_IBAN", "RANK_IP", "RANK_PERSON", "RANK_PHONE",
    "RANK_SECRET", "RANK_SSN", "Candidate",
]  # fmt: skip

Candidate = tuple[int, int, str, int]

RANK_SECRET, RANK_EMAIL, RANK_IBAN, RANK_CARD, RANK_SSN, RANK_IP, RANK_PHONE, RANK_ENTROPY = range(8)
RANK_ADDRESS = RANK_PHONE
RANK_PERSON = 9
