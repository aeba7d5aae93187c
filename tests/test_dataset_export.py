"""`minigate dataset export`: calls logged through a real gateway become fine-tuning JSONL and a card.

One set of calls is logged once for the module: a first gateway without a catalogue (its call is
`unknown`, matched at export by signature), then one with it. The CLI runs as a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from minigate.conversion.dataset import DatasetBuilder, Selection
from minigate.conversion.dataset_card import ExportFacts, card, skip_notes
from minigate.conversion.dataset_split import split
from minigate.conversion.near_duplicates import ShingleSets, near_duplicates
from minigate.logger.crypto import generate_key
from minigate.router.catalogue import Catalogue, Task, save_catalogue
from minigate.router.signature import signature
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
REFUNDS = "You handle refund requests for ACME. Today is 2026-11-23. Answer with the refund amount."
TRIAGE = "Label the support ticket as billing, shipping or other."
TOOLS = [{"type": "function", "function": {
    "name": "issue_refund", "description": "Refund an order",
    "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "email": {"type": "string"}}}}}]
LONG = ("I ordered the blue winter jacket in size medium three weeks ago and it arrived with a torn sleeve and "
        "a broken zipper, so I sent it back using the prepaid label from your website the very next morning. "
        "The tracking page says your warehouse received the parcel last Tuesday, yet nobody has contacted me "
        "since then and the money has not appeared on my card statement. Could you check what happened with "
        "the return and tell me when the refund will be paid out to me")
SYSTEM = {"role": "system", "content": REFUNDS}


def ask(system: str, user: str, model: str = "gpt-4.1", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            **extra}


def minigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def write_catalogue(path: Path) -> None:
    refunds = {signature(ask(REFUNDS, "")): 5, signature(ask(REFUNDS, "", tools=TOOLS)): 1}
    tasks = [Task("t001", "refund-request", size=6, call_share=0.75, signatures=refunds),
             Task("t002", "ticket-triage", size=2, call_share=0.25, signatures={signature(ask(TRIAGE, "")): 2})]
    unit = np.eye(2, 384, dtype=np.float32)
    save_catalogue(Catalogue(tasks, {"t001": unit[0], "t002": unit[1]}, 8, "2026-11-23T00:00:00Z", "test",
                             "all-MiniLM-L6-v2", 3), path)


class Logged:
    """What the module's gateways logged: the config to export with, and each call's usage by name."""

    def __init__(self, config: Path, store: str) -> None:
        self.config = config
        self.store = store
        self.ids: dict[str, str] = {}
        self.usage: dict[str, tuple[int, int]] = {}

    def call(self, gateway_v1: str, name: str, body: dict[str, Any]) -> None:
        response = httpx.post(f"{gateway_v1}/chat/completions", headers=AUTH, json=body, timeout=30)
        self.ids[name] = response.headers["x-minigate-request-id"]
        if response.status_code == 200:
            usage = response.json()["usage"]
            self.usage[name] = (usage["prompt_tokens"], usage["completion_tokens"])


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    folder = tmp_path_factory.mktemp("dataset")
    store = f"sqlite:///{folder}/calls.db"
    logging = {"store": store, "encryption_key": generate_key()}
    with ScriptedUpstream() as upstream:
        before = write_config(folder / "before.yaml", gateway_config(upstream.base_url, logging=logging))
        write_catalogue(folder / "tasks.yaml")
        after = write_config(folder / "minigate.yaml", gateway_config(
            upstream.base_url, logging=logging, tasks={"catalogue": "tasks.yaml"}))
        result = Logged(after, store)
        with run_gateway(before) as gateway:  # no catalogue yet: logged as `unknown`
            upstream.enqueue(Script(reply="Your refund was sent yesterday."))
            result.call(gateway.v1, "legacy", ask(REFUNDS, "Where is my refund for order 12345? Call me on "
                                                           "+1 415-555-0100"))
        with run_gateway(after) as gateway:
            feedback: dict[str, Any] = {"metadata": {"feedback": "0.9"}, "temperature": 0.2}
            for name in ("email", "email-again"):  # the second is an exact duplicate
                upstream.enqueue(Script(reply="Refund of 40 EUR approved; confirmation sent to jane@example.com."))
                result.call(gateway.v1, name, ask(REFUNDS, "I want my 40 EUR back, mail me at jane@example.com",
                                                  **feedback))
            for name, end in (("long", "please."), ("long-again", "please!")):  # near-duplicates
                upstream.enqueue(Script(reply="Refund approved."))
                result.call(gateway.v1, name, ask(REFUNDS, f"{LONG} {end}"))
            upstream.enqueue(Script(tool_call={"name": "issue_refund",
                                               "arguments": '{"amount": 40, "email": "jane@example.com"}'}))
            result.call(gateway.v1, "tool", ask(REFUNDS, "Refund 40 EUR to jane@example.com", tools=TOOLS,
                                                parallel_tool_calls=False, metadata={"feedback": 0.2}))
            upstream.enqueue(Script(reply="Refunds take five days."))
            result.call(gateway.v1, "miniature", ask(REFUNDS, "When do refunds arrive?", model="cheap"))
            upstream.enqueue(Script(status=500))
            result.call(gateway.v1, "error", ask(REFUNDS, "Refund my last order"))
            upstream.enqueue(Script(reply="shipping"))
            result.call(gateway.v1, "triage", ask(TRIAGE, "My parcel is lost"))
            # Ratings given afterwards (POST /v1/minigate/feedback) count before the request's metadata.feedback.
            eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 8)
            for name, score in (("long", 1.0), ("tool", 0.9)):
                given = httpx.post(f"{gateway.v1}/minigate/feedback", headers=AUTH,
                                   json={"request_id": result.ids[name], "score": score})
                assert given.status_code == 201, given.text
        yield result


LEGACY = {"messages": [SYSTEM, {"role": "user", "content": "Where is my refund for order 12345? Call me on <PHONE_1>"},
                       {"role": "assistant", "content": "Your refund was sent yesterday."}]}
EMAIL = {"messages": [SYSTEM, {"role": "user", "content": "I want my 40 EUR back, mail me at <EMAIL_1>"},
                      {"role": "assistant", "content": "Refund of 40 EUR approved; confirmation sent to <EMAIL_1>."}]}
LONG_LINE = {"messages": [SYSTEM, {"role": "user", "content": f"{LONG} please."},
                          {"role": "assistant", "content": "Refund approved."}]}
TOOL_LINE = {
    "messages": [SYSTEM, {"role": "user", "content": "Refund 40 EUR to <EMAIL_1>"},
                 {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                     "name": "issue_refund", "arguments": '{"amount": 40, "email": "<EMAIL_1>"}'}}]}],
    "tools": TOOLS, "parallel_tool_calls": False,
}
MINIATURE = {"messages": [SYSTEM, {"role": "user", "content": "When do refunds arrive?"},
                          {"role": "assistant", "content": "Refunds take five days."}]}


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.slow
def test_export_writes_the_teachers_examples_and_a_card(logged: Logged, tmp_path: Path) -> None:
    out = tmp_path / "refunds"
    result = minigate("dataset", "export", "--task", "refund-request", "--config", str(logged.config),
                      "--out", str(out))
    assert result.returncode == 0, result.stderr
    train, validation = lines(out / "train.jsonl"), lines(out / "validation.jsonl")
    # Frontier only, status 200, one of each duplicate pair, in log order; one of four held out.
    assert len(train) == 3 and len(validation) == 1
    assert sorted([*train, *validation], key=orjson.dumps) == sorted([LEGACY, EMAIL, LONG_LINE, TOOL_LINE],
                                                                     key=orjson.dumps)
    assert TOOL_LINE in train  # its stratum (the signature with tools) is too small to give one up
    order = [LEGACY, EMAIL, LONG_LINE, TOOL_LINE]
    assert train == [line for line in order if line in train]

    document = orjson.loads((out / "card.json").read_bytes())
    assert document["task"] == {"id": "t001", "name": "refund-request"}
    assert document["counts"] == {
        "calls_read": 9, "calls_of_task": 8,
        "dropped": {"error_status": 1, "not_frontier": 1, "no_payload": 0, "no_reply": 0, "incomplete_reply": 0,
                    "inline_media": 0, "no_feedback": 0, "low_feedback": 0, "too_long": 0},
        "selected": 6, "exact_duplicates": 1, "near_duplicates": 1, "examples": 4, "train": 3, "validation": 1,
    }
    assert document["not_of_task"] == {  # the triage call is t002's; the legacy call's signature is t001's alone
        "other_tasks": 1, "shared_signature": [], "unmatched": 0, "unmatched_before_catalogue": 0,
        "catalogue_discovered_at": "2026-11-23T00:00:00Z", "unknown_task_ids": {}}
    # Written, but calls of the task were left out: stderr says which and what keeps them.
    assert "skipped 1 call of the task dropped: status was not 200; --include-errors keeps those" in result.stderr
    assert "skipped 1 call of the task dropped: not served by a frontier-tier model; --all-tiers keeps them" \
        in result.stderr
    kept = ("legacy", "email", "long", "tool")
    prompts = sorted(logged.usage[name][0] for name in kept)
    completions = sorted(logged.usage[name][1] for name in kept)
    assert document["tokens"]["prompt"] == {"p50": prompts[1], "p95": prompts[3], "max": prompts[3]}
    assert document["tokens"]["completion"] == {"p50": completions[1], "p95": completions[3], "max": completions[3]}
    started = dict(fetch(logged.store, "SELECT request_id, started_at FROM calls"))
    first, last = (datetime.fromtimestamp(started[logged.ids[name]], UTC).isoformat(timespec="seconds")
                   for name in ("legacy", "tool"))
    assert document["period"] == {"first": first, "last": last}
    assert document["models"] == {"gpt-4.1": 4}
    assert document["redaction"] == {"examples_with_placeholders": 3, "placeholders": {
        "EMAIL": {"occurrences": 4, "examples": 2}, "PHONE": {"occurrences": 1, "examples": 1}}}
    assert document["split"] == {"validation_share": 0.1, "seed": 0, "stratified_by": "signature", "strata": 2}

    readme = (out / "README.md").read_text()
    assert "# Fine-tuning data for task `refund-request` (t001)" in readme
    assert "## Calls left out\n\n- 1 call of the task dropped: status was not 200;" in readme
    assert "| exact duplicates removed | 1 |" in readme and "| `<EMAIL_n>` | 4 | 2 |" in readme
    assert "client.fine_tuning.jobs.create" in readme
    assert "near-duplicates removed" in result.stdout and "\x1b[" not in result.stderr  # piped: no bars
    assert fetch(logged.store, "SELECT count(*) FROM audit WHERE actor LIKE 'cli:%'")[0][0] >= 1


@pytest.mark.slow
def test_filters_all_tiers_feedback_and_token_limit(logged: Logged, tmp_path: Path) -> None:
    common = ("dataset", "export", "--task", "t001", "--config", str(logged.config), "--validation", "0")
    limit = logged.usage["long"][0] + logged.usage["long"][1] - 1  # just under the long call's tokens
    wide = minigate(*common, "--all-tiers", "--max-tokens", str(limit), "--out", str(tmp_path / "wide"), "--json")
    assert wide.returncode == 0, wide.stderr
    assert lines(tmp_path / "wide" / "train.jsonl") == [LEGACY, EMAIL, TOOL_LINE, MINIATURE]
    assert lines(tmp_path / "wide" / "validation.jsonl") == []
    counts = orjson.loads(wide.stdout)["counts"]
    assert counts["dropped"]["too_long"] == 2 and counts["dropped"]["not_frontier"] == 0
    assert orjson.loads(wide.stdout)["models"] == {"gpt-4.1": 3, "mini": 1}

    rated = minigate(*common, "--min-feedback", "0.5", "--out", str(tmp_path / "rated"), "--json")
    assert rated.returncode == 0, rated.stderr
    assert lines(tmp_path / "rated" / "train.jsonl") == [EMAIL, LONG_LINE, TOOL_LINE]
    dropped = orjson.loads(rated.stdout)["counts"]["dropped"]
    assert (dropped["no_feedback"], dropped["low_feedback"], dropped["not_frontier"]) == (2, 0, 1)


def write_shared_catalogue(path: Path, discovered_at: str) -> None:
    """t001 and t003 both list the refund prompt's signature (two steps, one prompt); t002 is triage."""
    refunds = {signature(ask(REFUNDS, "")): 5}
    tasks = [Task("t001", "refund-request", size=5, call_share=0.5, signatures=refunds),
             Task("t003", "refund-chat", size=3, call_share=0.3, signatures=refunds),
             Task("t002", "ticket-triage", size=2, call_share=0.2, signatures={signature(ask(TRIAGE, "")): 2})]
    unit = np.eye(3, 384, dtype=np.float32)
    save_catalogue(Catalogue(tasks, {"t001": unit[0], "t003": unit[1], "t002": unit[2]}, 10, discovered_at, "test",
                             "all-MiniLM-L6-v2", 4), path)


