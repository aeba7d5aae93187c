"""The `logging` section of the config: where call records go."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from minigate.logger.crypto import validate_key

__all__ = ["REDACT_TYPES", "LoggingSection", "RedactAction", "RedactType"]

RedactType = Literal["email", "phone", "credit_card", "iban", "ssn", "ip", "secret", "person", "address"]
RedactAction = Literal["redact", "hash", "keep"]
# Config names -> the entity names spans carry (Presidio's vocabulary).
REDACT_TYPES: dict[RedactType, str] = {
    "email": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "credit_card": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "ssn": "US_SSN",
    "ip": "IP_ADDRESS",
    "secret": "SECRET",
    "person": "PERSON",
    "address": "STREET_ADDRESS",
}


class LoggingSection(BaseModel):
    """Where call records go and how they are protected: see docs/configuration.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="false: no call is recorded (metrics still count them)")
    store: str = Field("sqlite:///minigate.db", pattern=r"^(sqlite|postgresql)://")
    retention_days: float | None = Field(None, gt=0, description="records older than this are purged hourly")
    queue_size: int = Field(
        10_000, ge=1,
        description="records waiting for the writer (beyond it they spool); also how many more it holds while"
        " neither the store nor the spool takes any (beyond that they are dropped and counted)",
    )
    batch_size: int = Field(256, ge=1)
    flush_interval_s: float = Field(0.5, gt=0)
    seal_processes: int = Field(
        1, ge=0, le=64, description="worker processes that redact and encrypt; 0: a thread of the gateway's process"
    )
    spool: Path | None = Field(None, description="spool folder; default `<sqlite file>.spool` or ./minigate-spool")
    spool_fsync: Literal["always", "batch", "never"] = "batch"
    journal: bool = Field(
        True, description="write each record to a file in the spool folder as it is accepted, so a killed process"
        " (SIGKILL, OOM) loses none it answered; the next start stores them. Not fsynced: a power cut can lose them",
    )
    store_timeout_s: float = Field(
        5.0, gt=0, description="a store write that takes longer is given up on and its batch spooled"
    )
    shutdown_timeout_s: float = Field(
        10.0, ge=0, description="at shutdown, how long records that can be neither stored nor spooled are retried"
    )
    replay_interval_s: float = Field(2.0, gt=0, description="how often spooled records are offered to the store")
    payloads: bool = Field(True, description="false: only metadata is logged, never conversation text")
    encryption_key: SecretStr | None = Field(None, description="urlsafe base64, 32 bytes; empty: use key_file")
    previous_keys: list[SecretStr] = Field(default_factory=list, description="older keys, to read older records")
    key_file: Path | None = Field(
        None, description="keys, newest first; default `<sqlite file>.key`, created on first start (0600)"
    )
    redaction_budget_s: float = Field(
        2.0, gt=0, description="time one record's redaction may take; what is left is withheld, never stored in clear"
    )
    redact: list[RedactType] | dict[RedactType, RedactAction] = Field(default_factory=lambda: list(REDACT_TYPES))

    @field_validator("encryption_key", "previous_keys")
    @classmethod
    def _valid_key(cls, value: SecretStr | list[SecretStr] | None) -> SecretStr | list[SecretStr] | None:
        for key in value if isinstance(value, list) else [value] if value is not None else []:
            if key.get_secret_value():
                validate_key(key.get_secret_value())
        return value

    def spool_path(self) -> Path:
        if self.spool is not None:
            return self.spool
        if self.store.startswith("sqlite:///"):
            return Path(self.store.removeprefix("sqlite:///") + ".spool")
        return Path("minigate-spool")

    def actions(self) -> dict[str, RedactAction]:
        """Presidio entity name -> action, for every type; a list names the types to redact, others are kept."""
        chosen: dict[RedactType, RedactAction] = (
            dict(self.redact) if isinstance(self.redact, dict) else dict.fromkeys(self.redact, "redact")
        )
        return {entity: chosen.get(name, "keep") for name, entity in REDACT_TYPES.items()}
