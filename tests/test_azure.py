"""Azure OpenAI through kind `openai` with `api_version`: deployment URLs, `api-version`, `api-key`."""

from __future__ import annotations

from collections.abc import Callable

import openai

from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import RunningGateway
from tests.support.upstream import ScriptedUpstream


def _azure_gateway(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    root = upstream.base_url.removesuffix("/v1")  # Azure's base_url is the resource's root
    azure = {"kind": "openai", "base_url": root, "api_key": "azure-key", "api_version": "2024-10-21"}
    return make_gateway(gateway_config(upstream.base_url, upstreams={"azure": azure}, models={
        "gpt-4.1": {"upstream": "azure", "model": "gpt41-prod", "tier": "frontier"},
        "mini": {"upstream": "azure", "model": "mini eu-west", "tier": "miniature"},
    }))


def test_azure_calls_the_deployment_with_api_version_and_api_key(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]
) -> None:
    gateway = _azure_gateway(upstream, make_gateway)
    upstream.script(reply="Paris.")
    client = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)
    completion = client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "Capital?"}])
    assert completion.choices[0].message.content == "Paris."
    sent = upstream.requests[-1]
    assert sent.path == "/openai/deployments/gpt41-prod/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["api-key"] == "azure-key"
    assert "authorization" not in sent.headers
    assert sent.json()["model"] == "gpt41-prod"  # still set; Azure ignores it


def test_azure_streams_and_quotes_deployment_names(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]
) -> None:
    gateway = _azure_gateway(upstream, make_gateway)
    upstream.script(reply="one two")
    client = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)
    stream = client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "count"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two"
    assert upstream.requests[-1].path == "/openai/deployments/mini eu-west/chat/completions"  # decoded by the server
    assert upstream.requests[-1].query == "api-version=2024-10-21"


def test_plain_openai_upstream_keeps_bearer_auth(upstream: ScriptedUpstream, gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    sent = upstream.requests[-1]
    assert (sent.path, sent.query) == ("/v1/chat/completions", "")
    assert sent.headers["authorization"] == "Bearer sk-upstream" and "api-key" not in sent.headers
