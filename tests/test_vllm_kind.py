"""Kind `vllm`: LoRA adapters loaded and unloaded to match the config, /health, and /metrics load driving rules.

The vLLM stand-in is the scripted upstream, which speaks vLLM's adapter endpoints, /health and /metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from minigate.config import load_config
from minigate.errors import ConfigError
from minigate.router.features import extract_features
from minigate.router.rules import RuleContext, compile_condition
from minigate.serving.plan import plan_vllm
from minigate.serving.vllm_load import VllmLoad, least_loaded, parse_metrics
from tests.conftest import AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import RunningGateway, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
ANALYST = {"authorization": f"Bearer {ANALYST_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]


def vllm_config(vllm_url: str, frontier_url: str, **upstream: Any) -> dict[str, Any]:
    """`invoice` and `ticket` are LoRA adapters on vllm-a; `big` is a frontier model elsewhere."""
    config = gateway_config(frontier_url)
    config["upstreams"]["vllm-a"] = {"kind": "vllm", "base_url": vllm_url, "api_key": "sk-vllm",
                                     "adapters": {"ticket-lora": "/adapters/ticket"}, **upstream}
    config["models"] = {
        "big": {"upstream": "scripted", "model": "gpt-4.1", "tier": "frontier"},
        "base": {"upstream": "vllm-a", "model": "scripted-base", "tier": "miniature"},
        "invoice": {"upstream": "vllm-a", "adapter": "invoice-lora", "path": "/adapters/invoice", "tier": "miniature"},
        "ticket": {"upstream": "vllm-a", "model": "ticket-lora", "tier": "miniature"},
    }
    config["routes"] = {"invoices": {"default": "invoice"}, "tickets": {"default": "ticket"}, "big": {"default": "big"}}
    return config


def lora_calls(up: ScriptedUpstream) -> list[tuple[str, Any]]:
    return [(r.path.rsplit("/", 1)[-1], r.json()) for r in up.requests if r.path.endswith("lora_adapter")]


def chat(gateway: RunningGateway, route: str) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, timeout=30,
                      json={"model": route, "messages": HELLO})


def test_adapters_are_loaded_at_start_and_called_by_name(upstream: ScriptedUpstream,
                                                         make_gateway: Callable[..., RunningGateway]) -> None:
    with ScriptedUpstream() as vllm:
        gateway = make_gateway(vllm_config(vllm.base_url, upstream.base_url))
        assert vllm.adapters == {"ticket-lora", "invoice-lora"}  # before the gateway takes a request
        assert sorted(lora_calls(vllm), key=str) == [
            ("load_lora_adapter", {"lora_name": "invoice-lora", "lora_path": "/adapters/invoice"}),
            ("load_lora_adapter", {"lora_name": "ticket-lora", "lora_path": "/adapters/ticket"})]
        assert all(r.headers["authorization"] == "Bearer sk-vllm" for r in vllm.requests if "lora" in r.path)

        response = chat(gateway, "invoices")
        assert response.status_code == 200 and response.headers["x-minigate-model"] == "invoice"
        assert vllm.requests[-1].path == "/v1/chat/completions" and vllm.requests[-1].json()["model"] == "invoice-lora"
        assert httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).json()["upstreams"]["vllm-a"] == "reachable"


def test_a_reload_loads_new_adapters_and_unloads_dropped_ones(upstream: ScriptedUpstream,
                                                              make_gateway: Callable[..., RunningGateway]) -> None:
    with ScriptedUpstream() as vllm:
        config = vllm_config(vllm.base_url, upstream.base_url)
        gateway = make_gateway(config, watch=True)
        assert vllm.adapters == {"ticket-lora", "invoice-lora"}

        del config["upstreams"]["vllm-a"]["adapters"], config["models"]["ticket"], config["routes"]["tickets"]
        config["models"]["invoice"]["path"] = "/adapters/invoice-v2"  # a new version under the same name
        config["models"]["refund"] = {"upstream": "vllm-a", "adapter": "refund-lora", "path": "/adapters/refund",
                                      "tier": "miniature"}
        config["routes"]["refunds"] = {"default": "refund"}
        write_config(gateway.app.state.holder.path, config)
        eventually(lambda: vllm.adapters == {"invoice-lora", "refund-lora"})
        calls = lora_calls(vllm)
        assert ("unload_lora_adapter", {"lora_name": "ticket-lora"}) in calls
        moved = calls.index(("load_lora_adapter", {"lora_name": "invoice-lora", "lora_path": "/adapters/invoice-v2"}))
        assert ("unload_lora_adapter", {"lora_name": "invoice-lora"}) in calls[:moved]  # vLLM refuses a loaded name
        eventually(lambda: chat(gateway, "refunds").status_code == 200)
        assert vllm.requests[-1].json()["model"] == "refund-lora"


def test_an_adapter_that_fails_to_load_is_reported_not_fatal(upstream: ScriptedUpstream,
                                                             make_gateway: Callable[..., RunningGateway],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with ScriptedUpstream() as vllm, caplog.at_level(logging.ERROR, logger="minigate.serving"):
        vllm.missing_paths.add("/adapters/invoice")
        gateway = make_gateway(vllm_config(vllm.base_url, upstream.base_url))
        assert vllm.adapters == {"ticket-lora"}
        problem = httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).json()["upstreams"]["vllm-a"]
        assert "LoRA adapter 'invoice-lora' not loaded" in problem and "HTTP 404" in problem
        assert "No adapter found for /adapters/invoice" in problem
        assert any("cannot load LoRA adapter 'invoice-lora'" in r.getMessage() for r in caplog.records)
        assert chat(gateway, "tickets").status_code == 200  # the rest of the gateway serves on


@pytest.mark.slow
def test_a_restarted_server_gets_its_adapters_back(upstream: ScriptedUpstream,
                                                   make_gateway: Callable[..., RunningGateway]) -> None:
    first = ScriptedUpstream().start()
    port = first.port
    gateway = make_gateway(vllm_config(first.base_url, upstream.base_url))
    assert first.adapters == {"ticket-lora", "invoice-lora"}
    first.stop()
    eventually(lambda: "vllm-a" not in gateway.app.state.holder.current.pool.loads)  # the poller saw it go
    with ScriptedUpstream(port=port) as second:  # a new process: no adapters in memory
        eventually(lambda: second.adapters == {"ticket-lora", "invoice-lora"})
        assert chat(gateway, "invoices").status_code == 200


def test_readiness_is_vllms_health(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    with ScriptedUpstream() as vllm:
        gateway = make_gateway(vllm_config(vllm.base_url, upstream.base_url))
        vllm.health_status = 503
        assert httpx.get(f"{gateway.base_url}/readyz", headers=ANALYST).json()["upstreams"]["vllm-a"] == "/health answered HTTP 503"
        assert [r.path for r in vllm.requests if r.method == "GET" and r.path != "/metrics"] == ["/health"]


def load_routes(vllm_url: str, frontier_url: str) -> dict[str, Any]:
    config = vllm_config(vllm_url, frontier_url)
    config["routes"]["agent"] = {"default": "big", "rules": [
        {"name": "spill", "when": {"upstream_kv_cache.vllm-a": {"gt": 0.9}}, "use": "big"},
        {"name": "mini", "when": {"not": {"upstream_waiting": {"gt": 8}}}, "use": "base"},
    ]}
    return config


def served(gateway: RunningGateway) -> tuple[str, str]:
    response = chat(gateway, "agent")
    assert response.status_code == 200
    return response.headers["x-minigate-model"], response.headers["x-minigate-rule"]


@pytest.mark.slow
def test_the_load_of_a_rules_upstream_escalates_when_saturated(upstream: ScriptedUpstream,
                                                               make_gateway: Callable[..., RunningGateway]) -> None:
    with ScriptedUpstream() as vllm:
        gateway = make_gateway(load_routes(vllm.base_url, upstream.base_url))
        loads = gateway.app.state.holder.current.pool.loads
        eventually(lambda: "vllm-a" in loads)
        assert served(gateway) == ("base", "mini")

        vllm.waiting, vllm.running = 12, 64
        eventually(lambda: loads["vllm-a"] == VllmLoad(12.0, 64.0, 0.0))
        assert served(gateway) == ("big", "default")  # the miniature is saturated: not chosen

        vllm.waiting, vllm.kv_metric, vllm.kv_cache = 0, "vllm:gpu_cache_usage_perc", 0.95  # an older vLLM's name
        eventually(lambda: loads["vllm-a"].kv_cache == 0.95)
        assert served(gateway) == ("big", "spill")

        vllm.kv_cache = 0.2
        eventually(lambda: loads["vllm-a"].kv_cache == 0.2)
        assert served(gateway) == ("base", "mini")


def test_no_reading_means_no_load_test_holds() -> None:
    features = extract_features({"messages": HELLO})
    saturated = compile_condition({"upstream_waiting": {"gt": 8}}, upstream="vllm-a")
    free = compile_condition({"not": {"upstream_waiting": {"gt": 8}}}, upstream="vllm-a")
    named = compile_condition({"upstream_kv_cache.vllm-b": {"gte": 0.5}})
    busy = {"vllm-a": VllmLoad(9, 1, 0.1), "vllm-b": VllmLoad(0, 0, 0.5)}
    assert saturated(RuleContext(features, loads=busy)) and not free(RuleContext(features, loads=busy))
    assert named(RuleContext(features, loads=busy))
    assert not saturated(RuleContext(features)) and free(RuleContext(features)) and not named(RuleContext(features))
    assert not compile_condition({"upstream_waiting": {"gt": 8}})(RuleContext(features, loads=busy))  # no upstream


METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2"} 3.0
vllm:num_requests_running{engine="1",model_name="smollm2"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 5.0
vllm:num_requests_waiting{engine="1",model_name="smollm2"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 40.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="smollm2"} 0.75
vllm:request_queue_time_seconds_bucket{engine="0",le="0.3",model_name="smollm2"} 9.0
"""


