"""How well `minigate redact` finds PII, and how fast: Presidio's synthetic dataset through the real CLI.

    bench/redaction                       # the dataset beside the repository, ../shared/data/presidio_synth
    bench/redaction --dataset FILE --rounds 5

Every record goes through `minigate redact` as JSONL on stdin (a subprocess, as a user would run it);
its spans are scored against the gold spans. Matching rule: a predicted span counts for a gold span of
the same entity type when the two overlap by at least one character, so a phone number found without
its "(0)" or an address-boundary disagreement is not a miss. Precision = predicted spans of a type that
match some gold span of that type; recall = gold spans of a type matched by some predicted span.
F2 weighs recall four times precision: for redaction a miss leaks, a false alarm only hides a word.
Every type in the dataset is listed, the ones minigate does not detect included, so gaps are visible.

Person names and street addresses are recognised by hand-set rules whose weights were tuned on half of
the dataset's templates (a seeded split by `template_id`); their scores are also reported on each half,
so the held-out half shows how far the rules generalise.

Throughput is measured in-process too (the CLI figure includes interpreter start-up): the dataset's
texts one by one, the same texts joined into one long document, and call records shaped like the
logger's (a chat request of ten messages and a tool call with JSON arguments, through `redact_json`
with one placeholder state per record). Prints tables and writes
bench/results/redaction.json.

Adversarial rows (issue 13): `a@` repeated to 64 KiB, 1 MiB and 16 MiB, once through
`Redactor.redact` without a budget (µs per byte: what one string costs) and once as a chat request
sealed by the call log's `Sealer` with its per-record redaction budget (seal time per record, and
the bytes withheld once the budget was spent). `--adversarial-only` runs just these rows (no
dataset needed) and writes bench/results/redaction_adversarial.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from minigate.logger.crypto import generate_key
from minigate.logger.records import CallRecord
from minigate.logger.redact import ENTITY_TYPES, REDACTION_BUDGET_S, Redactor
from minigate.logger.seal import Sealer
from minigate.logger.settings import LoggingSection

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "data" / "presidio_synth" / "synth_dataset_v2.json"
RESULTS = ROOT / "bench" / "results" / "redaction.json"
ADVERSARIAL_RESULTS = ROOT / "bench" / "results" / "redaction_adversarial.json"
ADVERSARIAL_SIZES = (64 << 10, 1 << 20, 16 << 20)  # bytes of `a@a@...`
MINIGATE = ROOT / ".venv" / "bin" / "minigate"
TARGETS = {t: (0.95, 0.98) for t in ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")}
TARGETS["PERSON"] = (0.0, 0.80)
TUNED_TYPES = ("PERSON", "STREET_ADDRESS")  # rules tuned on the `tuning` half of the templates


@dataclass
class TypeScore:
    """Counts and rates for one entity type; rates are None where nothing was there to divide by."""

    type: str
    detected: bool
    gold: int
    predicted: int
    gold_found: int
    predicted_correct: int
    precision: float | None
    recall: float | None
    f2: float | None
    target: str
    meets_target: bool | None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET, help=f"Presidio-research JSON (default {DATASET})")
    parser.add_argument("--rounds", type=int, default=5, help="in-process throughput rounds; the best counts")
    parser.add_argument("--adversarial-only", action="store_true", help="only the adversarial rows (no dataset)")
    args = parser.parse_args()
    adversarial = adversarial_rows()
    print_adversarial(adversarial)
    write_adversarial(adversarial)
    if args.adversarial_only:
        return 0
    if not args.dataset.is_file():
        print(f"dataset not found: {args.dataset}", file=sys.stderr)
        return 2
    records = json.loads(args.dataset.read_text(encoding="utf-8"))
    texts = [record["full_text"] for record in records]
    predicted, cli_seconds = run_cli(texts)
    scores = score(records, predicted)
    halves = split_scores(records, predicted)
    speed = throughput(texts, args.rounds)
    speed["cli_end_to_end_chars_per_s"] = sum(map(len, texts)) / cli_seconds
    speed["cli_seconds"] = cli_seconds
    print_report(scores, speed, len(records))
    print_halves(halves)
    write_results(args.dataset, scores, speed, len(records), halves)
    return 0


def run_cli(texts: list[str]) -> tuple[list[list[dict[str, Any]]], float]:
    """Pipe the texts through `minigate redact` as JSONL; the spans per record, and the wall time."""
    stdin = "".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(texts))
    command = [str(MINIGATE) if MINIGATE.exists() else "minigate", "redact"]
    started = time.perf_counter()
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=True, timeout=600)
    seconds = time.perf_counter() - started
    spans: list[list[dict[str, Any]]] = [[] for _ in texts]
    for line in done.stdout.splitlines():
        record = json.loads(line)
        spans[record["id"]] = record["spans"]
    return spans, seconds


def score(records: list[dict[str, Any]], predicted: list[list[dict[str, Any]]]) -> list[TypeScore]:
    gold_all, gold_found, pred_all, pred_correct = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    for record, preds in zip(records, predicted):
        gold = [(g["start_position"], g["end_position"], g["entity_type"]) for g in record["spans"]]
        pred = [(p["start"], p["end"], p["type"]) for p in preds]
        for start, end, kind in gold:
            gold_all[kind] += 1
            gold_found[kind] += any(k == kind and s < end and start < e for s, e, k in pred)
        for start, end, kind in pred:
            pred_all[kind] += 1
            pred_correct[kind] += any(k == kind and s < end and start < e for s, e, k in gold)
    kinds = sorted({*gold_all, *pred_all, *ENTITY_TYPES}, key=lambda k: (k not in ENTITY_TYPES, -gold_all[k], k))
    return [_type_score(k, gold_all[k], gold_found[k], pred_all[k], pred_correct[k]) for k in kinds]


def split_scores(records: list[dict[str, Any]], predicted: list[list[dict[str, Any]]]) -> dict[str, list[TypeScore]]:
    """The tuned types scored on the tuning half of the templates and on the held-out half."""
    templates = sorted({record["template_id"] for record in records})
    random.Random(0).shuffle(templates)
    tuning = set(templates[: len(templates) // 2])
    halves: dict[str, list[TypeScore]] = {}
    for half, is_tuning in (("tuning", True), ("held_out", False)):
        chosen = [i for i, record in enumerate(records) if (record["template_id"] in tuning) == is_tuning]
        scored = score([records[i] for i in chosen], [predicted[i] for i in chosen])
        halves[half] = [s for s in scored if s.type in TUNED_TYPES]
    return halves


def _type_score(kind: str, gold: int, found: int, predicted: int, correct: int) -> TypeScore:
    precision = correct / predicted if predicted else None
    recall = found / gold if gold else None
    f2 = None
    if recall == 0.0:
        f2 = 0.0  # nothing found: whatever the precision, F2 is 0
    elif precision is not None and recall is not None:
        f2 = 5 * precision * recall / (4 * precision + recall)
    target, meets = "", None
    if kind in TARGETS:
        min_p, min_r = TARGETS[kind]
        target = f"R>={min_r:.2f}" + (f" P>={min_p:.2f}" if min_p else "")
        meets = (recall or 0.0) >= min_r and (precision if precision is not None else 1.0) >= min_p
    return TypeScore(kind, kind in ENTITY_TYPES, gold, predicted, found, correct, precision, recall, f2, target, meets)


def throughput(texts: list[str], rounds: int) -> dict[str, float]:
    """chars/s of `Redactor.redact`, best of `rounds`: record by record, then as one long document."""
    redactor = Redactor()
    document = "\n".join(texts)
    chars = len(document) - len(texts) + 1
    best_records = best_document = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for text in texts:
            redactor.redact(text)
        best_records = min(best_records, time.perf_counter() - started)
        started = time.perf_counter()
        redactor.redact(document)
        best_document = min(best_document, time.perf_counter() - started)
    calls = [_chat_record(texts[i : i + 10]) for i in range(0, len(texts) - 10, 10)]
    call_chars = sum(len(json.dumps(call)) for call in calls)
    best_calls = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for call in calls:
            redactor.redact_json(call)
        best_calls = min(best_calls, time.perf_counter() - started)
    return {
        "call_records_per_s": len(calls) / best_calls,
        "call_record_json_chars": call_chars / len(calls),
        "records_chars_per_s": chars / best_records,
        "records_per_s": len(texts) / best_records,
        "document_chars_per_s": len(document) / best_document,
        "mean_record_chars": chars / len(texts),
    }


def _chat_record(texts: list[str]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)]
    arguments = json.dumps({"query": texts[0], "limit": 5})
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_2mLq0b3QxZ7pN9rT5vW8yK1s", "type": "function", "function": {"name": "search", "arguments": arguments}}
    ]})  # fmt: skip
    return {"model": "gpt-4.1", "messages": messages, "temperature": 0.2}


def adversarial_rows() -> list[dict[str, Any]]:
    """Per size of `a@a@...`: unbudgeted redaction cost per byte, and one sealed record's time."""
    sealer = Sealer.from_settings(LoggingSection(encryption_key=generate_key()))  # type: ignore[arg-type]
    redactor = Redactor()
    redactor.redact("warm-up: Jane Doe, jane@example.com")  # the lexicons load once, not in a row
    rows = []
    for size in ADVERSARIAL_SIZES:
        text = "a@" * (size // 2)
        started = time.perf_counter()
        redactor.redact(text)
        redact_s = time.perf_counter() - started
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
        record = CallRecord(request_id="bench", started_at=time.time(), key_name="k", route="r", model="m",
                            tier="frontier", task="t", rule="d", upstream="u", status=200, latency_s=0.1, stream=False,
                            request_body=body)
        started = time.perf_counter()
        sealer.seal(record)
        seal_s = time.perf_counter() - started
        assert sealer.cipher is not None and record.request_payload is not None
        stored = sealer.cipher.decrypt(record.request_payload, b"bench").decode()
        rows.append({"bytes": size, "redact_s": redact_s, "us_per_byte": redact_s / size * 1e6, "seal_s": seal_s,
                     "budget_s": REDACTION_BUDGET_S, "budget_exceeded": "REDACTION BUDGET EXCEEDED" in stored})
    return rows


def print_adversarial(rows: list[dict[str, Any]]) -> None:
    print(f"Adversarial text (`a@` repeated): redaction without a budget, and one chat request sealed "
          f"(budget {REDACTION_BUDGET_S:g} s per record)")
    print(f"  {'size':>9s}  {'redact':>8s}  {'us/byte':>7s}  {'seal':>7s}  budget spent")
    for row in rows:
        print(f"  {row['bytes'] >> 10:>6d} KiB  {row['redact_s']:>7.2f}s  {row['us_per_byte']:>7.3f}  "
              f"{row['seal_s']:>6.2f}s  {'yes: the rest withheld' if row['budget_exceeded'] else 'no'}")
    print()


def write_adversarial(rows: list[dict[str, Any]]) -> None:
    ADVERSARIAL_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "redaction_adversarial",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "input": "'a@' repeated; redact_s: Redactor.redact on the string, no budget; seal_s: Sealer.seal of a "
                 "chat request holding it, with the per-record redaction budget",
        "rows": rows,
    }
    ADVERSARIAL_RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {ADVERSARIAL_RESULTS.relative_to(ROOT)}")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(scores: list[TypeScore], speed: dict[str, float], records: int) -> None:
    headers = ["entity type", "detected", "gold", "predicted", "precision", "recall", "F2", "target", "met"]
    rows = [
        [s.type, "yes" if s.detected else "no", str(s.gold), str(s.predicted), _rate(s.precision), _rate(s.recall),
         _rate(s.f2), s.target, {True: "yes", False: "NO", None: ""}[s.meets_target]]
        for s in scores
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    print(f"Redaction quality: {records} records of Presidio's synthetic dataset through `minigate redact`")
    for row in [headers, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print()
    print(f"Throughput: {speed['records_chars_per_s'] / 1e6:.2f} M chars/s record by record "
          f"({speed['records_per_s']:,.0f} records/s, {speed['mean_record_chars']:.0f} chars each), "
          f"{speed['document_chars_per_s'] / 1e6:.2f} M chars/s as one document; "
          f"{speed['call_records_per_s']:,.0f} call records/s through redact_json "
          f"({speed['call_record_json_chars']:,.0f} JSON chars each); "
          f"CLI end to end {speed['cli_end_to_end_chars_per_s'] / 1e6:.2f} M chars/s "
          f"({speed['cli_seconds']:.2f} s, start-up included)")  # fmt: skip


def print_halves(halves: dict[str, list[TypeScore]]) -> None:
    print("Rules tuned on half of the templates; the other half held out:")
    for half, scores in halves.items():
        for s in scores:
            print(f"  {half:9s} {s.type:15s} gold {s.gold:4d}  precision {_rate(s.precision)}  recall {_rate(s.recall)}"
                  f"  F2 {_rate(s.f2)}")  # fmt: skip
    print()


def write_results(
    dataset: Path, scores: list[TypeScore], speed: dict[str, float], records: int, halves: dict[str, list[TypeScore]]
) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "redaction",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "dataset": {"path": str(dataset), "records": records},
        "matching": "a predicted span matches a gold span of the same type when they overlap",
        "types": [asdict(s) for s in scores],
        "template_split": {half: [asdict(s) for s in scored] for half, scored in halves.items()},
        "throughput": speed,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
