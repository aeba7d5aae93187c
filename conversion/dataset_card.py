"""The dataset on disk: `train.jsonl`, `validation.jsonl`, and its card (`card.json`, `README.md`).

The card says what the data is and how it was made: the task, the period its calls cover, how many
calls were read and why each dropped one went, the duplicates removed, the split, token statistics,
the models whose replies it holds, and what redaction left in it (placeholders by type). `skip_notes`
says, in sentences, which calls were left out and what would bring them in (a flag, a merge of tasks,
a re-discovery): an export that writes nothing must say why.

>>> write_dataset(dataset, card(dataset, facts), Path("datasets/refunds"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from minigate.conversion.dataset import DROP_REASONS, NEAR_DUPLICATE_JACCARD, Dataset, DropReason, Example, Selection
from minigate.conversion.near_duplicates import SHINGLE_WORDS
from minigate.logger.redact import PLACEHOLDER

__all__ = ["DROP_HINTS", "ExportFacts", "card", "card_table", "readme", "skip_notes", "write_dataset"]

FORMAT = 1
_HOW_TO_TRAIN = """\
## Fine-tuning with it

OpenAI (upload both files, then start a job):

```python
from openai import OpenAI
client = OpenAI()
train = client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
validation = client.files.create(file=open("validation.jsonl", "rb"), purpose="fine-tune")
client.fine_tuning.jobs.create(model="gpt-4.1-mini-2025-04-14", training_file=train.id,
                               validation_file=validation.id)
```

