"""bench/local_miniature: the embedded default's CPU miniature, through minigate and direct, in one run.

Starts (1) `minigate serve` on the embedded default config, which starts and supervises its llama.cpp
child, and (2) the same llama.cpp server (`python -m llama_cpp.server`, same GGUF, threads and context)
on its own. For each: cold start to the first streamed token (process spawn to the first content
chunk of the first request), then over N streamed requests the time to first token and the decode
rate (tokens/s, from the server's usage), and the RSS of the process tree at the end (minigate's
includes its llama child, and is also shown split).

    bench/local_miniature [--requests 10] [--max-tokens 64]

Prints a table and writes bench/results/local_miniature.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead_proc import Server, descendants, rss_bytes, stop_server  # noqa: E402

from minigate.serving.llamacpp import LlamaCppSettings, default_gguf_path  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPT = "List three fruits, one per line."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_token(base_url: str, model: str, max_tokens: int, timeout_s: float) -> tuple[float, float, int] | None:
    """One streamed request: (seconds to the first content chunk, seconds in all, completion tokens).

    Tokens come from the usage chunk when the server sends one; llama-cpp-python's server does not, and
    streams one token per content chunk, so content chunks are counted instead.
    """
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": PROMPT}]}
    started = time.perf_counter()
    ttft, tokens, chunks = None, 0, 0
    try:
        with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=timeout_s) as response:
            if response.status_code != 200:
                return None
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    chunks += 1
                    ttft = ttft or time.perf_counter() - started
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens", 0)
    except httpx.HTTPError:
        return None
    return (ttft, time.perf_counter() - started, tokens or chunks) if ttft is not None else None


def start(name: str, command: list[str], base_url: str, model: str, workdir: Path) -> Server:
    """Spawn and poll with real requests until the first token arrives: that is the cold start."""
    import subprocess

    log = workdir / f"{name}.log"
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=workdir,
                                   start_new_session=True, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "OPENAI_API_KEY": ""})
    while first_token(base_url, model, 4, 30.0) is None:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() - started > 180:
            raise RuntimeError(f"{name} gave no token in 180 s: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return Server(name, process, 0, log, time.monotonic() - started)


def measure(server: Server, base_url: str, model: str, requests: int, max_tokens: int) -> dict[str, object]:
    runs = [first_token(base_url, model, max_tokens, 120.0) for _ in range(requests)]
    good = [run for run in runs if run is not None]
    ttfts = sorted(run[0] for run in good)
    rates = [run[2] / (run[1] - run[0]) for run in good if run[2] > 1 and run[1] > run[0]]
    tree = descendants(server.process.pid)
    return {
        "cold_start_to_first_token_s": round(server.startup_s, 3),
        "requests": requests, "errors": requests - len(good),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1) if ttfts else None,
        "ttft_max_ms": round(1000 * ttfts[-1], 1) if ttfts else None,
        "decode_tokens_per_s": round(statistics.median(rates), 1) if rates else None,
        "rss_mib": round(rss_bytes(server.process.pid) / 2**20, 1),
        "rss_mib_own": round(_own_rss(server.process.pid) / 2**20, 1),
        "processes": len(tree),
    }


def _own_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads for both (default: the default's)")
    args = parser.parse_args()
    settings = LlamaCppSettings(model_path=default_gguf_path())
    if args.threads:
        settings = LlamaCppSettings(model_path=settings.model_path, threads=args.threads, context=settings.context)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="minigate-local-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        config = workdir / "minigate.yaml"
        from minigate.examples import __file__ as examples_init

        text = (Path(examples_init).parent / "minigate.yaml").read_text().replace("port: 8080", f"port: {port}")
        text = text.replace("kind: llamacpp,", f"kind: llamacpp, threads: {settings.threads},")
        config.write_text(text)
        minigate = Path(sys.executable).with_name("minigate")
        direct_port = free_port()
        direct = [sys.executable, "-m", "llama_cpp.server", "--model", str(settings.model_path), "--host", "127.0.0.1",
                  "--port", str(direct_port), "--n_ctx", str(settings.context), "--n_threads", str(settings.threads),
                  "--n_threads_batch", str(settings.threads), "--verbose", "False"]
        for name, command, base_url, model in (
            ("minigate", [str(minigate), "serve", "--config", str(config), "--log-level", "warning"],
             f"http://127.0.0.1:{port}/v1", "smollm2-135m-instruct"),
            ("llama.cpp direct", direct, f"http://127.0.0.1:{direct_port}/v1", "smollm2-135m-instruct"),
        ):
            server = start(name, command, base_url, model, workdir)
            try:
                results[name] = measure(server, base_url, model, args.requests, args.max_tokens)
            finally:
                stop_server(server)
    report(results, args)
    return 0


def report(results: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    columns = ["cold_start_to_first_token_s", "ttft_p50_ms", "ttft_max_ms", "decode_tokens_per_s", "rss_mib",
               "rss_mib_own", "errors"]
    width = max(len(c) for c in columns)
    print(f"{'':{width}}  " + "  ".join(f"{name:>18}" for name in results))
    for column in columns:
        print(f"{column:{width}}  " + "  ".join(f"{str(row[column]):>18}" for row in results.values()))
    out = {"benchmark": "local_miniature", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "nproc": os.cpu_count(),
           "threads": args.threads,
           "prompt": PROMPT, "max_tokens": args.max_tokens, "results": results}
    (HERE / "results" / "local_miniature.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
