"""bench/router_micro: time to decide a request's model: features, escalation score and the rules of
examples/routing.yaml (seven rules, the canary split last), as the gateway does per request.

Conversations of about 200, 2k and 20k tokens, built from BANKING77 questions when ../shared/data is
there (else a fixed sentence); p50 and p99 over many runs. Targets: p50 <= 50 us, 200 us, 2 ms.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import sys
import time
from pathlib import Path

from minigate.config import load_config
from minigate.router.decision import Router

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
TARGETS_US = {200: 50.0, 2000: 200.0, 20000: 2000.0}
# Conversations are sized with the token count this benchmark started with (the router's first
# estimate_tokens), so that a change to the router's estimate doesn't change what is measured.
_SIZING_PIECES = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]{1,2}")


def sizing_tokens(text: str) -> int:
    pieces = _SIZING_PIECES.findall(text)
    return len(pieces) + sum(len(p) // 7 for p in pieces if len(p) > 7)


def sentences() -> list[str]:
    if DATA.is_file():
        with DATA.open() as handle:
            return [row[0] for row in list(csv.reader(handle))[1:]]
    return ["Why has my card payment been declined twice at the same shop?"]


def conversation(tokens: int, pool: list[str]) -> dict[str, object]:
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a bank's support agent."}]
    i = 0
    while sum(sizing_tokens(m["content"]) for m in messages) < tokens:
        picked = [pool[(i + k) % len(pool)] for k in range(5)]  # wraps round the one-sentence fallback
        messages.append({"role": "user" if len(messages) % 2 else "assistant", "content": " ".join(picked)})
        i += 5
    return {"model": "gpt-4.1", "messages": messages}


def timings_us(router: Router, body: dict[str, object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        router.decide("gpt-4.1", body, {})
        samples.append((time.perf_counter_ns() - started) / 1000)
    return sorted(samples)


def main() -> int:
    pool = sentences()
    router = Router.from_config(load_config(Path(__file__).resolve().parents[1] / "examples" / "routing.yaml", {}))
    rows = []
    print(f"{'conversation':>14}{'messages':>10}{'p50 us':>10}{'p99 us':>10}{'target p50':>12}  result")
    for tokens, target in TARGETS_US.items():
        body = conversation(tokens, pool)
        samples = timings_us(router, body, 2000 if tokens < 20000 else 300)
        p50, p99 = statistics.median(samples), samples[int(len(samples) * 0.99) - 1]
        verdict = "PASS" if p50 <= target else "FAIL"
        print(f"{tokens:>9} tok.{len(body['messages']):>10}{p50:>10.1f}{p99:>10.1f}{target:>12.0f}  {verdict}")  # type: ignore[arg-type]
        rows.append({"tokens": tokens, "messages": len(body["messages"]), "p50_us": p50, "p99_us": p99,  # type: ignore[arg-type]
                     "target_p50_us": target})
    out = Path(__file__).resolve().parent / "results" / "router_micro.json"
    out.write_text(json.dumps({"benchmark": "router_micro", "stage": "features + score + 7 rules", "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