An open model (a LoRA adapter for vLLM): the files load as a conversational dataset, e.g. with TRL
(`weight: 0` on history turns is OpenAI's; other trainers ignore it):

```python
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer
data = load_dataset("json", data_files={{"train": "train.jsonl", "validation": "validation.jsonl"}})
SFTTrainer(model="HuggingFaceTB/SmolLM2-360M-Instruct", train_dataset=data["train"],
           eval_dataset=data["validation"], args=SFTConfig(output_dir="adapter")).train()
```

Then serve it as a miniature (`tier: miniature` in `models`), route this task to it with a rule
(`when: {{task: {task}}}`, with `escalate_on`), and compare with `minigate replay` before rolling out."""
# What would keep a dropped call: the option that lets it through, or where it went missing.
DROP_HINTS: dict[DropReason, str] = {
    "error_status": "--include-errors keeps those that still hold a finished reply",
    "not_frontier": "--all-tiers keeps them",
    "no_payload": "payloads were not logged (logging.payloads) or not with this key",
    "no_feedback": "without --min-feedback they are kept",
    "low_feedback": "a lower --min-feedback keeps them",
    "too_long": "a higher --max-tokens keeps them",
}


@dataclass(frozen=True)
class ExportFacts:
    """How the export was asked for: the window, the selection, the split, and when it ran."""

    selection: Selection
    since: float | None
    until: float | None
    validation_share: float
    seed: int
    exported_at: float


def card(dataset: Dataset, facts: ExportFacts) -> dict[str, Any]:
    """The card as plain values (what `card.json` holds and `README.md` renders)."""
    examples = [*dataset.train, *dataset.validation]
    counts = dataset.counts
    started = [example.started_at for example in examples]
    return {
        "format": FORMAT,
        "task": {"id": dataset.task.id, "name": dataset.task.name},
        "exported_at": _iso(facts.exported_at),
        "selection": {"tiers": "all" if facts.selection.all_tiers else "frontier",
                      "include_errors": facts.selection.include_errors, "max_tokens": facts.selection.max_tokens,
                      "min_feedback": facts.selection.min_feedback,
                      "since": _iso(facts.since), "until": _iso(facts.until)},
        "counts": {"calls_read": counts.read, "calls_of_task": counts.of_task,
                   "dropped": {reason: counts.dropped[reason] for reason in DROP_REASONS},
                   "selected": counts.selected, "exact_duplicates": counts.exact_duplicates,
                   "near_duplicates": counts.near_duplicates, "examples": len(examples),
                   "train": len(dataset.train), "validation": len(dataset.validation)},
        "not_of_task": _not_of_task(dataset),
        "near_duplicates": {"method": f"MinHash LSH over word {SHINGLE_WORDS}-shingles of the non-system turns, "
                                      "confirmed by exact Jaccard", "jaccard": NEAR_DUPLICATE_JACCARD},
        "split": {"validation_share": facts.validation_share, "seed": facts.seed,
                  "stratified_by": dataset.stratified_by, "strata": len({example.stratum for example in examples})},
        "period": {"first": _iso(min(started)) if started else None, "last": _iso(max(started)) if started else None},
        "tokens": {"prompt": _stats([example.prompt_tokens for example in examples]),
                   "completion": _stats([example.completion_tokens for example in examples]),
                   "total": sum(example.prompt_tokens + example.completion_tokens for example in examples)},
        "models": dict(Counter(example.model for example in examples).most_common()),
        "redaction": _redaction(examples),
    }


def skip_notes(document: dict[str, Any]) -> list[str]:
    """One sentence per reason calls were left out: how many, why, and what would bring them in."""
    missing, counts = document["not_of_task"], document["counts"]
    notes = [_shared_note(group, document["task"]["id"]) for group in missing["shared_signature"]]
    if missing["unmatched"]:
        before = missing["unmatched_before_catalogue"]
        when = (f" ({before} logged before the catalogue was discovered, {missing['catalogue_discovered_at']})"
                if before else "")
        notes.append(f"{_calls(missing['unmatched'])} logged as `unknown` matching no task's signature{when}: "
                     "if some are this task's, re-run `minigate tasks discover` over them so the catalogue lists "
                     "their signatures")
    if missing["unknown_task_ids"]:
        ids = ", ".join(f"{key} ({n})" for key, n in missing["unknown_task_ids"].items())
        notes.append(f"{_calls(sum(missing['unknown_task_ids'].values()))} logged under task ids this catalogue "
                     f"doesn't have ({ids}): the gateway used another catalogue then; export with that one "
                     "(--catalogue), or re-discover with it in --out so its ids carry over")
    for reason, n in counts["dropped"].items():
        if n:
            hint = DROP_HINTS.get(reason)
            notes.append(f"{_calls(n)} of the task dropped: {DROP_REASONS[reason]}" + (f"; {hint}" if hint else ""))
    return notes


def write_dataset(dataset: Dataset, document: dict[str, Any], out: Path) -> list[Path]:
    """Write the two JSONL files, `card.json` and `README.md` into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, part in (("train.jsonl", dataset.train), ("validation.jsonl", dataset.validation)):
        (out / name).write_bytes(b"".join(orjson.dumps(example.line) + b"\n" for example in part))
        written.append(out / name)
    (out / "card.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    (out / "README.md").write_text(readme(document), encoding="utf-8")
    return [*written, out / "card.json", out / "README.md"]


def readme(document: dict[str, Any]) -> str:
    """The card for people, in Markdown."""
    task, counts = document["task"], document["counts"]
    return "\n".join([
        f"# Fine-tuning data for task `{task['name']}` ({task['id']})", "",
        (f"Exported {document['exported_at']} by `minigate dataset export` from the call log: "
         f"{counts['train']} training and {counts['validation']} validation examples in OpenAI's chat "
         "fine-tuning format (`train.jsonl`, `validation.jsonl`; one `{\"messages\", \"tools\"}` object a line)."),
        "", *_how_made(document), "", *_left_out(document), *_tokens_and_models(document), "",
        *_redaction_section(document), "", *_how_to_train(document), "",
    ])


def card_table(document: dict[str, Any]) -> Table:
    """The summary a person reads at the end of an export: what became of the calls, tokens, split."""
    task, tokens = document["task"], document["tokens"]
    table = Table(title=f"dataset for task {task['name']} ({task['id']})")
    table.add_column("")
    table.add_column("value", justify="right")
    for label, value in _count_rows(document):
        table.add_row(label, str(value))
    for part in ("prompt", "completion"):
        stats = tokens[part]
        table.add_row(f"{part} tokens p50 / p95", f"{stats['p50']} / {stats['p95']}")
    table.add_row("period", f"{document['period']['first']} .. {document['period']['last']}")
    table.add_row("placeholders", ", ".join(f"{kind} {found['occurrences']}" for kind, found in
                                            document["redaction"]["placeholders"].items()) or "none")
    return table


def _count_rows(document: dict[str, Any]) -> list[tuple[str, int]]:
    counts = document["counts"]
    reasons: dict[str, str] = {reason: text for reason, text in DROP_REASONS.items()}
    rows = [("calls read", counts["calls_read"]), ("calls of the task", counts["calls_of_task"])]
    rows += [(f"dropped: {reasons[reason]}", n) for reason, n in counts["dropped"].items() if n]
    return rows + [("selected", counts["selected"]), ("exact duplicates removed", counts["exact_duplicates"]),
                   (f"near-duplicates removed (Jaccard ≥ {document['near_duplicates']['jaccard']})",
                    counts["near_duplicates"]),
                   ("train", counts["train"]), ("validation", counts["validation"])]


def _not_of_task(dataset: Dataset) -> dict[str, Any]:
    counts = dataset.counts
    return {
        "other_tasks": counts.other_tasks,
        "shared_signature": [{"tasks": [{"id": key, "name": dataset.names.get(key, key)} for key in holders],
                              "calls": n} for holders, n in counts.shared.most_common()],
        "unmatched": counts.unmatched, "unmatched_before_catalogue": counts.unmatched_before_catalogue,
        "catalogue_discovered_at": dataset.discovered_at,
        "unknown_task_ids": dict(counts.unknown_ids.most_common()),
    }


def _shared_note(group: dict[str, Any], task: str) -> str:
    tasks = [f"{entry['id']} ({entry['name']})" for entry in group["tasks"]]
    others = " ".join(entry["id"] for entry in group["tasks"] if entry["id"] != task)
    every = "both" if len(tasks) == 2 else "all"
    return (f"{_calls(group['calls'])} logged as `unknown` with a signature that tasks {', '.join(tasks[:-1])} and "
            f"{tasks[-1]} {every} list: none was taken; if they are one task, `minigate tasks merge {task} {others}`; "
            "if not, re-run `minigate tasks discover` so that each signature belongs to one task")


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _how_made(document: dict[str, Any]) -> list[str]:
    selection, split, period = (document[key] for key in ("selection", "split", "period"))
    teachers = "any tier" if selection["tiers"] == "all" else "a frontier-tier model"
    window = f"{selection['since'] or 'the start of the log'} to {selection['until'] or 'now'}"
    return [
        "## How it was made", "",
        f"Calls logged from {window}; the examples' calls span {period['first']} to {period['last']}. "
        f"Kept: replies by {teachers}"
        + ("" if selection["include_errors"] else " with status 200")
        + " that finished (`stop` or `tool_calls`)"
        + (f", at most {selection['max_tokens']} tokens" if selection["max_tokens"] is not None else "")
        + (f", feedback at least {selection['min_feedback']}" if selection["min_feedback"] is not None else "")
        + ". Near-duplicates: " + document["near_duplicates"]["method"] + "; the later of two goes. "
        f"Split: {split['validation_share']:.0%} held out for validation (at least one example), stratified by "
        f"{split['stratified_by']} "
        f"({split['strata']} strata), seed {split['seed']}.", "",
        "| step | calls |", "|---|---:|", *(f"| {name} | {n} |" for name, n in _count_rows(document)),
    ]


def _left_out(document: dict[str, Any]) -> list[str]:
    notes = skip_notes(document)
    return ["## Calls left out", "", *(f"- {note}" for note in notes), ""] if notes else []


def _tokens_and_models(document: dict[str, Any]) -> list[str]:
    tokens = document["tokens"]
    lines = ["## Tokens", "", "| tokens per example | p50 | p95 | max |", "|---|---:|---:|---:|"]
    for part in ("prompt", "completion"):
        stats = tokens[part]
        lines.append(f"| {part} | {stats['p50']} | {stats['p95']} | {stats['max']} |")
    lines += ["", f"{tokens['total']} tokens in all (logged usage; an estimate where the upstream gave none).",
              "", "## Teachers", "", "| model | examples |", "|---|---:|"]
    return lines + [f"| {model} | {n} |" for model, n in document["models"].items()]


def _redaction_section(document: dict[str, Any]) -> list[str]:
    redaction = document["redaction"]
    lines = ["## Redaction", "",
             ("PII was replaced by typed placeholders when the calls were logged, and stays replaced: "
              f"{redaction['examples_with_placeholders']} examples hold placeholders.")]
    if redaction["placeholders"]:
        lines += ["", "| placeholder | occurrences | examples |", "|---|---:|---:|"]
        lines += [f"| `<{kind}_n>` | {found['occurrences']} | {found['examples']} |"
                  for kind, found in redaction["placeholders"].items()]
    lines += ["", ("`minigate finetune` trains on made-up values of each placeholder's kind, the same one wherever "
                   "a placeholder recurs in an example: the model reads text as live traffic has it and learns to "
                   "copy a value its reply repeats (`--no-surrogates` trains on the placeholders).")]
    return lines


def _how_to_train(document: dict[str, Any]) -> list[str]:
    return _HOW_TO_TRAIN.format(task=document["task"]["name"]).splitlines()


def _stats(values: Sequence[int]) -> dict[str, int | None]:
    """Nearest-rank percentiles: values that occurred, the same on every run."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "max": None}
    rank = {p: ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] for p in (50, 95)}
    return {"p50": rank[50], "p95": rank[95], "max": ordered[-1]}


def _redaction(examples: Sequence[Example]) -> dict[str, Any]:
    occurrences: Counter[str] = Counter()
    holding: Counter[str] = Counter()
    with_any = 0
    for example in examples:
        found = Counter(PLACEHOLDER.findall(orjson.dumps(example.line).decode()))
        occurrences.update(found)
        holding.update(found.keys())
        with_any += bool(found)
    return {"examples_with_placeholders": with_any,
            "placeholders": {kind: {"occurrences": n, "examples": holding[kind]} for kind, n in
                             sorted(occurrences.items(), key=lambda item: (-item[1], item[0]))}}


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")
