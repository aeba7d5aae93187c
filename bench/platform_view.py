"""bench/platform_view: what a platform team sees after 1,000 scripted calls.

A real gateway (the one the tests start: uvicorn on a free port) routes agent traffic for `gpt-4.1`
through the scripted OpenAI-protocol upstream (tests/support/upstream.py): support questions (a
system prompt and a short question) go to a miniature priced by GPU hour, long analyses to gpt-4.1 at the bundled price table's price; 8 clients
send 1,000 calls, a tenth of them streamed; 30 miniature calls fail (escalated to gpt-4.1) and 10
frontier calls fail (the client sees a 502). Debian's `prometheus` scrapes the gateway every second.

Then it prints what each screen shows: the Cost & savings and Latency & reliability dashboards'
headline panels (their PromQL, evaluated by Prometheus), the same figures from the call log, and
`minigate report`'s page, screenshotted in headless Chromium.

Writes bench/results/platform_view.json, bench/results/platform_view-report.png.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.servers import run_gateway, write_config  # noqa: E402
from tests.support.upstream import Script, ScriptedUpstream  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DASHBOARDS = ROOT / "dashboards"
AGENT, ANALYST = "sk-agent-bench", "sk-analyst-bench"
CALLS, CLIENTS = 1000, 8
MINIATURE_FAILURES, FRONTIER_FAILURES = 30, 10
SYSTEM = ("You are the support assistant of an online shop. Answer in two sentences, politely, citing the order "
          "or account number the customer gave. Never promise refunds; offer to open a ticket instead. ") * 4
SHORT = ["Where is my order {n}?", "Cancel subscription {n}, please.", "What are your opening hours?",
         "Reset my password for account {n}.", "Is item {n} in stock?"]
LONG = ("Compare these two contracts clause by clause, list every difference in liability, termination and "
        "payment terms, and explain which one exposes us to more risk and why. ") * 12
# Grafana's own variables as a one-hour dashboard would set them; `All` for the template variables.
_VARIABLE = {"__rate_interval": "1m", "__range": "1h", "__range_s": "3600"}
_VARIABLE_REFERENCE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def config(upstream: str, store: Path) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"keys": [{"name": "agents", "key": AGENT, "role": "agent"},
                          {"name": "grafana", "key": ANALYST, "role": "analyst"}]},
        "upstreams": {"frontier": {"kind": "openai", "base_url": upstream, "api_key": "sk-x"},
                      "vllm-a": {"kind": "openai", "base_url": upstream}},
        "models": {
            "gpt-4.1": {"upstream": "frontier", "model": "gpt-4.1", "tier": "frontier"},  # bundled price table
            "support-mini": {"upstream": "vllm-a", "model": "support-lora", "tier": "miniature",
                             "price": {"gpu_hour_usd": 2.5, "tokens_per_s": 2400}},
        },
        "routes": {"gpt-4.1": {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
            {"name": "short-support", "when": {"prompt_tokens": {"lt": 400}}, "use": "support-mini",
             "escalate_on": ["error", "timeout"], "timeout_s": 10},
        ]}},
        "logging": {"store": f"sqlite:///{store}"},
    }


async def send(client: httpx.AsyncClient, gateway: str, n: int, *, long: bool, stream: bool) -> int:
    text = LONG if long else random.choice(SHORT).format(n=n)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    body = {"model": "gpt-4.1", "messages": messages, "stream": stream}
    async with client.stream("POST", f"{gateway}/v1/chat/completions", json=body,
                             headers={"authorization": f"Bearer {AGENT}"}) as reply:
        await reply.aread()
        return reply.status_code


async def traffic(gateway: str, upstream: ScriptedUpstream) -> dict[int, int]:
    statuses: dict[int, int] = {}
    plan = [(n, n % 10 < 3, n % 10 == 9) for n in range(CALLS - MINIATURE_FAILURES - FRONTIER_FAILURES)]
    async with httpx.AsyncClient(timeout=60) as client:
        queue: asyncio.Queue[tuple[int, bool, bool]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                n, long, stream = queue.get_nowait()
                status = await send(client, gateway, n, long=long, stream=stream)
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        # Failures one at a time, so each scripted error meets the call it is meant for.
        for n in range(MINIATURE_FAILURES + FRONTIER_FAILURES):
            upstream.enqueue(Script(status=500))
            status = await send(client, gateway, n, long=n >= MINIATURE_FAILURES, stream=False)
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prometheus(workdir: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("needs Debian's prometheus (apt-get install -y prometheus)")
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "minigate", "static_configs": [{"targets": [target]}]}]}))
    port = free_port()
    process = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                                f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                                "--log.level=error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ready(url), 30)
    return process, url


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting")
        time.sleep(0.2)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    return list(reply["data"]["result"]) if reply.get("status") == "success" else []


def scalar(prometheus: str, expr: str) -> float:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else math.nan


def panel_values(prometheus: str, name: str) -> dict[str, list[tuple[str, float]]]:
    """Each panel's first target, evaluated now: a list of (series labels, value)."""
    dashboard = json.loads((DASHBOARDS / name).read_text())
    values = dict(_VARIABLE)
    values.update({v["name"]: v.get("allValue") or ".*" for v in dashboard["templating"]["list"] if v["type"] == "query"})
    shown: dict[str, list[tuple[str, float]]] = {}
    for panel in dashboard["panels"]:
        if panel["type"] == "row" or not panel.get("targets"):
            continue
        expr = _VARIABLE_REFERENCE.sub(lambda m: values[m.group(1) or m.group(2)], panel["targets"][0]["expr"])
        shown[panel["title"]] = [(",".join(f"{k}={v}" for k, v in sorted(s["metric"].items()) if k != "__name__"),
                                  float(s["value"][1])) for s in query(prometheus, expr)]
    return shown


