"""The `server`, `auth` and `metrics` sections of the config: how the gateway listens and whom it serves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["AuthSection", "KeyEntry", "MetricsSection", "Role", "ServerSection"]

Role = Literal["agent", "analyst", "admin"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    drain_timeout_s: float = Field(30.0, ge=0, description="SIGTERM waits this long for in-flight requests")


class KeyEntry(_Section):
    name: str = Field(min_length=1)
    key: SecretStr
    role: Role


class AuthSection(_Section):
    keys: list[KeyEntry] = Field(default_factory=list)


class MetricsSection(_Section):
    require_role: Role | None = None
