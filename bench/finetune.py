"""bench/finetune: a classifier miniature made by `minigate finetune`, judged through the gateway.

The task is tests/support/banking_task.py, the classifier step of the agent workload: BANKING77
messages (the shared train split) of 10 intents, a system prompt listing the labels, the reply one
label. `--per-intent` messages of each intent are drawn with a seed; a fifth of them are held out.

1. `minigate finetune --data DIR --epochs E` on the training part, timed with wait4 (wall time and the
   job's peak RSS); its card gives training time, steps, and torch's own validation scores.
2. `minigate serve` on a config that serves the untuned base and the adapter (`{upstream: local,
   adapter: ..., path: DIR}`) from one supervised llama.cpp child; every held-out message goes through
   the gateway with the openai SDK to both (temperature 0), and the reply is compared with the label
   (exact match after trimming whitespace).

Figures: exact-match labels base vs tuned through the gateway, with Wilson 95% intervals; training wall
time per epoch per 1,000 examples; peak RSS; the llama.cpp-vs-torch parity of the card. Targets on a
2-core machine: tuned >= 95%, <= 10 min per epoch of 1,000 short examples, <= 4 GB peak RSS.

    bench/finetune [--per-intent 80] [--epochs 3] [--device cpu]

Prints a table and writes bench/results/finetune.json (and the loss curve, finetune-loss.png).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.support.agent_workload import missing_data  # noqa: E402
from tests.support.banking_task import write_split  # noqa: E402

from minigate.router.agreement import wilson

BASE = "smollm2-135m-instruct"
TUNED = "banking-intents"
TARGETS = {"tuned_exact_match": 0.95, "minutes_per_epoch_per_1000": 10.0, "peak_rss_mb": 4096}


def finetune(data: Path, out: Path, epochs: float, device: str) -> dict[str, Any]:
    """Run the real command; its card, plus the process's own wall time and peak RSS."""
    minigate = Path(sys.executable).with_name("minigate")
    command = [str(minigate), "finetune", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
               "--device", device, "--json"]
    started = time.perf_counter()
    with (data / "finetune.out").open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=None)
        _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"minigate finetune failed (exit status {status})")
    card: dict[str, Any] = json.loads((out / "card.json").read_text())
    card["process"] = {"wall_s": round(time.perf_counter() - started, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    return card


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(adapter: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`minigate serve` with the base and the adapter on the local upstream; returns once both answer."""
    port = free_port()
    config = workdir / "minigate.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        "upstreams:\n  local: {kind: llamacpp, model: smollm2-135m-instruct}\n"
        "models:\n"
        f"  base: {{upstream: local, model: {BASE}, tier: miniature}}\n"
        f"  tuned: {{upstream: local, adapter: {TUNED}, path: {adapter}, tier: miniature}}\n"
        f"routes:\n  {BASE}: {{default: base}}\n  {TUNED}: {{default: tuned}}\n"
        f"logging: {{store: 'sqlite:///{workdir / 'calls.db'}'}}\n")
    minigate = Path(sys.executable).with_name("minigate")
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen([str(minigate), "serve", "--config", str(config), "--log-level", "warning"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"minigate serve exited: {(workdir / 'serve.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, f"{url}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"minigate serve not ready in 240 s: {(workdir / 'serve.log').read_text()[-2000:]}")


def exact_match(base_url: str, model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each held-out message through the gateway; the reply must be the label."""
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    right, wrong, seconds = 0, [], []
    for row in rows:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=row["messages"][:-1], temperature=0,
                                               max_tokens=16)
        seconds.append(time.perf_counter() - started)
        said, label = (reply.choices[0].message.content or "").strip(), row["messages"][-1]["content"]
        if said == label:
            right += 1
        elif len(wrong) < 5:
            wrong.append({"label": label, "said": said[:80]})
    n = len(rows)
    return {"n": n, "right": right, "exact_match": round(right / n, 4), "interval_95": list(wilson(right, n)),
            "latency_p50_ms": round(1000 * sorted(seconds)[n // 2], 1), "wrong_examples": wrong}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-intent", type=int, default=80, help="messages per intent (a fifth held out)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reason = missing_data()
    if reason:
        print(f"bench/finetune: {reason}: nothing measured")
        return 0
    with tempfile.TemporaryDirectory(prefix="minigate-finetune-bench-") as tmp:
        work = Path(tmp)
        data = work / "data"
        train, validation = write_split(data, args.per_intent, seed=args.seed)
        held_out = [json.loads(line) for line in (data / "validation.jsonl").read_text().splitlines()]
        adapter = work / TUNED
        print(f"minigate finetune: {train} training, {validation} held-out examples, {args.epochs} epochs",
              flush=True)
        card = finetune(data, adapter, args.epochs, args.device)
        shutil.copy(adapter / "loss.png", HERE / "results" / "finetune-loss.png") if (adapter / "loss.png").exists() \
            else None
        print("through minigate serve ...", flush=True)
        server, base_url = serve(adapter, work)
        try:
            gateway = {"base": exact_match(base_url, BASE, held_out), "tuned": exact_match(base_url, TUNED, held_out)}
        finally:
            server.terminate()
            server.wait(30)
    report(card, gateway, args)
    return 0


def report(card: dict[str, Any], gateway: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    training = card["training"]
    per_1000 = training["wall_s"] / max(training["epochs_done"], 1e-9) / (card["data"]["train"] / 1000) / 60
    figures = {
        "tuned_exact_match": gateway["tuned"]["exact_match"],
        "minutes_per_epoch_per_1000": round(per_1000, 2),
        "peak_rss_mb": card["process"]["peak_rss_mb"],
    }
    print(f"\n{'through the gateway':<28}{'exact match':>14}{'95% interval':>18}{'p50 latency':>14}")
    for who in ("base", "tuned"):
        scores = gateway[who]
        low, high = scores["interval_95"]
        print(f"{who:<28}{scores['right']:>6}/{scores['n']:<4}{scores['exact_match']:>4.0%}"
              f"{f'{low:.1%}–{high:.1%}':>18}{scores['latency_p50_ms']:>11} ms")
    validation = card["validation"]
    print(f"{'in torch (card)':<28}base {validation['base']['agreement']:.1%}, tuned {validation['tuned']['agreement']:.1%}"
          f"; llama.cpp gives torch's answer on {card['gguf_parity'].get('share', 0):.1%}")
    print(f"training: {card['data']['train']} examples, {training['steps']} steps, {training['epochs_done']} epochs in "
          f"{training['wall_s']} s on {card['threads']} threads ({card['device']}); the whole job "
          f"{card['process']['wall_s']} s")
    print(f"\n{'target':<30}{'measured':>12}{'target':>10}")
    for name, value in figures.items():
        bar = TARGETS[name]
        met = value >= bar if name == "tuned_exact_match" else value <= bar
        print(f"{name:<30}{value:>12}{bar:>10}  {'met' if met else 'MISSED'}")
    out = {"benchmark": "finetune", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "nproc": os.cpu_count(),
           "args": vars(args), "figures": figures, "targets": TARGETS, "gateway": gateway,
           "card": {key: card[key] for key in ("base", "data", "hyper", "device", "threads", "training", "validation",
                                               "gguf_parity", "wall_s", "peak_rss_mb", "process")}}
    out["card"]["training"] = {key: value for key, value in training.items() if key != "losses"}
    (HERE / "results" / "finetune.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
