"""The `server`, `auth`, `metrics` and `telemetry` sections of the config: how the gateway listens, whom it
serves and where its traces go."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["AuthSection", "KeyEntry", "KeyLimits", "Limits", "LimitsSection", "MetricsSection", "Role", "ServerSection",
           "TelemetrySection"]

Role = Literal["agent", "analyst", "admin"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    drain_timeout_s: float = Field(30.0, ge=0, description="SIGTERM waits this long for in-flight requests")
    max_response_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="a larger non-streamed upstream reply (or stream) is cut: 502"
    )
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this")
    body_timeout_s: float = Field(60.0, gt=0, description="a request's body must arrive within this: else 408")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle kept-alive connection is closed after this")
    max_connections: int = Field(
        2048, ge=1, description="connections beyond this are refused at once with 503 (protects memory)"
    )
    workers: int = Field(
        1, ge=1, description="gateway processes serving one port; above 1 a supervisor starts and restarts them"
    )


class Limits(_Section):
    """Rate limits (per rolling clock minute) and spend budgets (per UTC day and calendar month); unset: none."""

    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens (input + output, as logged) per minute")
    usd_per_day: float | None = Field(None, gt=0, description="spend per UTC day, at the call log's cost")
    usd_per_month: float | None = Field(None, gt=0, description="spend per UTC calendar month")

    @property
    def any(self) -> bool:
        return (self.rpm, self.tpm, self.usd_per_day, self.usd_per_month) != (None, None, None, None)


class KeyLimits(Limits):
    """A key's limits over all its calls, and `routes`: limits on its calls to one route (both apply)."""

    routes: dict[str, Limits] = Field(default_factory=dict)

    @property
    def any(self) -> bool:
        return super().any or any(limits.any for limits in self.routes.values())


class KeyEntry(_Section):
    name: str = Field(min_length=1)
    key: SecretStr
    role: Role
    limits: KeyLimits = KeyLimits()


class AuthSection(_Section):
    keys: list[KeyEntry] = Field(default_factory=list)
    refresh_s: float = Field(
        2.0, gt=0, le=60, description="how often keys made by `minigate keys create` are read again from the log "
        "store: a revocation holds on every replica within this"
    )


class LimitsSection(_Section):
    """Where the counters of `auth.keys[].limits` live: Redis, shared by every replica and worker, or (no
    `redis_url`) this process's memory. Changes apply at the next restart."""

    redis_url: SecretStr | None = Field(
        None, description="redis:// or rediss:// URL (a password may be in it); unset or empty: in-process counters"
    )
    fail: Literal["open", "closed"] = Field(
        "open", description="while Redis is unreachable, limited keys are served unchecked (open) or refused with 503"
    )
    timeout_s: float = Field(
        1.0, gt=0, le=10, description="one Redis round trip; beyond it Redis counts as down (generous: on a "
        "saturated event loop a healthy Redis's answer is read late, and a timeout serves a second unchecked)"
    )
    reconcile_s: float = Field(
        300.0, gt=0, description="how often spend counters are raised to what the call log holds (after a Redis "
        "restart, or spend the counters missed)"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class MetricsSection(_Section):
    require_role: Role | None = None


class TelemetrySection(_Section):
    """OpenTelemetry traces, exported over OTLP/HTTP; off until `otlp_endpoint` is set (docs/observability.md)."""

    otlp_endpoint: str | None = Field(
        None, pattern=r"^(https?://|$)", description="collector base URL (spans go to <it>/v1/traces); unset or empty: off"
    )
    sampling_ratio: float = Field(
        1.0, ge=0, le=1, description="share of new traces kept; a client's traceparent decides for its own"
    )
    service_name: str = Field("minigate", min_length=1)
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="sent with every export (collector auth)")
    timeout_s: float = Field(10.0, gt=0, description="per export request")

    @property
    def traces_url(self) -> str | None:
        """Where spans are posted, or None when tracing is off; a URL already ending in /v1/traces is kept."""
        if not self.otlp_endpoint:
            return None
        base = self.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else f"{base}/v1/traces"
