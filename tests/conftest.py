from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stores import store_url as _store_url
from tests.support.servers import RunningGateway, run_gateway, write_config
from tests.support.upstream import ScriptedUpstream

AGENT_KEY = "sk-test-agent"
ANALYST_KEY = "sk-test-analyst"
ADMIN_KEY = "sk-test-admin"


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as up:
        yield up


def gateway_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A config with one frontier upstream (the scripted one), two routes and the three roles."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {
            "keys": [
                {"name": "agents", "key": AGENT_KEY, "role": "agent"},
                {"name": "dashboards", "key": ANALYST_KEY, "role": "analyst"},
                {"name": "platform", "key": ADMIN_KEY, "role": "admin"},
            ]
        },
        "upstreams": {"scripted": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-upstream"}},
        "models": {
            "gpt-4.1": {"upstream": "scripted", "model": "gpt-4.1", "tier": "frontier"},
            "mini": {"upstream": "scripted", "model": "mini-lora", "tier": "miniature"},
        },
        "routes": {"gpt-4.1": {"default": "gpt-4.1"}, "cheap": {"default": "mini"}},
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway on a config dict; stopped at the end of the test."""
    stack: list[Any] = []

    def make(config: dict[str, Any], *, watch: bool = False) -> RunningGateway:
        config.setdefault("logging", {"store": f"sqlite:///{tmp_path}/calls-{len(stack)}.db"})
        path = write_config(tmp_path / f"minigate-{len(stack)}.yaml", config)
        context = run_gateway(path, watch=watch)
        stack.append(context)
        return context.__enter__()

    yield make
    for context in reversed(stack):
        context.__exit__(None, None, None)


@pytest.fixture
def gateway(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(gateway_config(upstream.base_url))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty call-log store of each kind (PostgreSQL skips when no server is configured)."""
    with _store_url(request.param, tmp_path) as url:
        yield url