@pytest.mark.slow
def test_an_empty_export_says_why_and_what_to_do(logged: Logged, tmp_path: Path) -> None:
    write_shared_catalogue(tmp_path / "shared.yaml", "2026-11-23T00:00:00Z")
    legacy_at = fetch(logged.store, f"SELECT started_at FROM calls WHERE request_id = '{logged.ids['legacy']}'")[0][0]
    result = minigate("dataset", "export", "--task", "refund-request", "--config", str(logged.config),
                      "--catalogue", str(tmp_path / "shared.yaml"), "--until", str(legacy_at + 0.001),
                      "--out", str(tmp_path / "none"))
    assert result.returncode == 1 and not (tmp_path / "none").exists()
    assert "no examples for task refund-request (t001): nothing written" in result.stderr
    assert "calls read: 1 (0 of this task, 0 of other tasks)" in result.stderr
    # The legacy call was logged `unknown` (no catalogue then): its signature is t001's and t003's.
    assert ("- 1 call logged as `unknown` with a signature that tasks t001 (refund-request) and t003 (refund-chat) "
            "both list: none was taken; if they are one task, `minigate tasks merge t001 t003`") in result.stderr

    empty = minigate("dataset", "export", "--task", "t001", "--config", str(logged.config), "--until", "1000")
    assert empty.returncode == 1
    assert "no calls were logged in that window: check --since/--until" in empty.stderr


