"""The whole config file: one pydantic model composed of each room's section, and its loader.

Loading is the only place that touches the file and the environment. Everything downstream gets a
validated, frozen `Config` and never reads `os.environ` itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from minigate.errors import ConfigError, ConfigProblem
from minigate.gateway.settings import AuthSection, LimitsSection, MetricsSection, ServerSection, TelemetrySection
from minigate.logger.settings import LoggingSection
from minigate.router.settings import (
    ConversionSection,
    RouteEntry,
    ScoringSection,
    TasksSection,
    load_test_problems,
    promoted_routes,
    unknown_task_problems,
)
from minigate.serving.settings import ModelEntry, OpenAIUpstream, Upstream, adapter_problems

__all__ = ["Config", "default_config_path", "load_config", "promotions_path", "resolve_config_path"]

_Path = tuple[str | int, ...]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Config(BaseModel):
    """A validated minigate config; see examples/minigate.yaml for a commented one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: ServerSection = ServerSection()
    auth: AuthSection = AuthSection()
    limits: LimitsSection = LimitsSection()
    metrics: MetricsSection = MetricsSection()
    upstreams: dict[str, Upstream] = Field(default_factory=dict)
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    routes: dict[str, RouteEntry] = Field(min_length=1)
    scoring: ScoringSection = ScoringSection()
    tasks: TasksSection = TasksSection()
    logging: LoggingSection = LoggingSection()
    telemetry: TelemetrySection = TelemetrySection()
    conversion: ConversionSection = ConversionSection()


def default_config_path() -> Path:
    """The embedded default, shipped in the wheel as package data of `minigate.examples`."""
    return Path(str(resources.files("minigate.examples").joinpath("minigate.yaml")))


def resolve_config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path:
    """`--config`, else `$MINIGATE_CONFIG`, else `./minigate.yaml`, else the embedded default."""
    if explicit is not None:
        return explicit
    if environ.get("MINIGATE_CONFIG"):
        return Path(environ["MINIGATE_CONFIG"])
    local = Path("minigate.yaml")
    return local if local.is_file() else default_config_path()


def promotions_path(config_path: Path) -> Path:
    """Where a config's promotions file is: beside it, or in the working folder for the embedded default
    (which lives inside the installed package)."""
    name = "promotions.yaml"
    return Path(name) if config_path == default_config_path() else config_path.parent / name


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate one config file; every fault is reported with file, line and field."""
    env = os.environ if environ is None else environ
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, [ConfigProblem("(file)", f"cannot read: {exc.strerror or exc}")]) from exc
    data, lines = _parse(name, text, env)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(name, [_problem(err["loc"], err["msg"], lines) for err in exc.errors()]) from exc
    config = _with_promotions(config, promotions_path(path))
    catalogue = config.tasks.catalogue
    if catalogue is not None and not catalogue.is_absolute():  # a catalogue sits beside its config
        config = config.model_copy(update={"tasks": config.tasks.model_copy(update={"catalogue": path.parent / catalogue})})
    found = _dangling_references(config) + _unknown_limited_routes(config)
    found += unknown_task_problems(config.routes, config.tasks.catalogue, config.models)
    found += load_test_problems(config.routes, {name: entry.upstream for name, entry in config.models.items()},
                                _vllm_upstreams(config))
    found += adapter_problems(config.upstreams, config.models)
    problems = [_problem(loc, msg, lines) for loc, msg in found]
    if problems:
        raise ConfigError(name, problems)
    return config


def _with_promotions(config: Config, path: Path) -> Config:
    """The config with the promotions file beside it applied (router/promotions.py); its faults name that file."""
    routes, problems = promoted_routes(config.routes, config.models, path)
    if problems:
        raise ConfigError(str(path), [ConfigProblem(_dotted(where), message) for where, message in problems])
    return config.model_copy(update={"routes": routes}) if routes != config.routes else config


def _parse(name: str, text: str, env: Mapping[str, str]) -> tuple[Any, dict[_Path, int]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(name, [ConfigProblem("(syntax)", str(exc.problem), line)]) from exc
    if root is None:
        raise ConfigError(name, [ConfigProblem("(file)", "the file is empty", 1)])
    builder = _Builder(env)
    data = builder.build(root, ())
    if builder.problems:
        raise ConfigError(name, builder.problems)
    return data, builder.lines


class _Builder:
    """Turns a YAML node tree into plain data, remembering the line of every path and interpolating `${VAR}`.

    Interpolation happens on parsed string scalars, never on the raw text, so a value from the
    environment can't inject YAML structure and line numbers stay true.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[_Path, int] = {}
        self.problems: list[ConfigProblem] = []
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: _Path) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return {self._key(k): self.build(v, (*path, self._key(k))) for k, v in node.value}
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        value = self._constructor.construct_object(node, deep=True)
        return self._interpolate(value, path) if isinstance(value, str) else value

    def _key(self, node: yaml.Node) -> str:
        return str(node.value)

    def _interpolate(self, value: str, path: _Path) -> str:
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.env and (self.env[name] or default is None):
                return self.env[name]
            if default is not None:
                return default
            line = self.lines.get(path)
            self.problems.append(ConfigProblem(_dotted(path), f"environment variable {name} is not set", line))
            return ""

        return _VAR.sub(substitute, value) if "${" in value else value


