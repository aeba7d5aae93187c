"""Model prices: the config's `price`, GPU-hour prices, and the bundled table for the rest."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from minigate.pricing import PriceTable, Rate, model_rate
from minigate.router.prices import PriceBook
from minigate.serving.settings import ModelEntry, Price
from pydantic import ValidationError

from minigate.config import Config
from tests.conftest import AGENT_KEY, gateway_config
from tests.stores import fetch
from tests.support.servers import run_gateway, write_config
from tests.support.upstream import ScriptedUpstream

ROOT = Path(__file__).resolve().parent.parent
TABLE = PriceTable("test", "2026-01-01", {"gpt-4.1": (2.0, 8.0), "gemini/gemini-2.5-pro": (1.25, 10.0),
                                          "claude-3-5-sonnet": (3.0, 15.0)})


def entry(model: str, **price: float) -> ModelEntry:
    return ModelEntry(upstream="u", model=model, tier="frontier", price=Price.model_validate(price) if price else None)


@pytest.mark.parametrize("model_id, expected", [
    ("gpt-4.1", (2.0, 8.0)),  # exact
    ("openai/gpt-4.1", (2.0, 8.0)),  # provider prefix stripped
    ("gpt-4.1-2025-04-14", (2.0, 8.0)),  # dated suffix dropped
    ("openai/gpt-4.1-2025-04-14", (2.0, 8.0)),  # both
    ("claude-3-5-sonnet-20241022", (3.0, 15.0)),  # Anthropic's undashed date
    ("claude-3-5-sonnet@20241022", (3.0, 15.0)),  # Vertex's spelling
    ("gemini/gemini-2.5-pro", (1.25, 10.0)),  # a prefixed table key, exact
    ("gpt-4.1-mini", None), ("my-lora", None),  # no prefix match: unknown stays unknown
])
def test_table_lookup_falls_back_to_prefix_and_date(model_id: str, expected: tuple[float, float] | None) -> None:
    assert TABLE.lookup(model_id) == expected


def test_the_bundled_table_prices_frontier_models_and_names_its_source() -> None:
    table = PriceTable.bundled()
    assert "BerriAI/litellm" in table.source and table.retrieved
    assert len(table.models) > 300
    for model in ("gpt-4.1", "gpt-4o-mini", "claude-sonnet-4-5", "gemini/gemini-2.5-pro", "deepseek/deepseek-chat"):
        assert table.lookup(model) is not None, model
    assert all(0 <= price < 1000 for rate in table.models.values() for price in rate)


def test_the_config_price_wins_over_the_table() -> None:
    assert model_rate(entry("gpt-4.1", input_per_mtok=1.0, output_per_mtok=3.0), TABLE) == (Rate(1.0, 3.0), "config")
    assert model_rate(entry("gpt-4.1"), TABLE) == (Rate(2.0, 8.0), "table")
    assert model_rate(entry("my-lora"), TABLE) == (None, "none")


def test_a_gpu_hour_is_spread_over_the_tokens_it_serves() -> None:
    price = Price.model_validate({"gpu_hour_usd": 2.5, "tokens_per_s": 2400})
    # 2.5 USD / 3600 s / 2400 tokens/s = 2.8935...e-7 USD a token, for input and output alike.
    assert price.input_per_mtok == price.output_per_mtok == pytest.approx(2.5 / 3600 / 2400 * 1e6)
    assert price.input_per_mtok == pytest.approx(0.289351851851852)
    rate, source = model_rate(entry("my-lora", gpu_hour_usd=3.6, tokens_per_s=1000), TABLE)
    assert source == "gpu-hour" and rate == Rate(1.0, 1.0)
    assert rate.cost(1_000_000, 500_000) == pytest.approx(1.5)


@pytest.mark.parametrize("price, field", [
    ({"gpu_hour_usd": 0, "tokens_per_s": 100}, "gpu_hour_usd"),
    ({"gpu_hour_usd": 2.5, "tokens_per_s": -1}, "tokens_per_s"),
    ({"gpu_hour_usd": 2.5, "tokens_per_s": "fast"}, "tokens_per_s"),
    ({"gpu_hour_usd": 2.5}, "tokens_per_s"),
    ({"gpu_hour_usd": 2.5, "tokens_per_s": 100, "input_per_mtok": 1.0}, "not both"),
    ({"input_per_mtok": -1.0, "output_per_mtok": 1.0}, "input_per_mtok"),
])
def test_bad_prices_name_the_field(price: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Price.model_validate(price)


def test_price_book_prices_unconfigured_frontier_models_from_the_table() -> None:
    config = Config.model_validate(gateway_config("http://127.0.0.1:9"))
    book = PriceBook.from_config(config, TABLE)
    assert book.rates("gpt-4.1", "gpt-4.1") == (Rate(2.0, 8.0), Rate(2.0, 8.0))
    assert book.rates("cheap", "mini") == (None, None)  # mini-lora is in no table


def test_a_route_without_a_priced_frontier_is_priced_at_the_model_name_asked_for() -> None:
    config = gateway_config("http://127.0.0.1:9")
    config["models"]["own-frontier"] = {"upstream": "scripted", "model": "my-own-frontier", "tier": "frontier"}
    config["routes"].update({
        "claude-3-5-sonnet-20241022": {"default": "mini"},  # miniature-only: the name asked for, as the table spells it
        "gemini/gemini-2.5-pro": {"default": "own-frontier"},  # its frontier is unpriced: the name asked for again
        "gpt-4.1-mini": {"default": "mini"},  # a name no table prices: nothing rather than a guess
        "claude-3-5-sonnet": {"default": "mini", "escalate_to": "gpt-4.1"},  # a priced frontier comes first
    })
    book = PriceBook.from_config(Config.model_validate(config), TABLE)
    assert book.rates("claude-3-5-sonnet-20241022", "mini") == (None, Rate(3.0, 15.0))
    assert book.rates("gemini/gemini-2.5-pro", "own-frontier") == (None, Rate(1.25, 10.0))
    assert book.rates("gpt-4.1-mini", "mini") == (None, None)
    assert book.rates("claude-3-5-sonnet", "mini") == (None, Rate(2.0, 8.0))
    assert book.rate("gpt-4.1") == Rate(2.0, 8.0) and book.rate("mini") is None


def test_a_frontier_model_without_a_configured_price_is_costed_from_the_table(
        upstream: ScriptedUpstream, tmp_path: Path) -> None:
    config = gateway_config(upstream.base_url, logging={"store": f"sqlite:///{tmp_path}/c.db"})
    config["models"]["gpt-4.1"]["model"] = "gpt-4.1-2025-04-14"  # the dated id falls back to gpt-4.1's price
    config["models"]["mini"]["price"] = {"gpu_hour_usd": 3.6, "tokens_per_s": 1000}  # 1 USD per Mtok
    config["routes"]["cheap"]["escalate_to"] = "gpt-4.1"
    config["routes"]["unpriced"] = {"default": "nobody-prices-me"}
    config["models"]["nobody-prices-me"] = {"upstream": "scripted", "model": "my-own-lora", "tier": "miniature"}
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        for route in ("cheap", "gpt-4.1", "unpriced"):
            httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                       json={"model": route, "messages": [{"role": "user", "content": "one two three"}]})
    rows = {route: rest for route, *rest in fetch(
        f"sqlite:///{tmp_path}/c.db", "SELECT route, input_tokens, output_tokens, cost_usd, counterfactual_cost_usd FROM calls")}
    input_rate, output_rate = PriceTable.bundled().models["gpt-4.1"]
    tokens_in, tokens_out, cost, counterfactual = rows["gpt-4.1"]
    assert tokens_in and tokens_out
    assert cost == counterfactual == pytest.approx((tokens_in * input_rate + tokens_out * output_rate) / 1e6)
    tokens_in, tokens_out, cost, counterfactual = rows["cheap"]
    assert cost == pytest.approx((tokens_in + tokens_out) / 1e6)
    assert counterfactual == pytest.approx((tokens_in * input_rate + tokens_out * output_rate) / 1e6)
    assert rows["unpriced"][2:] == [None, None]


def test_check_shows_each_price_and_its_source(tmp_path: Path) -> None:
    config = gateway_config("http://127.0.0.1:9")
    config["models"]["mini"]["price"] = {"gpu_hour_usd": 3.6, "tokens_per_s": 1000}
    config["routes"]["own"] = {"default": "own"}
    config["models"]["own"] = {"upstream": "scripted", "model": "my-own-lora", "tier": "miniature"}
    result = subprocess.run([sys.executable, "-m", "minigate", "check", str(write_config(tmp_path / "c.yaml", config))],
                            capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""}, check=True)
    assert "(table)" in result.stdout and "1/1 (gpu-hour)" in result.stdout and "unpriced" in result.stdout


def test_the_table_ships_as_package_data() -> None:
    text = resources.files("minigate").joinpath("prices.json").read_text("utf-8")
    assert json.loads(text)["models"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "prices.json" in setuptools["package-data"]["minigate"]


def test_refresh_keeps_chat_models_with_token_prices(tmp_path: Path) -> None:
    source = tmp_path / "map.json"
    source.write_text(json.dumps({
        "sample_spec": {"mode": "one of: chat, ..."},
        "gpt-x": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2e-06,
                  "output_cost_per_token": 8e-06},
        "dall-e-x": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
        "bedrock-x": {"litellm_provider": "bedrock", "mode": "chat", "input_cost_per_token": 1e-06,
                      "output_cost_per_token": 1e-06},
        "claude-x": {"litellm_provider": "anthropic", "mode": "chat", "input_cost_per_token": 3e-06},
    }))
    out = tmp_path / "prices.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "refresh-prices"), str(source), "--source", "a copy",
                    "--out", str(out)], check=True, capture_output=True)
    table = PriceTable.from_json(out.read_text())
    assert table.source == "a copy" and table.models == {"gpt-x": (2.0, 8.0)}