@pytest.mark.slow
def test_calls_under_another_catalogues_ids_are_reported(logged: Logged, tmp_path: Path) -> None:
    """A catalogue discovered afresh (new ids) finds the legacy call by signature; the rest were logged as t001/t002."""
    renumbered = tmp_path / "renumbered.yaml"
    tasks = [Task("t101", "refunds", size=6, call_share=1.0, signatures={signature(ask(REFUNDS, "")): 6})]
    save_catalogue(Catalogue(tasks, {"t101": np.eye(1, 384, dtype=np.float32)[0]}, 6, "2026-11-23T00:00:00Z",
                             "test", "all-MiniLM-L6-v2", 102), renumbered)
    result = minigate("dataset", "export", "--task", "refunds", "--config", str(logged.config), "--catalogue",
                      str(renumbered), "--out", str(tmp_path / "refunds"), "--json")
    assert result.returncode == 0, result.stderr
    assert lines(tmp_path / "refunds" / "train.jsonl") == [LEGACY]
    assert orjson.loads(result.stdout)["not_of_task"]["unknown_task_ids"] == {"t001": 7, "t002": 1}
    assert ("skipped 8 calls logged under task ids this catalogue doesn't have (t001 (7), t002 (1)): the gateway "
            "used another catalogue then; export with that one (--catalogue)") in result.stderr