def _dangling_references(config: Config) -> list[tuple[_Path, str]]:
    """Names that point nowhere: a model's upstream, a route's default model, a rule's model."""
    found: list[tuple[_Path, str]] = []
    upstreams = ", ".join(sorted(config.upstreams)) or "none defined"
    for name, entry in config.models.items():
        if entry.upstream not in config.upstreams:
            found.append((("models", name, "upstream"), f"unknown upstream {entry.upstream!r} (upstreams: {upstreams})"))
    known = ", ".join(sorted(config.models)) or "none defined"
    for name, route in config.routes.items():
        if route.default not in config.models:
            found.append((("routes", name, "default"), f"unknown model {route.default!r} (models: {known})"))
        if route.escalate_to is not None and route.escalate_to not in config.models:
            found.append((("routes", name, "escalate_to"), f"unknown model {route.escalate_to!r} (models: {known})"))
        found += [(("routes", name, "fallbacks", i), f"unknown model {model!r} (models: {known})")
                  for i, model in enumerate(route.fallbacks) if model not in config.models]
        for i, rule in enumerate(route.rules):
            if rule.escalate_on and route.escalate_to is None:
                found.append((("routes", name, "rules", i, "escalate_on"),
                              f"rule {rule.name!r} escalates, but routes.{name}.escalate_to names no model"))
            for model in rule.models():
                if model not in config.models:
                    where = ("routes", name, "rules", i, "use" if rule.use is not None else "split")
                    found.append((where, f"rule {rule.name!r}: unknown model {model!r} (models: {known})"))
            for field in ("model", "judge"):
                chosen = getattr(rule.shadow, field) if rule.shadow is not None else None
                if chosen is not None and chosen not in config.models:
                    found.append((("routes", name, "rules", i, "shadow", field),
                                  f"rule {rule.name!r}: shadow {field} {chosen!r} is not a model (models: {known})"))
    return found


def _unknown_limited_routes(config: Config) -> list[tuple[_Path, str]]:
    """A key limited on a route that does not exist (a typo would silently leave the route unlimited)."""
    routes = ", ".join(sorted(config.routes))
    return [(("auth", "keys", i, "limits", "routes", route), f"unknown route {route!r} (routes: {routes})")
            for i, entry in enumerate(config.auth.keys) for route in entry.limits.routes if route not in config.routes]


def _vllm_upstreams(config: Config) -> set[str]:
    """The upstreams that report load (`upstream_waiting` and the like in rules): only vLLM's do."""
    return {name for name, spec in config.upstreams.items() if isinstance(spec, OpenAIUpstream) and spec.kind == "vllm"}


def _problem(loc: tuple[Any, ...], message: str, lines: dict[_Path, int]) -> ConfigProblem:
    """Locate a validation error in the file.

    pydantic adds parts the file does not have (a union's tag, as in `upstreams.x.openai.base_url`);
    keep only the parts that exist, plus a missing field at the end so the message names it.
    """
    path: _Path = ()
    for i, part in enumerate(loc):
        if (*path, part) in lines or i == len(loc) - 1:
            path = (*path, part)
    line = lines.get(path) or lines.get(path[:-1]) or lines.get(())
    return ConfigProblem(_dotted(path) or "(top level)", message, line)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)