def call_log(gateway: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{gateway}/v1/minigate/calls", params=params,
                         headers={"authorization": f"Bearer {ANALYST}"}, timeout=10).json()
        rows += page["data"]
        if not (cursor := page["next_cursor"]):
            return rows


def render_report(config_path: Path, out: Path) -> dict[str, Any]:
    minigate = ROOT / ".venv" / "bin" / "minigate"
    result = subprocess.run([str(minigate), "report", "--config", str(config_path), "--output", str(out), "--json"],
                            capture_output=True, text=True, check=True)
    chromium = shutil.which("chromium")
    if chromium:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={RESULTS / 'platform_view-report.png'}", "--window-size=1280,2200",
                        (out / "index.html").as_uri()], capture_output=True, timeout=120, check=True)
    return dict(json.loads(result.stdout))


def main() -> int:
    random.seed(7)
    with tempfile.TemporaryDirectory() as tmp, ScriptedUpstream() as upstream:
        workdir = Path(tmp)
        upstream.script(latency_s=0.02, model="support-lora")
        upstream.script(latency_s=0.25, chunk_delay_s=0.005, model="gpt-4.1")
        config_path = write_config(workdir / "minigate.yaml", config(upstream.base_url, workdir / "calls.db"))
        with run_gateway(config_path) as gateway:
            prometheus_process, prometheus = start_prometheus(workdir, gateway.base_url.removeprefix("http://"))
            try:
                started = time.perf_counter()
                statuses = asyncio.run(traffic(gateway.base_url, upstream))
                elapsed = time.perf_counter() - started
                wait_for(lambda: scalar(prometheus, "sum(minigate_log_records_written_total)") >= CALLS, 60)
                seen = scalar(prometheus, 'timestamp(up{job="minigate"})')
                wait_for(lambda: scalar(prometheus, 'timestamp(up{job="minigate"})') > seen + 1, 30)
                cost = panel_values(prometheus, "cost-and-savings.json")
                latency = panel_values(prometheus, "latency-and-reliability.json")
                pipeline = panel_values(prometheus, "log-pipeline.json")
                rows = call_log(gateway.base_url)
            finally:
                prometheus_process.terminate()
                prometheus_process.wait(timeout=10)
        report = render_report(config_path, workdir / "report")
    spend = sum(r["cost_usd"] or 0 for r in rows)
    without = sum(r["counterfactual_cost_usd"] or 0 for r in rows)
    summary = {"calls": sum(statuses.values()), "statuses": statuses, "seconds": round(elapsed, 1),
               "call_log": {"records": len(rows), "spend_usd": spend, "counterfactual_usd": without,
                            "savings_usd": without - spend},
               "dashboards": {"cost": cost, "latency": latency, "log_pipeline": pipeline}, "report": report}
    print_summary(summary)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "platform_view.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nwrote {RESULTS / 'platform_view.json'} and {RESULTS / 'platform_view-report.png'}")
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    log = summary["call_log"]
    print(f"{summary['calls']} calls in {summary['seconds']} s; client statuses {summary['statuses']}")
    print(f"call log: {log['records']} records, spend ${log['spend_usd']:.6f}, without minigate "
          f"${log['counterfactual_usd']:.6f}, savings ${log['savings_usd']:.6f}")
    for screen, panels in summary["dashboards"].items():
        print(f"\n== {screen} dashboard (panel: value per series)")
        for title, series in panels.items():
            shown = "; ".join(f"{labels or 'total'} = {value:.6g}" for labels, value in series[:6])
            print(f"  {title:<42} {shown or '(no data)'}")


if __name__ == "__main__":
    raise SystemExit(main())
