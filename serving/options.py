"""What every `UpstreamClient` kind takes: one `ClientOptions`, built from an upstream's settings here.

The kinds share where an upstream lives and how it is called (base URLs, timeouts, key, headers,
retries, breaker, pool limits); only their own few fields (Azure's `api_version`, Anthropic's
`anthropic_version`, vLLM's adapters) are arguments of their clients. Gathering the shared ones in
one frozen value means a new one is added in two places (here and where `UpstreamClient` reads it),
not in every subclass's signature and every call that builds one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from minigate.serving.settings import AnthropicUpstream, Breaker, OpenAIUpstream, Retry, Timeouts

__all__ = ["ClientOptions"]


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """Where one upstream lives and how to call it.

    `api_key` is sent as the kind's API wants it (OpenAI: a bearer token, Azure: `api-key`, Anthropic:
    `x-api-key`); `replicas` are base URLs of the same server, `base_url` alone when empty.

    >>> spec = OpenAIUpstream(kind="vllm", base_urls=["http://a:8000/v1", "http://b:8000/v1"], retry={})
    >>> options = ClientOptions.of("vllm-a", spec)
    >>> options.base_url, options.replicas, options.retry
    ('http://a:8000/v1', ('http://a:8000/v1', 'http://b:8000/v1'), Retry(attempts=2, max_wait_s=2.0))
    >>> ClientOptions(name="local", base_url="http://127.0.0.1:8080/v1").max_connections
    256
    """

    name: str
    base_url: str
    timeouts: Timeouts = Timeouts()
    api_key: str | None = field(default=None, repr=False)  # a secret: never in logs or tracebacks
    headers: Mapping[str, str] = field(default_factory=dict)
    replicas: tuple[str, ...] = ()
    breaker: Breaker | None = None
    retry: Retry | None = None
    max_connections: int = 256
    max_keepalive: int = 64
    native_responses: bool = False  # it serves /responses itself (OpenAIUpstream.responses: native)

    @classmethod
    def of(cls, name: str, spec: OpenAIUpstream | AnthropicUpstream) -> ClientOptions:
        """The options an upstream's settings give; only OpenAI-protocol upstreams have replicas, retries, a breaker."""
        options = cls(
            name=name,
            base_url=spec.base_url,
            timeouts=spec.timeouts,
            api_key=spec.api_key.get_secret_value() if spec.api_key else None,
            headers=spec.headers,
            max_connections=spec.max_connections,
            max_keepalive=spec.max_keepalive,
        )
        if isinstance(spec, OpenAIUpstream):
            return replace(options, replicas=spec.replicas(), breaker=spec.breaker, retry=spec.retry,
                           native_responses=spec.responses == "native")
        return options
