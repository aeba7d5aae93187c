"""Logged traffic for the conversion tutorial (docs/conversion.md), with no API key.

An agent's intent-classifier step calls `gpt-4.1-mini` through `minigate serve`; a stand-in teacher (our
OpenAI-protocol test upstream, answering each call with its BANKING77 label) plays the frontier model.
The script starts the teacher, starts `minigate serve` on the config given (its frontier upstream pointed
at the teacher through MINIGATE_FRONTIER_BASE_URL, as the example config reads it), sends the calls with
the openai SDK, and stops both. The calls stay in the config's log store for `tasks discover`,
`dataset export` and `finetune`.

    python examples/conversion/classifier_traffic.py --config minigate.yaml [--per-intent 80]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests/support holds the teacher
from tests.support.banking_task import classifier_examples  # noqa: E402
from tests.support.upstream import Script, ScriptedUpstream  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="the gateway's config (its frontier: the teacher)")
    parser.add_argument("--per-intent", type=int, default=80, help="calls per intent, 10 intents")
    parser.add_argument("--model", default="gpt-4.1-mini", help="the model name the agent asks for")
    args = parser.parse_args()
    train, held_out = classifier_examples(args.per_intent)
    calls = train + held_out
    port = free_port()
    with ScriptedUpstream(models=["gpt-4.1-mini"]) as teacher:
        env = {**os.environ, "MINIGATE_FRONTIER_BASE_URL": teacher.base_url, "OPENAI_API_KEY": "teacher",
               "MINIGATE_PORT": str(port)}
        config = args.config.read_text().replace("port: 8080", f"port: {port}")
        serving = args.config.with_name(f".{args.config.name}.traffic")
        serving.write_text(config)
        gateway = subprocess.Popen([sys.executable, "-m", "minigate.cli", "serve", "--config", str(serving),
                                    "--log-level", "warning"], env=env)
        try:
            _wait_ready(f"http://127.0.0.1:{port}", gateway)
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            started = time.monotonic()
            for number, call in enumerate(calls, start=1):
                teacher.enqueue(Script(reply=call["messages"][-1]["content"]))
                client.chat.completions.create(model=args.model, messages=call["messages"][:-1], temperature=0)
                if number % 100 == 0 or number == len(calls):
                    print(f"{number}/{len(calls)} calls sent", file=sys.stderr, flush=True)
            print(f"{len(calls)} classifier calls logged through minigate in {time.monotonic() - started:.0f} s")
        finally:
            gateway.terminate()
            gateway.wait(60)  # the gateway drains its log queue before it exits
            serving.unlink(missing_ok=True)
    return 0


def _wait_ready(url: str, gateway: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SystemExit(f"minigate serve exited with {gateway.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("minigate serve was not ready in 180 s")


if __name__ == "__main__":
    raise SystemExit(main())