def test_calls_not_of_the_task_are_counted_by_why() -> None:
    refunds, tools, triage = (signature(ask(REFUNDS, "")), signature(ask(REFUNDS, "", tools=TOOLS)),
                              signature(ask(TRIAGE, "")))
    ours = Task("t001", "refunds", size=3, call_share=0.5, signatures={refunds: 2, tools: 1}, merged=["t007"])
    twin = Task("t003", "refund-tools", size=1, call_share=0.2, signatures={tools: 1})
    other = Task("t002", "triage", size=2, call_share=0.3, signatures={triage: 2})
    catalogue = Catalogue([ours, twin, other], {}, 6, "1970-01-01T00:01:40+00:00", "test", "m", 8)  # at 100 s
    reply: dict[str, Any] = {"role": "assistant", "content": "ok"}
    rows = [row("a", ask(REFUNDS, "x"), reply), row("b", ask(REFUNDS, "y"), reply) | {"task": "t007"},
            row("c", ask(TRIAGE, "z"), reply) | {"task": "t002"}, row("d", ask(REFUNDS, "w"), reply) | {"task": "t042"},
            row("e", ask(REFUNDS, "v"), reply) | {"task": "unknown"},
            row("f", ask(REFUNDS, "u", tools=TOOLS), reply) | {"task": "unknown"},
            row("g", ask(TRIAGE, "t"), reply) | {"task": "unknown"},
            row("h", ask("Translate to French.", "s"), reply) | {"task": "unknown", "started_at": 50.0},
            row("i", ask("Translate to French.", "r"), reply) | {"task": "unknown", "started_at": 150.0}]
    builder = DatasetBuilder(ours, catalogue, Selection())
    builder.add(rows)
    counts = builder.counts
    assert (counts.read, counts.of_task) == (9, 3)  # a, b (merged id), e (signature t001's alone)
    assert counts.other_tasks == 2 and counts.unknown_ids == {"t042": 1}  # c and g are t002's
    assert counts.shared == {("t001", "t003"): 1}  # f: the tools signature is listed under both
    assert (counts.unmatched, counts.unmatched_before_catalogue) == (2, 1)  # h before the catalogue, i after
    notes = skip_notes(card(builder.finish(0.0, 0), ExportFacts(Selection(), None, None, 0.0, 0, 0.0)))
    assert notes == [
        "1 call logged as `unknown` with a signature that tasks t001 (refunds) and t003 (refund-tools) both list: "
        "none was taken; if they are one task, `minigate tasks merge t001 t003`; if not, re-run `minigate tasks "
        "discover` so that each signature belongs to one task",
        "2 calls logged as `unknown` matching no task's signature (1 logged before the catalogue was discovered, "
        "1970-01-01T00:01:40+00:00): if some are this task's, re-run `minigate tasks discover` over them so the "
        "catalogue lists their signatures",
        "1 call logged under task ids this catalogue doesn't have (t042 (1)): the gateway used another catalogue "
        "then; export with that one (--catalogue), or re-discover with it in --out so its ids carry over",
    ]


