"""A classifier task to fine-tune on: BANKING77 messages of 10 intents, the reply one label.

The classifier step of tests/support/agent_workload.py as chat fine-tuning data (what `minigate dataset
export` writes for it): `per_intent` messages of each intent from the shared train split, drawn with a
seed, a fifth of each intent held out. bench/finetune trains on it and judges the adapter through the
gateway; scripts/vllm-cpu trains one for vLLM and checks it on the held-out part.

    python -m tests.support.banking_task DIR [--per-intent 50]   # writes DIR/train.jsonl, DIR/validation.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path
from typing import Any

from tests.support.agent_workload import CLASSIFY, DATA, INTENTS, missing_data

__all__ = ["HELD_OUT", "classifier_examples", "write_split"]

HELD_OUT = 0.2


def classifier_examples(per_intent: int, *, seed: int = 0,
                        data: Path = DATA) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out) chat fine-tuning rows, stratified by intent."""
    with (data / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        by_intent: dict[str, list[str]] = {}
        for row in csv.DictReader(handle):
            by_intent.setdefault(row["category"], []).append(row["text"])
    rng = random.Random(seed)
    system = CLASSIFY.format(labels=", ".join(INTENTS))
    train, held_out = [], []
    for intent in INTENTS:
        cut = round(per_intent * HELD_OUT)
        for number, text in enumerate(rng.sample(by_intent[intent], per_intent)):
            row = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text},
                                {"role": "assistant", "content": intent}]}
            (held_out if number < cut else train).append(row)
    rng.shuffle(train)
    return train, held_out


def write_split(out: Path, per_intent: int, *, seed: int = 0) -> tuple[int, int]:
    """train.jsonl and validation.jsonl in `out`, as `dataset export` lays them out; their sizes."""
    train, held_out = classifier_examples(per_intent, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", held_out)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return len(train), len(held_out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-intent", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reason = missing_data()
    if reason:
        raise SystemExit(f"banking_task: {reason}")
    train, held_out = write_split(args.out, args.per_intent, seed=args.seed)
    print(f"{args.out}: {train} training and {held_out} held-out examples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
