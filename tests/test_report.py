"""`minigate report`: figures checked against the call log a real gateway wrote, a page Chromium renders.

The traffic is scripted through the test upstream: refund requests go to a priced miniature by a task
rule (some fail and are escalated to the frontier), triage requests stay on the frontier default, a few
are streamed (TTFT), and one call on a route without escalation fails for the client.
"""

from __future__ import annotations

import html.parser
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from minigate.router.catalogue import Catalogue, Task, save_catalogue
from minigate.router.signature import signature
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import Script, ScriptedUpstream

pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (the report extra)")
from PIL import Image  # noqa: E402  (matplotlib brings Pillow)

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
REFUNDS = "You handle refund requests for ACME. Answer with the refund amount."
TRIAGE = "Label the support ticket as billing, shipping or other."
RULE = 'refunds <to> "mini" & co'  # reaches the page through html.escape
PRICES = {"gpt-4.1": {"input_per_mtok": 2.0, "output_per_mtok": 8.0},
          "mini": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}}


def minigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], capture_output=True, text=True, timeout=300)


def ask(system: str, user: str, *, route: str = "gpt-4.1", stream: bool = False) -> dict[str, Any]:
    return {"model": route, "stream": stream,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def write_catalogue(path: Path) -> None:
    tasks = [Task("t001", "refund-request", size=10, call_share=0.5, signatures={signature(ask(REFUNDS, "x")): 10}),
             Task("t002", "ticket-triage", size=10, call_share=0.5, signatures={signature(ask(TRIAGE, "x")): 10})]
    unit = np.eye(2, 768, dtype=np.float32)
    save_catalogue(Catalogue(tasks, {"t001": unit[0], "t002": unit[1]}, 20, "2026-11-23T00:00:00Z", "test",
                             "all-MiniLM-L6-v2", 3), path)


def serve_traffic(upstream: ScriptedUpstream, tmp_path: Path, store: str) -> Path:
    """Scripted calls through a real gateway into `store`; returns the config path."""
    write_catalogue(tmp_path / "tasks.yaml")
    config = gateway_config(upstream.base_url, tasks={"catalogue": str(tmp_path / "tasks.yaml")},
                            logging={"store": store, "spool": str(tmp_path / "spool")})
    for name, price in PRICES.items():
        config["models"][name]["price"] = price
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "escalate_to": "gpt-4.1", "rules": [
        {"name": RULE, "when": {"task": "refund-request"}, "use": "mini", "escalate_on": ["error", "empty"]}]}
    config["routes"]["cheap"]["escalate_to"] = "gpt-4.1"  # priced counterfactual, but no escalation policy
    path = write_config(tmp_path / "minigate.yaml", config)
    upstream.script(reply="Refund: 40 EUR, issued to the original card today.", model="mini-lora")
    upstream.script(reply="shipping, with a long explanation of why that label fits this ticket best")
    with run_gateway(path) as gateway, httpx.Client(base_url=gateway.v1, headers=AUTH, timeout=60) as client:
        def call(body: dict[str, Any], *failures: Script) -> None:
            upstream.enqueue(*failures)
            client.post("/chat/completions", json=body).read()

        for i in range(12):
            failure = [Script(status=503)] if i % 4 == 1 else [Script(reply="")] if i == 6 else []
            call(ask(REFUNDS, f"I want my {i} EUR back", stream=i in (3, 8)), *failure)
            call(ask(TRIAGE, f"parcel {i} is late", stream=i % 5 == 0))
        call(ask("A prompt never seen.", "hello", route="cheap"))
        call(ask("A prompt never seen.", "hello again", route="cheap"), Script(status=500))
    return path


def store_rows(store: str) -> list[dict[str, Any]]:
    columns = ("model", "tier", "task", "status", "latency_s", "ttft_s", "escalated", "input_tokens", "output_tokens",
               "cost_usd", "counterfactual_cost_usd")
    return [dict(zip(columns, row, strict=True)) for row in fetch(store, f"SELECT {', '.join(columns)} FROM calls")]


def total(rows: list[dict[str, Any]], column: str) -> float:
    return sum(row[column] or 0 for row in rows)


