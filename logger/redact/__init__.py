"""PII redaction for call records (`redactor`), and the parts it is made of.

The recognizers: `patterns` gathers the regexes with validators (e-mails; `numbers`: phones, cards,
IBANs, SSNs, IPs; `secrets`: keys, tokens, passwords), and `addresses` and `names` find street
addresses and person names, weighed with the word kinds of `lexicon`. Each yields ranked candidates
(`spans`). `walk` carries redaction through a JSON body within a depth and a time budget. Callers
import the public names from here.

    >>> from minigate.logger.redact import Redactor
    >>> Redactor().redact("mail jane@example.com")[0]
    'mail <EMAIL_1>'
"""

from __future__ import annotations

from minigate.logger.redact.redactor import (
    ENTITY_TYPES,
    PLACEHOLDER,
    Action,
    Placeholders,
    RedactionPolicy,
    Redactor,
    Span,
    find_spans,
    redact_lines,
)
from minigate.logger.redact.walk import MAX_DEPTH, REDACTION_BUDGET_S, JsonRedaction, RedactionBudget

__all__ = [
    "ENTITY_TYPES",
    "MAX_DEPTH",
    "PLACEHOLDER",
    "REDACTION_BUDGET_S",
    "Action",
    "JsonRedaction",
    "Placeholders",
    "RedactionBudget",
    "RedactionPolicy",
    "Redactor",
    "Span",
    "find_spans",
    "redact_lines",
]