@pytest.mark.slow
def test_clear_errors_without_a_key_or_a_task(logged: Logged, tmp_path: Path) -> None:
    unknown = minigate("dataset", "export", "--task", "nope", "--config", str(logged.config))
    assert unknown.returncode == 2 and "no task 'nope'" in unknown.stderr
    keyless = write_config(tmp_path / "keyless.yaml", gateway_config(
        "http://127.0.0.1:9/v1", logging={"store": f"sqlite:///{tmp_path}/none.db"}))
    result = minigate("dataset", "export", "--task", "t001", "--config", str(keyless))
    assert result.returncode == 2 and "needs the log key" in result.stderr
    assert not (tmp_path / "none.db").exists()  # stopped before opening the store


def test_examples_keep_the_format_and_drop_the_rest() -> None:
    request = {"model": "gpt-4.1", "temperature": 0, "messages": [
        {"role": "developer", "content": REFUNDS},
        {"role": "user", "content": "refund?"},
        {"role": "assistant", "content": None, "refusal": None,
         "tool_calls": [{"id": "call_zz9", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_zz9", "content": "order 7: 40 EUR"},
    ]}
    reply: dict[str, Any] = {"role": "assistant", "content": "40 EUR.", "refusal": None, "annotations": []}
    media = [{"type": "text", "text": "see"},
             {"type": "image_url", "image_url": {"url": "<data:image/png;base64 2048 bytes sha256:0123456789abcdef>"}}]
    rows = [row("a", request, reply), row("b", request, reply, finish="length"),
            row("c", {**request, "messages": [{"role": "user", "content": media}]}, reply), row("d", request, None)]
    task = Task("t001", "refunds", size=1, call_share=1.0, signatures={signature(request): 1})
    builder = DatasetBuilder(task, Catalogue([task], {}, 1, "", "test", "m", 2), Selection())
    builder.add(rows)
    dataset = builder.finish(0.0, 0)
    assert [example.line for example in dataset.train] == [{"messages": [
        {"role": "system", "content": REFUNDS},
        {"role": "user", "content": "refund?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                              "function": {"name": "lookup", "arguments": "{}"}}], "weight": 0},
        {"role": "tool", "tool_call_id": "call_1", "content": "order 7: 40 EUR"},
        {"role": "assistant", "content": "40 EUR."},
    ]}]
    assert dict(dataset.counts.dropped) == {"incomplete_reply": 1, "inline_media": 1, "no_reply": 1}


def test_merged_ids_label_strata_and_errors_with_a_reply() -> None:
    label = Task("t001", "triage", size=1, call_share=1.0, signatures={}, output_kind="label", merged=["t009"])
    catalogue = Catalogue([label], {}, 1, "", "test", "m", 10)
    labels = ["billing"] * 6 + ["shipping"] * 4
    rows = [row(str(i), ask(TRIAGE, f"ticket number {i} about my {answer} problem"),
                {"role": "assistant", "content": answer.title()}) for i, answer in enumerate(labels)]
    rows[0]["task"] = "t009"  # logged before t009 was merged into t001
    rows[1]["status"] = 499  # the client left after the last chunk: the reply is whole
    strict = DatasetBuilder(label, catalogue, Selection())
    strict.add(rows)
    assert dict(strict.counts.dropped) == {"error_status": 1} and strict.counts.of_task == 10
    lenient = DatasetBuilder(label, catalogue, Selection(include_errors=True))
    lenient.add(rows)
    dataset = lenient.finish(0.2, seed=3)
    assert dataset.stratified_by == "label" and not lenient.counts.dropped
    held_out = [example.line["messages"][-1]["content"] for example in dataset.validation]
    assert sorted(held_out) == ["Billing", "Shipping"]  # one of each label, as 6:4 rounds


def row(request_id: str, request: dict[str, Any], reply: dict[str, Any] | None, finish: str = "stop") -> dict[str, Any]:
    response = {"choices": [{"index": 0, "message": reply, "finish_reason": finish}]} if reply else None
    return {"request_id": request_id, "started_at": 1.0, "model": "gpt-4.1", "tier": "frontier", "status": 200,
            "task": "t001", "input_tokens": 10, "output_tokens": 2, "request": request, "response": response}


def test_near_duplicates_are_confirmed_by_jaccard() -> None:
    words = LONG.split()
    one_word_changed = " ".join([*words[:40], "crimson", *words[41:]])
    short = "please refund my blue jacket order today"
    texts = [LONG, LONG.upper() + " !!", one_word_changed, short, short.replace("blue", "red"),
             "how do I change the PIN of my card", LONG[: len(LONG) // 2]]
    sets = ShingleSets(texts)
    assert sets.jaccard(0, 1) == 1.0  # case and punctuation don't count
    assert 0.9 <= sets.jaccard(0, 2) < 1.0 and sets.jaccard(3, 4) < 0.9
    assert sets.jaccard(0, 6) < 0.5
    assert near_duplicates(texts) == [None, 0, 0, None, None, None, None]  # half a text is not a duplicate
    assert near_duplicates([]) == []


def test_the_split_is_stratified_and_seeded() -> None:
    strata = ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5
    items = list(range(100))
    train, validation = split(items, strata, 0.2, seed=7)
    assert len(validation) == 20 and sorted(train + validation) == items and train == sorted(train)
    assert [sum(strata[i] == s for i in validation) for s in "abcd"] == [10, 6, 3, 1]
    assert split(items, strata, 0.2, seed=7) == (train, validation)
    assert split(items, strata, 0.2, seed=8)[1] != validation
    assert split([1, 2], ["x", "x"], 0.01, seed=0)[1] != [] and split([1], ["x"], 0.5, seed=0) == ([1], [])