@pytest.mark.slow
def test_report_figures_match_the_call_log(upstream: ScriptedUpstream, tmp_path: Path, store_url: str) -> None:
    path = serve_traffic(upstream, tmp_path, store_url)
    since, until = math.floor(time.time()) - 86400, math.ceil(time.time()) + 60  # a day's window: projected
    result = minigate("report", "--config", str(path), "--output", str(tmp_path / "report"), "--json",
                      "--since", str(since), "--until", str(until))
    assert result.returncode == 0, result.stderr
    figures, rows = orjson.loads(result.stdout), store_rows(store_url)
    headline = figures["headline"]
    assert headline["calls"] == len(rows) == 26
    assert headline["cost_usd"] == pytest.approx(total(rows, "cost_usd"))
    assert headline["counterfactual_usd"] == pytest.approx(total(rows, "counterfactual_cost_usd"))
    assert headline["savings_usd"] == pytest.approx(total(rows, "counterfactual_cost_usd") - total(rows, "cost_usd"))
    assert 0 < headline["savings_rate"] < 1
    assert headline["miniature_share"] == pytest.approx(sum(r["tier"] == "miniature" for r in rows) / len(rows))
    assert headline["error_rate"] == pytest.approx(sum(r["status"] >= 400 for r in rows) / len(rows))
    assert headline["error_rate"] > 0
    assert headline["unpriced_calls"] == sum(r["cost_usd"] is None for r in rows) > 0  # the failed call has no usage
    projected = headline["savings_usd"] * 30 * 86400 / (until - since)
    assert headline["projected_monthly_savings_usd"] == pytest.approx(projected)

    escalated = [r["escalated"] for r in rows if r["escalated"]]
    assert {c["name"]: c["count"] for c in figures["escalations"]} == {r: escalated.count(r) for r in set(escalated)}
    assert {"error", "empty"} <= set(escalated)
    models = {g["name"]: g for g in figures["models"]}
    for model in ("gpt-4.1", "mini"):
        mine = [r for r in rows if r["model"] == model]
        assert models[model]["calls"] == len(mine)
        assert models[model]["cost_usd"] == pytest.approx(total(mine, "cost_usd"))
        assert models[model]["input_tokens"] == total(mine, "input_tokens")
    tasks = {g["name"]: g for g in figures["tasks"]}
    assert tasks["t001"]["detail"] == "refund-request" and tasks["t002"]["detail"] == "ticket-triage"
    assert tasks["t001"]["calls"] == sum(r["task"] == "t001" for r in rows)
    assert {g["name"] for g in figures["rules"]} == {RULE, "default"}

    latency = {(row["model"], row["tier"]): row for row in figures["latency"]}
    for (model, tier), row in latency.items():
        mine = [r for r in rows if r["model"] == model and r["tier"] == tier]
        for q in (50, 95, 99):
            assert row[f"p{q}_s"] == pytest.approx(np.percentile([r["latency_s"] for r in mine], q))
        ttfts = [r["ttft_s"] for r in mine if r["ttft_s"] is not None]
        assert row["ttft_calls"] == len(ttfts)
        if ttfts:
            assert row["ttft_p95_s"] == pytest.approx(np.percentile(ttfts, 95))
    assert any(row["ttft_calls"] for row in figures["latency"])
    assert sum(b["calls"] for b in figures["timeline"]) == len(rows)
    assert sum(b["savings_usd"] for b in figures["timeline"]) == pytest.approx(headline["savings_usd"])

    page = (tmp_path / "report" / "index.html").read_text()
    assert_valid_page(page, tmp_path / "report", figures)


def assert_valid_page(page: str, folder: Path, figures: dict[str, Any]) -> None:
    """Parses as HTML; every image is a PNG beside it; names are escaped; no script or remote reference."""
    parsed = _Page()
    parsed.feed(page)
    assert parsed.images and set(parsed.tags) >= {"html", "table", "img", "style"}
    assert "script" not in parsed.tags and "http://" not in page and "https://" not in page
    for source in parsed.images:
        assert "/" not in source, "images are referenced relative to the page"
        with Image.open(folder / source) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 200
            assert len(image.convert("RGB").getcolors(1 << 16) or range(1 << 16)) > 20, f"{source} is blank"
    assert {"spend.png", "escalations.png", "latency.png"} <= set(parsed.images)
    assert RULE in parsed.text and "&lt;to&gt; &quot;mini&quot; &amp; co" in page
    assert f"{figures['headline']['calls']:,}" in parsed.text and "ticket-triage" in parsed.text


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text += data


@pytest.fixture
def chromium() -> Iterator[str]:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): the page is not rendered")
    yield found


@pytest.mark.integration
def test_the_page_renders_in_headless_chromium(upstream: ScriptedUpstream, tmp_path: Path, chromium: str) -> None:
    path = serve_traffic(upstream, tmp_path, f"sqlite:///{tmp_path}/calls.db")
    folder = tmp_path / "report"
    result = minigate("report", "--config", str(path), "--output", str(folder))
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stdout and f"wrote {folder / 'index.html'}" in result.stderr.replace("\n", "")
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    screenshot = tmp_path / "screenshot.png"
    page = (folder / "index.html").as_uri()
    subprocess.run([*browser, f"--screenshot={screenshot}", "--window-size=1280,2400", page], capture_output=True,
                   timeout=180, check=True)
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size == (1280, 2400)
        assert len(image.convert("RGB").getcolors(1 << 20) or range(1 << 20)) > 200, "the screenshot is blank"

    # The page has no script of its own: a copy with one reports what the browser actually loaded.
    probe = folder / "probe.html"
    probe.write_text((folder / "index.html").read_text().replace("</body>", (
        '<script>addEventListener("load", () => { document.title = "loaded:" + [...document.images].map('
        'i => i.getAttribute("src") + "=" + (i.complete ? i.naturalWidth : 0)).join(","); });</script></body>')))
    dom = subprocess.run([*browser, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180,
                         check=True).stdout
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith("loaded:"), "the load event never fired"
    loaded = dict(item.split("=") for item in title.removeprefix("loaded:").split(","))
    for source, width in loaded.items():
        with Image.open(folder / source) as image:
            assert int(width) == image.width, f"{source} did not load"
    assert len(loaded) >= 5


@pytest.mark.slow
def test_an_empty_log_says_so(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/never-written.db"})
    path = write_config(tmp_path / "minigate.yaml", config)
    result = minigate("report", "--config", str(path), "--output", str(tmp_path / "report"))
    assert result.returncode == 1 and "no calls in the call log" in " ".join(result.stderr.split())
    assert not (tmp_path / "never-written.db").exists() and not (tmp_path / "report").exists()

    served = serve_traffic(upstream, tmp_path, f"sqlite:///{tmp_path}/calls.db")
    future = minigate("report", "--config", str(served), "--since", str(math.ceil(time.time()) + 3600))
    assert future.returncode == 1 and "in that window" in " ".join(future.stderr.split())


@pytest.mark.slow
def test_the_gateway_never_imports_matplotlib() -> None:
    probe = "import sys, minigate.gateway.app, minigate.cli; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
