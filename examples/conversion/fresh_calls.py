"""Fresh classifier calls for the conversion tutorial (docs/conversion.md): messages the miniature never saw.

Sends `--calls` BANKING77 messages of the tutorial's 10 intents that are not among those
classifier_traffic.py logged, as the agent would (`model: gpt-4.1-mini`, the classifier's system prompt),
to a running `minigate serve`, and prints which model answered (the `x-minigate-model` header) and how
often the answer is the message's label.

    python examples/conversion/fresh_calls.py [--base-url http://127.0.0.1:8080/v1] [--calls 100]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections import Counter
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests/support holds the task
from tests.support.agent_workload import CLASSIFY, DATA, INTENTS  # noqa: E402
from tests.support.banking_task import classifier_examples  # noqa: E402


def fresh(count: int, logged_per_intent: int) -> list[tuple[str, str]]:
    """(message, label) pairs of the 10 intents, none of them among the logged calls."""
    train, held_out = classifier_examples(logged_per_intent)
    seen = {row["messages"][1]["content"] for row in train + held_out}
    with (DATA / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        unseen = [(row["text"], row["category"]) for row in csv.DictReader(handle)
                  if row["category"] in INTENTS and row["text"] not in seen]
    return random.Random(1).sample(unseen, min(count, len(unseen)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--logged-per-intent", type=int, default=80, help="what classifier_traffic.py was given")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)
    system = CLASSIFY.format(labels=", ".join(INTENTS))
    served, right = Counter(), Counter()
    for text, label in fresh(args.calls, args.logged_per_intent):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4.1-mini", temperature=0,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}])
        model = raw.headers.get("x-minigate-model", "?")
        served[model] += 1
        right[model] += (raw.parse().choices[0].message.content or "").strip() == label
    for model, calls in served.most_common():
        print(f"{model}: {calls} calls, {right[model]} answered with the right label ({right[model] / calls:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
