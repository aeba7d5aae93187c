"""Config loading: interpolation, and errors that name the file, the line and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from minigate.config import default_config_path, load_config, resolve_config_path
from minigate.errors import ConfigError

VALID = """\
server: {host: 127.0.0.1, port: "${PORT:-9000}"}
upstreams:
  up: {kind: openai, base_url: "${UP_URL}", api_key: "${UP_KEY:-}"}
models:
  m: {upstream: up, model: "${UP_MODEL:-gpt-4.1}", tier: frontier}
routes:
  r: {default: m}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "minigate.yaml"
    path.write_text(text)
    return path


def test_interpolation_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), {"UP_URL": "http://127.0.0.1:1/v1", "UP_MODEL": ""})
    assert config.server.port == 9000
    assert config.upstreams["up"].base_url == "http://127.0.0.1:1/v1"  # type: ignore[union-attr]
    assert config.models["m"].model == "gpt-4.1"  # empty value takes the :- default, as in the shell


def test_environment_values_are_not_parsed_as_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), {"UP_URL": "http://h/v1", "UP_MODEL": "x}\n  evil: {a: 1"})
    assert config.models["m"].model == "x}\n  evil: {a: 1"


def test_missing_variable_names_line_and_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, VALID), {})
    assert str(caught.value) == f"{tmp_path / 'minigate.yaml'}:3: upstreams.up.base_url: environment variable UP_URL is not set"


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("port: \"${PORT:-9000}\"", "port: many", ":1: server.port: Input should be a valid integer"),
        ("tier: frontier", "tier: medium", ":5: models.m.tier: Input should be 'miniature' or 'frontier'"),
        ("default: m}", "default: nope}", ":7: routes.r.default: unknown model 'nope' (models: m)"),
        ("upstream: up,", "upstream: other,", ":5: models.m.upstream: unknown upstream 'other' (upstreams: up)"),
        ("kind: openai,", "kind: openai, colour: red,", ":3: upstreams.up.colour: Extra inputs are not permitted"),
        ("base_url: \"${UP_URL}\"", "base_url: ftp://x", ":3: upstreams.up.base_url: String should match pattern"),
        ("  r: {default: m}", "  r: {}", ":7: routes.r.default: Field required"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    path = write(tmp_path, VALID.replace(replace, by))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"UP_URL": "http://h/v1"})
    assert str(caught.value).startswith(f"{path}{expected}")


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "routes:\n  r: {default: m\nmodels: {}\n"), {})
    assert caught.value.problems[0].line is not None


def test_unknown_upstream_kind(tmp_path: Path) -> None:
    text = VALID.replace("kind: openai", "kind: carrier-pigeon")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {"UP_URL": "http://h/v1"})
    assert ":3: upstreams.up" in str(caught.value) and "carrier-pigeon" in str(caught.value)


def test_precedence_of_config_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None, {}) == default_config_path()
    (tmp_path / "minigate.yaml").write_text(VALID)
    assert resolve_config_path(None, {}) == Path("minigate.yaml")
    assert resolve_config_path(None, {"MINIGATE_CONFIG": "/x.yaml"}) == Path("/x.yaml")
    assert resolve_config_path(Path("/y.yaml"), {"MINIGATE_CONFIG": "/x.yaml"}) == Path("/y.yaml")


def test_embedded_default_is_valid_and_has_no_fake_model() -> None:
    config = load_config(default_config_path(), {})
    kinds = {spec.kind for spec in config.upstreams.values()}
    assert kinds == {"llamacpp", "openai"}
    first_route = next(iter(config.routes.values()))
    assert config.models[first_route.default].upstream == "local"


def test_check_command_prints_tables(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "check", str(path)], capture_output=True,
                            text=True, env={"UP_URL": "http://h/v1", "COLUMNS": "200", "PATH": ""}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "upstreams" in result.stdout and "routes" in result.stdout and "valid" in result.stdout
    assert "http://h/v1" in result.stdout


def test_check_command_reports_errors(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("default: m}", "default: nope}"))
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "check", str(path)], capture_output=True,
                            text=True, env={"UP_URL": "http://h/v1", "PATH": ""}, timeout=60)
    assert result.returncode == 2
    assert f"{path}:7: routes.r.default: unknown model 'nope'" in result.stderr
