"""The `server`, `auth`, `metrics` and `telemetry` sections of the config: how the gateway listens, whom it
serves and where its traces go."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["AuthSection", "KeyEntry", "MetricsSection", "Role", "ServerSection", "TelemetrySection"]

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


class KeyEntry(_Section):
    name: str = Field(min_length=1)
    key: SecretStr
    role: Role


class AuthSection(_Section):
    keys: list[KeyEntry] = Field(default_factory=list)


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