def test_metrics_are_read_as_vllm_writes_them() -> None:
    assert parse_metrics(METRICS) == VllmLoad(waiting=7.0, running=4.0, kv_cache=0.75)
    assert parse_metrics("# nothing of vLLM here\nprocess_cpu_seconds_total 1.0\n") is None
    assert least_loaded([VllmLoad(9, 4, 0.9), VllmLoad(1, 8, 0.2)]) == VllmLoad(1, 8, 0.2)
    assert least_loaded([]) is None


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c["models"]["big"].update(adapter="x-lora", path="/a", model="x-lora"),
     "models.big.adapter: LoRA adapters are served by vllm and llamacpp upstreams; upstream 'scripted' is of kind 'openai'"),
    (lambda c: c["models"]["invoice"].pop("path"),
     "models.invoice.adapter: adapter 'invoice-lora' needs a path"),
    (lambda c: c["models"]["invoice"].update(model="other"),
     "models.invoice: Value error, an adapter is called by its name"),
    (lambda c: c["upstreams"]["vllm-a"]["adapters"].update({"invoice-lora": "/elsewhere"}),
     "models.invoice.path: adapter 'invoice-lora' on 'vllm-a' is loaded from '/elsewhere' elsewhere"),
    (lambda c: c["routes"]["big"].update(rules=[{"name": "r", "when": {"upstream_waiting": {"gt": 1}}, "use": "big"}]),
     "routes.big.rules.0.when.upstream_waiting: rule 'r': its model is not served by one vllm upstream"),
    (lambda c: c["routes"]["big"].update(rules=[{"name": "r", "when": {"upstream_running.scripted": {"gt": 1}},
                                                 "use": "big"}]),
     "rule 'r': 'scripted' is not a vllm upstream, the only kind that reports load (vllm upstreams: vllm-a)"),
])
def test_config_errors_name_line_and_field(tmp_path: Path, change: Callable[[dict[str, Any]], Any],
                                           expected: str) -> None:
    config = vllm_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    change(config)
    path = write_config(tmp_path / "minigate.yaml", config)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value) and str(path) + ":" in str(caught.value)


def test_serving_plan_serves_the_adapters_model_entries_name(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "minigate.yaml", vllm_config("http://vllm-a:8000/v1", "http://x/v1")))
    [plan] = plan_vllm(config.upstreams, config.models)
    command = plan.command
    assert command[:3] == ["vllm", "serve", "scripted-base"]  # adapters are not base models
    modules = command[command.index("--lora-modules") + 1:command.index("--max-loras")]
    assert sorted(modules) == ["invoice-lora=/adapters/invoice", "ticket-lora=/adapters/ticket"]
    assert command[command.index("--max-loras") + 1] == "2" and plan.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
