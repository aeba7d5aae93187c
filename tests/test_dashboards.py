"""The Grafana dashboards: the committed JSON is what dashboards/build.py makes, and every query works.

The query test runs Debian's `prometheus` server (its own instance: free port, temporary storage, one
second scrape interval) against a real gateway that served scripted traffic through the test
upstream: frontier and miniature calls, streamed and not, an escalation and an upstream error. Every
target of every panel must return a number, and the savings panel must agree with the call log.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import RunningGateway
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
FILES = sorted(DASHBOARDS.glob("*.json"))
# What Grafana would put in for its own variables: the windows cover the whole short run (so range
# totals count every call), and `All` for every template variable (its allValue).
BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__range_s": "3600"}
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
FRONTIER = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
MINIATURE = {"input_per_mtok": 0.05, "output_per_mtok": 0.1}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield from panel.get("panels", [])
        if panel["type"] != "row":
            yield panel


def test_committed_json_is_what_the_build_script_makes() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk (test extra) is not installed")
    command = [sys.executable, str(DASHBOARDS / "build.py"), "--check"]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.stem)
def test_every_panel_reads_the_datasource_variable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]


# -- against a real Prometheus --


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def run_prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """Our own `prometheus` scraping `target` (host:port) every second; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus server is not installed (apt-get install -y prometheus)")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "minigate", "static_configs": [{"targets": [target]}]}],
    }))
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: _is_ready(url, process, tmp_path / "prometheus.log"), what="prometheus is ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _is_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"prometheus exited with status {process.returncode}:\n{log.read_text()}")
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert reply["status"] == "success", f"{expr}: {reply}"
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def scalar(prometheus: str, expr: str) -> float:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else math.nan


def substitute(expr: str, dashboard: dict[str, Any]) -> str:
    values = dict(BUILTINS)
    values.update({variable["name"]: variable["allValue"] for variable in dashboard["templating"]["list"]
                   if variable["type"] == "query"})
    return VARIABLE.sub(lambda match: values[match.group(1) or match.group(2)], expr)


# -- the traffic --


def priced_gateway(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """Route `gpt-4.1`: the frontier model by default, a priced miniature for `metadata.tier=miniature`,
    escalating to the frontier model when the miniature errs."""
    config = gateway_config(upstream.base_url)
    config["models"]["gpt-4.1"]["price"] = FRONTIER
    config["models"]["mini"]["price"] = MINIATURE
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
        {"name": "miniature", "when": {"metadata.tier": {"eq": "miniature"}}, "use": "mini",
         "escalate_on": ["error"]},
        {"name": "shadowed", "when": {"metadata.tier": {"eq": "shadowed"}}, "use": "gpt-4.1",
         "shadow": {"model": "mini", "sample": 1.0}},
    ]}
    return make_gateway(config)


def ask(gateway: RunningGateway, text: str, *, miniature: bool, stream: bool = False, shadowed: bool = False) -> int:
    body: dict[str, Any] = {"model": "gpt-4.1", "messages": [{"role": "user", "content": text}], "stream": stream}
    if miniature or shadowed:
        body["metadata"] = {"tier": "miniature" if miniature else "shadowed"}
    headers = {"authorization": f"Bearer {AGENT_KEY}"}
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", json=body, headers=headers, timeout=30) as reply:
        reply.read()
        return reply.status_code


def serve_wave(gateway: RunningGateway, upstream: ScriptedUpstream, wave: int) -> int:
    """One of everything the dashboards show; returns how many call records it makes."""
    statuses = []
    for i in range(3):
        words = " ".join(["word"] * (5 + 7 * i + wave))
        statuses += [ask(gateway, f"frontier {words}", miniature=False, stream=i == 1),
                     ask(gateway, f"miniature {words}", miniature=True, stream=i != 1)]
    upstream.enqueue(Script(status=500))  # the miniature fails: escalated to the frontier model
    statuses.append(ask(gateway, "escalate me please", miniature=True))
    upstream.enqueue(Script(status=500))  # the frontier model fails: the client sees the error
    statuses.append(ask(gateway, "fail me please", miniature=False))
    statuses.append(ask(gateway, "shadow me please", miniature=False, shadowed=True))  # the miniature shadows it
    assert statuses == [200] * 7 + [502, 200]
    return len(statuses) + 1  # records: each call's, and the shadow call's


def logged_calls(gateway: RunningGateway) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 1000, "kind": "all", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{gateway.v1}/minigate/calls", params=params,
                         headers={"authorization": f"Bearer {ANALYST_KEY}"}, timeout=10).json()
        rows += page["data"]
        if not (cursor := page["next_cursor"]):
            return rows


@pytest.mark.integration
def test_every_panel_query_returns_data_and_savings_match_the_call_log(
        upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> None:
    gateway = priced_gateway(upstream, make_gateway)
    with run_prometheus(tmp_path, gateway.base_url.removeprefix("http://")) as prometheus:
        # Two waves a scrape apart, so every series has grown between two samples and rates are not 0.
        calls = serve_wave(gateway, upstream, 0)
        eventually(lambda: scalar(prometheus, "sum(minigate_log_records_written_total)") == calls,
                   what="wave 1 scraped")
        calls += serve_wave(gateway, upstream, 1)
        eventually(lambda: scalar(prometheus, "sum(minigate_log_records_written_total)") == calls,
                   what="wave 2 scraped")
        seen = scalar(prometheus, 'timestamp(up{job="minigate"})')
        eventually(lambda: scalar(prometheus, 'timestamp(up{job="minigate"})') > seen,
                   what="a scrape after the last call")

        missing = []
        assert FILES, "no dashboards/*.json"
        for path in FILES:
            dashboard = json.loads(path.read_text())
            for panel in panels(dashboard):
                for target in panel["targets"]:
                    values = [float(series["value"][1])
                              for series in query(prometheus, substitute(target["expr"], dashboard))]
                    if not any(math.isfinite(value) for value in values):
                        missing.append(f"{path.stem} / {panel['title']} / {target['refId']}: {values}")
        assert not missing, "queries without data:\n" + "\n".join(missing)

        rows = logged_calls(gateway)
        assert len(rows) == calls
        spend = sum(row["cost_usd"] or 0.0 for row in rows)
        savings = sum((row["counterfactual_cost_usd"] or 0.0) - (row["cost_usd"] or 0.0) for row in rows)
        assert savings > 0
        cost = json.loads((DASHBOARDS / "cost-and-savings.json").read_text())
        figures = {panel["title"]: substitute(panel["targets"][0]["expr"], cost) for panel in panels(cost)}
        assert scalar(prometheus, figures["Savings"]) == pytest.approx(savings, rel=0.01)
        assert scalar(prometheus, figures["Spend"]) == pytest.approx(spend, rel=0.01)
