"""Shadow calls: after the client has its reply, a sample of a rule's calls goes to a second model, the two
replies are judged by the task's output kind, and the verdict is logged and counted.

The scripted upstream plays both models: `gpt-4.1` the frontier, `mini-lora` the miniature.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from minigate.errors import ConfigError
from minigate.router.agreement import judge
from minigate.router.cascade import ReplyView
from tests.conftest import ADMIN_KEY, AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import RunningGateway, write_config
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

QUESTION = [{"role": "system", "content": "Reply with one label: billing or shipping."},
            {"role": "user", "content": "Where is my parcel?"}]


def shadowing(upstream: ScriptedUpstream, use: str, shadow: str, **spec: Any) -> dict[str, Any]:
    config = gateway_config(upstream.base_url)
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "rules": [
        {"name": "intents", "when": {}, "use": use, "shadow": {"model": shadow, "sample": 1.0, **spec}}]}
    return config


def ask(gateway: RunningGateway, *, stream: bool = False) -> httpx.Response:
    body = {"model": "gpt-4.1", "messages": QUESTION, "stream": stream}
    return httpx.post(f"{gateway.v1}/chat/completions", json=body, headers={"authorization": f"Bearer {AGENT_KEY}"},
                      timeout=30)


def shadows(gateway: RunningGateway, tmp_path: Path, expected: int) -> list[tuple[Any, ...]]:
    """The shadow records, once `expected` of them are in the call log."""
    query = "SELECT shadow_of, verdict, candidate, model, rule, status FROM calls WHERE rule = 'shadow'"
    eventually(lambda: len(fetch(f"sqlite:///{tmp_path}/calls-0.db", query)) >= expected, timeout=20)
    return fetch(f"sqlite:///{tmp_path}/calls-0.db", query)


def test_a_frontier_call_is_shadowed_by_the_miniature_and_judged(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    upstream.script(reply="shipping")
    upstream.script(reply="Shipping.", model="mini-lora")
    gateway = make_gateway(shadowing(upstream, "gpt-4.1", "mini"))
    answered = [ask(gateway), ask(gateway, stream=True)]
    assert all(r.status_code == 200 and r.headers["x-minigate-model"] == "gpt-4.1" for r in answered)
    assert orjson.loads(answered[0].content)["choices"][0]["message"]["content"] == "shipping"
    rows = shadows(gateway, tmp_path, 2)
    assert sorted(row[0] for row in rows) == sorted(r.headers["x-minigate-request-id"] for r in answered)
    assert {row[1:] for row in rows} == {("agree", "mini", "mini", "shadow", 200)}
    shadow_bodies = [r.json() for r in upstream.requests if r.json()["model"] == "mini-lora"]
    assert [body["stream"] for body in shadow_bodies] == [False, False], "a shadow is always asked for its whole reply"
    assert shadow_bodies[0]["messages"] == QUESTION
    eventually(lambda: gateway.metric("minigate_shadow_comparisons_total",
                                      {"task": "unknown", "model": "mini", "verdict": "agree"}) == 2)


def test_a_wrong_miniature_disagrees(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway],
                                     tmp_path: Path) -> None:
    upstream.script(reply="shipping")
    upstream.script(reply="I think this is about billing, most likely.", model="mini-lora")
    gateway = make_gateway(shadowing(upstream, "gpt-4.1", "mini"))
    assert ask(gateway).status_code == 200
    [row] = shadows(gateway, tmp_path, 1)
    assert row[1:3] == ("disagree", "mini")


def test_a_reverse_shadow_judges_the_miniature_that_served(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    upstream.script(reply="shipping")
    upstream.script(reply="billing", model="mini-lora")
    gateway = make_gateway(shadowing(upstream, "mini", "gpt-4.1"))
    response = ask(gateway)
    assert response.headers["x-minigate-model"] == "mini"
    [row] = shadows(gateway, tmp_path, 1)
    assert row[1:4] == ("disagree", "mini", "gpt-4.1"), "the frontier shadows; the miniature is judged"


def test_a_failing_or_slow_shadow_never_reaches_the_client(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    upstream.script(reply="shipping")
    upstream.script(Script(status=503), model="mini-lora")
    gateway = make_gateway(shadowing(upstream, "gpt-4.1", "mini"))
    assert ask(gateway).status_code == 200
    [row] = shadows(gateway, tmp_path, 1)
    assert row[1] == "error" and row[5] == 503
    upstream.script(Script(reply="shipping", latency_s=3.0), model="mini-lora")
    response = ask(gateway)
    assert response.status_code == 200
    assert len(shadows(gateway, tmp_path, 1)) == 1, "the client had its reply while the shadow was still waiting"
    assert len(shadows(gateway, tmp_path, 2)) == 2


def test_a_full_shadow_queue_drops_and_counts(upstream: ScriptedUpstream,
                                              make_gateway: Callable[..., RunningGateway]) -> None:
    upstream.script(reply="shipping")
    upstream.script(Script(reply="shipping", latency_s=5.0), model="mini-lora")
    gateway = make_gateway(shadowing(upstream, "gpt-4.1", "mini", max_concurrency=1))
    with httpx.Client(timeout=30, headers={"authorization": f"Bearer {AGENT_KEY}"}) as client:
        for _ in range(270):
            body = {"model": "gpt-4.1", "messages": QUESTION}
            assert client.post(f"{gateway.v1}/chat/completions", json=body).status_code == 200
    # One shadow runs, one waits for its slot, 256 are queued: the rest are dropped and counted, and every
    # client call was answered.
    assert gateway.metric("minigate_shadow_dropped_total", {"model": "mini"}) == 270 - 2 - 256


def test_shadows_are_kept_out_of_the_calls_api_unless_asked_for(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    upstream.script(reply="shipping")
    gateway = make_gateway(shadowing(upstream, "gpt-4.1", "mini"))
    request_id = ask(gateway).headers["x-minigate-request-id"]
    shadows(gateway, tmp_path, 1)
    eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 2)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    calls = httpx.get(f"{gateway.v1}/minigate/calls", headers=admin).json()["data"]
    assert [row["request_id"] for row in calls] == [request_id]
    only = httpx.get(f"{gateway.v1}/minigate/calls", params={"kind": "shadows"}, headers=admin).json()["data"]
    assert [(row["shadow_of"], row["verdict"], row["rule"]) for row in only] == [(request_id, "agree", "shadow")]


def test_a_shadow_of_an_unknown_model_is_a_config_error(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    from minigate.config import load_config

    path = write_config(tmp_path / "minigate.yaml", shadowing(upstream, "gpt-4.1", "mini-2"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "routes.gpt-4.1.rules.0.shadow.model: rule 'intents': shadow model 'mini-2' is not a model" in str(caught.value)


@pytest.mark.parametrize(
    ("reference", "candidate", "kind", "verdict"),
    [
        (ReplyView('{"a": 1, "b": [1, 2]}'), ReplyView('{"b": [1, 2], "a": 1}'), "json", "agree"),
        (ReplyView('{"a": 1, "b": [1, 2]}'), ReplyView('{"a": 1, "b": [1, 3]}'), "json", "disagree"),
        (ReplyView('{"a": 1}'), ReplyView('{"a": 1'), "json", "disagree"),
        (ReplyView(None, ({"function": {"name": "refund", "arguments": '{"amount": 5}'}},)),
         ReplyView(None, ({"function": {"name": "refund", "arguments": '{ "amount":5 }'}},)), "tool_call", "agree"),
        (ReplyView(None, ({"function": {"name": "refund", "arguments": '{"amount": 5}'}},)),
         ReplyView(None, ({"function": {"name": "refund", "arguments": '{"amount": 6}'}},)), "tool_call", "disagree"),
        (ReplyView("A long answer."), ReplyView("Another long answer."), "free_text", "unjudged"),
    ],
)
def test_replies_are_judged_by_output_kind(reference: ReplyView, candidate: ReplyView, kind: Any, verdict: str) -> None:
    assert judge(reference, candidate, kind).verdict == verdict


def test_a_json_reply_must_match_the_requests_schema() -> None:
    request = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"label": {"enum": ["billing"]}}, "required": ["label"]}}}}
    assert judge(ReplyView('{"label": "billing"}'), ReplyView('{"label": "billing"}'), "json", request=request).verdict == "agree"
    assert judge(ReplyView('{"label": "x"}'), ReplyView('{"label": "x"}'), "json", request=request).verdict == "disagree"


def test_free_text_is_judged_by_similarity_when_a_model_is_at_hand() -> None:
    def similarity(a: str, b: str) -> float:
        return 0.9 if a.split()[0].strip(",.") == b.split()[0].strip(",.") else 0.1

    assert judge(ReplyView("Paris is the capital."), ReplyView("Paris, of course."), "free_text",
                 similarity=similarity).verdict == "agree"
    assert judge(ReplyView("Paris is the capital."), ReplyView("Lyon."), "free_text",
                 similarity=similarity).verdict == "disagree"


def feedback(gateway: RunningGateway, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/minigate/feedback", json=body, headers={"authorization": f"Bearer {key}"})


def test_feedback_is_stored_for_the_callers_own_calls(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    from tests.conftest import ANALYST_KEY

    upstream.script(reply="shipping")
    config = gateway_config(upstream.base_url)
    config["auth"]["keys"].append({"name": "other-agent", "key": "sk-other-agent-key-000000", "role": "agent"})
    gateway = make_gateway(config)
    request_id = ask(gateway).headers["x-minigate-request-id"]
    eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 1)
    given = feedback(gateway, AGENT_KEY, request_id=request_id, score=0, label="billing", comment="wrong intent")
    assert given.status_code == 201 and given.json()["actor"] == "agents"
    assert feedback(gateway, ADMIN_KEY, request_id=request_id, score=0.5).status_code == 201
    refused = feedback(gateway, "sk-other-agent-key-000000", request_id=request_id, score=1)
    assert refused.status_code == 403 and "only its own calls" in refused.json()["error"]["message"]
    assert feedback(gateway, ANALYST_KEY, request_id=request_id, score=1).status_code == 403
    missing = feedback(gateway, AGENT_KEY, request_id="nope", score=1)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "request_id"
    invalid = feedback(gateway, AGENT_KEY, request_id=request_id, score=2)
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "score"
    rows = fetch(f"sqlite:///{tmp_path}/calls-0.db", "SELECT request_id, actor, score, label, comment FROM feedback ORDER BY id")
    assert rows == [(request_id, "agents", 0.0, "billing", "wrong intent"), (request_id, "platform", 0.5, None, None)]


def test_scorecards_count_verdicts_per_task_and_miniature(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    from minigate.router.agreement import wilson
    from tests.conftest import ANALYST_KEY

    upstream.script(reply="shipping")
    upstream.script(reply="shipping", model="mini-lora")
    gateway = make_gateway(shadowing(upstream, "gpt-4.1", "mini"))
    for _ in range(3):
        ask(gateway)
    shadows(gateway, tmp_path, 3)
    upstream.script(reply="billing", model="mini-lora")
    ask(gateway)
    shadows(gateway, tmp_path, 4)
    eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 8)
    response = httpx.get(f"{gateway.v1}/minigate/scorecards", headers={"authorization": f"Bearer {ANALYST_KEY}"})
    assert response.status_code == 200
    [card] = response.json()["data"]
    assert (card["task"], card["model"], card["agree"], card["n"]) == ("unknown", "mini", 3, 4)
    assert card["agreement"] == 0.75 and card["interval"] == list(wilson(3, 4))
    assert card["latency_p50_s"] is not None and card["frontier_cost_per_call_usd"] > 0
    refused = httpx.get(f"{gateway.v1}/minigate/scorecards", headers={"authorization": f"Bearer {AGENT_KEY}"})
    assert refused.status_code == 403


@pytest.mark.slow
def test_free_text_is_judged_by_minilm_when_the_gateway_matches_by_embedding(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    import numpy as np

    from minigate.router.catalogue import Catalogue, Task, save_catalogue
    from minigate.router.signature import signature

    system = "You are a travel assistant. Answer in two sentences."
    request = {"model": "gpt-4.1", "messages": [{"role": "system", "content": system},
                                                {"role": "user", "content": "What should I see in Paris?"}]}
    task = Task("t001", "travel", 10, 1.0, {signature(request): 10}, output_kind="free_text")
    save_catalogue(Catalogue([task], {"t001": np.eye(1, 768, dtype=np.float32)[0]}, 10, "x", "test",
                             "all-MiniLM-L6-v2", 2), tmp_path / "tasks.yaml")
    config = shadowing(upstream, "gpt-4.1", "mini")
    config["tasks"] = {"catalogue": str(tmp_path / "tasks.yaml"), "embedding": True}
    gateway = make_gateway(config)
    answer = "See the Louvre and the Eiffel Tower. Walk along the Seine at sunset."
    upstream.script(reply=answer)
    upstream.script(reply=answer.replace("See", "Visit"), model="mini-lora")
    headers = {"authorization": f"Bearer {AGENT_KEY}"}
    assert httpx.post(f"{gateway.v1}/chat/completions", json=request, headers=headers, timeout=60).status_code == 200
    shadows(gateway, tmp_path, 1)  # judged before the miniature's reply changes
    upstream.script(reply="Invoices are due within thirty days of receipt.", model="mini-lora")
    assert httpx.post(f"{gateway.v1}/chat/completions", json=request, headers=headers, timeout=60).status_code == 200
    rows = shadows(gateway, tmp_path, 2)
    assert sorted(row[1] for row in rows) == ["agree", "disagree"], "the paraphrase agrees, the unrelated reply not"


def test_a_catalogue_task_may_name_its_shadow(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway],
                                              tmp_path: Path) -> None:
    import numpy as np

    from minigate.config import load_config
    from minigate.router.catalogue import Catalogue, Task, save_catalogue
    from minigate.router.signature import signature

    request = {"model": "gpt-4.1", "messages": QUESTION}
    task = Task("t001", "intents", 10, 1.0, {signature(request): 10}, output_kind="label",
                shadow={"model": "mini", "sample": 1.0})
    save_catalogue(Catalogue([task], {"t001": np.eye(1, 768, dtype=np.float32)[0]}, 10, "x", "test",
                             "all-MiniLM-L6-v2", 2), tmp_path / "tasks.yaml")
    config = gateway_config(upstream.base_url, tasks={"catalogue": str(tmp_path / "tasks.yaml")})
    upstream.script(reply="shipping")
    gateway = make_gateway(config)  # no rule: the route's default serves, the catalogue's shadow follows
    assert ask(gateway).headers["x-minigate-rule"] == "default"
    [row] = shadows(gateway, tmp_path, 1)
    assert row[1:4] == ("agree", "mini", "mini")

    unknown = Task("t001", "intents", 10, 1.0, {signature(request): 10}, shadow={"model": "mini-2"})
    save_catalogue(Catalogue([unknown], {"t001": np.eye(1, 768, dtype=np.float32)[0]}, 10, "x", "test",
                             "all-MiniLM-L6-v2", 2), tmp_path / "tasks.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path / "other.yaml", config))
    assert "task t001 (intents) shadows with unknown model 'mini-2'" in str(caught.value)


def test_a_judge_model_decides_free_text_pairs_and_its_call_is_logged(
    upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    from minigate.router.agreement import JUDGE_PROMPT

    config = shadowing(upstream, "gpt-4.1", "mini", judge="judge")
    config["models"]["judge"] = {"upstream": "scripted", "model": "judge-model", "tier": "frontier"}
    gateway = make_gateway(config)
    upstream.script(reply="Parcels ship within two days. Tracking comes by email the same evening.")
    upstream.script(reply="We ship in two days and email tracking that evening.", model="mini-lora")
    upstream.script(reply="AGREE", model="judge-model")
    assert ask(gateway).status_code == 200
    [row] = shadows(gateway, tmp_path, 1)
    assert row[1:3] == ("agree", "mini")
    [asked] = [r.json() for r in upstream.requests if r.json()["model"] == "judge-model"]
    assert asked["messages"][0]["content"] == JUDGE_PROMPT and "Where is my parcel?" in asked["messages"][1]["content"]
    judged = "SELECT rule, model, verdict FROM calls WHERE rule = 'judge'"
    eventually(lambda: fetch(f"sqlite:///{tmp_path}/calls-0.db", judged) == [("judge", "judge", None)])
