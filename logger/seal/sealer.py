"""Turning a call record's raw material into what may be stored: tokens, an anonymous client id, and
payloads that are redacted first and encrypted second. Runs in the call log's sealing worker process
(`minigate.logger.seal.pool`), or a thread of the gateway's with `logging.seal_processes: 0`.

Redaction before encryption means even the holder of the key reads placeholders (`<EMAIL_1>`), never
the values; one placeholder state per record keeps a value's placeholder the same across the request
and the reply, so datasets keep their structure.

Sealing is isolated per record: nothing a record holds can make `Sealer.seal` raise. Redaction is
iterative and bounded (`minigate.logger.redact.walk`), and takes at most `redaction_budget_s` (wall time)
per record, after which the rest of the text is withheld; a payload that still cannot be sealed is
stored as an encrypted `{"minigate_unsealable": "<error type>: <reason>"}` beside the record's
metadata and tokens, and logged at ERROR with the request id (never with payload text).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

import orjson

from minigate.logger.crypto import PayloadCipher
from minigate.logger.identity import anonymise
from minigate.logger.keys import LogKeys, load_keys
from minigate.logger.payloads import Reply, reply_from_body, reply_from_stream, request_payload
from minigate.logger.records import CallRecord
from minigate.logger.redact import REDACTION_BUDGET_S, Action, Placeholders, RedactionBudget, RedactionPolicy, Redactor
from minigate.logger.settings import LoggingSection

__all__ = ["Sealer", "SealerRecipe"]

log = logging.getLogger("minigate.logger")

_REASON_CHARS = 120  # of an unsealable payload's error message, redacted, in its marker


@dataclass(frozen=True, slots=True)
class SealerRecipe:
    """A sealer's makings, in plain values a worker process can be sent (ciphers don't pickle)."""

    actions: dict[str, Action]
    keys: LogKeys | None
    redaction_budget_s: float = REDACTION_BUDGET_S


class Sealer:
    """Seals records in place.

    Without a cipher no payload is stored at all: the log never holds conversation text in the clear.
    """

    def __init__(self, redactor: Redactor, cipher: PayloadCipher | None, pepper: bytes | None,
                 recipe: SealerRecipe | None = None, *, redaction_budget_s: float = REDACTION_BUDGET_S) -> None:
        self.redactor = redactor
        self.cipher = cipher
        self.pepper = pepper
        self.recipe = recipe  # what `from_recipe` needs to build the same sealer in a worker process
        self.redaction_budget_s = redaction_budget_s  # per record: see `minigate.logger.redact.walk`

    @classmethod
    def from_settings(cls, settings: LoggingSection, *, create_key: bool = False) -> Sealer:
        """One secret configures all: the log key encrypts, and keys the client-id and hash peppers.

        `create_key`: the gateway may create the embedded default's key file; reading commands never do.
        """
        return cls.from_recipe(SealerRecipe(settings.actions(), load_keys(settings, create=create_key),
                                            settings.redaction_budget_s))

    @classmethod
    def from_recipe(cls, recipe: SealerRecipe) -> Sealer:
        keys = recipe.keys
        if keys is None:
            # No payload is stored, so hashing has nothing to keep stable: any key will do.
            policy = RedactionPolicy(recipe.actions, hash_key=secrets.token_bytes(32))
            return cls(Redactor(policy), None, None, recipe, redaction_budget_s=recipe.redaction_budget_s)
        pepper = hmac.new(keys.current.strip().encode(), b"minigate client identity", hashlib.sha256).digest()
        redactor = Redactor(RedactionPolicy(recipe.actions, hash_key=pepper))
        return cls(redactor, keys.cipher(), pepper, recipe, redaction_budget_s=recipe.redaction_budget_s)

    @staticmethod
    def measure(record: CallRecord) -> Reply | None:
        """Fill tokens and cost from the reply's usage: all that a log which stores nothing still
        works out, for the metrics. Where the reply has no usage (a stream its client left), the
        gateway's estimates stand. Returns the parsed reply (None when there is none)."""
        reply = None
        if record.chunks is not None:
            reply = reply_from_stream(record.chunks)
        elif record.reply is not None:
            reply = reply_from_body(record.reply)
        if reply is not None:
            input_tokens, output_tokens = reply.tokens
            record.input_tokens = record.input_tokens if input_tokens is None else input_tokens
            record.output_tokens = record.output_tokens if output_tokens is None else output_tokens
        if record.input_tokens is not None and record.output_tokens is not None:
            if record.rate is not None:
                record.cost_usd = record.rate.cost(record.input_tokens, record.output_tokens)
            if record.counterfactual_rate is not None:
                output = record.counterfactual_output_tokens
                record.counterfactual_cost_usd = record.counterfactual_rate.cost(
                    record.input_tokens, record.output_tokens if output is None else output)
        _price_waste(record)
        return reply

    def seal(self, record: CallRecord) -> None:
        """Fill the record's stored fields and drop its raw material. Never raises for its content."""
        try:
            if self.pepper is not None:
                record.client_id = anonymise(self.pepper, record.key_name, record.user)
            reply = self.measure(record)
            if self.cipher is not None:
                self._seal_payloads(record, self.cipher, reply)
        except Exception as exc:  # any defect in one record's content: it must never stop the log
            log.error("call log: request %s: payload cannot be sealed (%s); storing its metadata and an "
                      "unsealable-payload marker", record.request_id, type(exc).__name__)
            self._seal_unsealable(record, exc)
        record.request_body = record.reply = record.chunks = record.rate = record.counterfactual_rate = None
        record.user = record.counterfactual_output_tokens = record.wasted_rate = None

    def _seal_payloads(self, record: CallRecord, cipher: PayloadCipher, reply: Reply | None) -> None:
        state, budget = Placeholders(), RedactionBudget(self.redaction_budget_s)
        aad = record.request_id.encode()
        if record.request_body is not None:
            request = self.redactor.redact_json(request_payload(record.request_body), state, budget)
            record.request_payload = cipher.encrypt(orjson.dumps(request), aad)
        if reply is not None:
            response = self.redactor.redact_json(reply.payload(), state, budget)
            record.response_payload = cipher.encrypt(orjson.dumps(response), aad)
        if record.request_payload is not None or record.response_payload is not None:
            record.key_id = cipher.key_id
        if budget.withheld_bytes:
            log.warning("call log: request %s: redaction used its whole budget (%g s); %d bytes of payload "
                        "text withheld", record.request_id, budget.seconds, budget.withheld_bytes)

    def _seal_unsealable(self, record: CallRecord, exc: Exception) -> None:
        """Payloads become one encrypted marker naming the error; the message is cut short and redacted,
        since an exception may quote the payload."""
        record.request_payload = record.response_payload = record.key_id = None
        if self.cipher is None:
            return
        reason = self.redactor.redact(str(exc)[:_REASON_CHARS])[0]
        marker = {"minigate_unsealable": f"{type(exc).__name__}: {reason}"}
        record.request_payload = self.cipher.encrypt(orjson.dumps(marker), record.request_id.encode())
        record.key_id = self.cipher.key_id


def _price_waste(record: CallRecord) -> None:
    """An escalated call's cost includes the miniature reply it discarded: its tokens at the miniature's
    price. Its prompt, when the miniature's usage didn't say, is the served call's: the same messages."""
    if record.wasted_output_tokens is None:
        return
    if record.wasted_input_tokens is None:
        record.wasted_input_tokens = record.input_tokens
    if record.wasted_rate is None:
        return
    record.wasted_cost_usd = record.wasted_rate.cost(record.wasted_input_tokens or 0, record.wasted_output_tokens)
    record.cost_usd = (record.cost_usd or 0.0) + record.wasted_cost_usd
