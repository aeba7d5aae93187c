"""The rooms import only what DESIGN.md's dependency direction allows.

Every `import` and `from ... import` counts wherever it is written: at module level, inside a function,
under `if TYPE_CHECKING:`. An upward import inside a function is still a dependency, and a type-only one
still couples the rooms (mypy and readers follow it). The walk reads source with `ast`, so nothing is
imported and a module with heavy optional dependencies is checked like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("gateway", "router", "logger", "serving", "protocols", "conversion")
FACE = "face"  # minigate/: config, errors, pricing, version and the command layer (cli)

# What each room must not import, in DESIGN.md's words.
FORBIDDEN: dict[str, tuple[frozenset[str], str]] = {
    "gateway": (frozenset({"conversion"}), "gateway -> router, logger, serving, protocols"),
    "router": (frozenset({"gateway", "serving", "logger", "conversion"}),
               "router imports none of gateway, serving, logger, conversion"),
    "logger": (frozenset({"gateway", "router"}), "logger imports none of gateway, router"),
    "serving": (frozenset({"gateway", "router", "logger", "conversion"}),
                "serving imports none of gateway, router, logger, conversion (it may use protocols)"),
    "protocols": (frozenset(ROOMS), "protocols imports no room"),
    "conversion": (frozenset({"gateway"}), "conversion never imports gateway (offline jobs never go through HTTP)"),
}
# The face is imported by every room, so it imports none (a cycle otherwise). Two parts sit on top instead:
# config.py composes the rooms' config sections (each room's `settings` module), and the command layer
# (cli) calls into the rooms, inside its commands only, so that `minigate --help` loads no room.
FACE_RULE = "the face (config, errors, pricing, version) imports no room"
CONFIG_RULE = "minigate/config.py imports only the rooms' config sections (minigate.<room>.settings)"
CLI_RULE = "the CLI imports rooms inside its commands only, never at module level or for types"
COMMAND_LAYER_RULE = "no room imports the face's command layer (minigate.cli): it sits on top"


@dataclass(frozen=True)
class Import:
    """One imported module, where it is written, and whether that is inside a function."""

    module: str
    line: int
    in_function: bool


@dataclass(frozen=True)
class Source:
    """A module of the distribution: its file and its dotted name under `minigate`."""

    path: Path
    name: str

    @property
    def package(self) -> str:
        """The package that relative imports start from."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]

    @property
    def room(self) -> str:
        return room_of(self.name)

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))


def room_of(module: str) -> str:
    """`minigate.router.rules` -> `router`; everything else under `minigate` (config, errors, cli) -> the face."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "minigate" and parts[1] in ROOMS else FACE


def is_command_layer(module: str) -> bool:
    return module == "minigate.cli" or module.startswith("minigate.cli.")


def sources() -> Iterator[Source]:
    """Every module of the rooms and the face, named as Python sees it (the folders map to `minigate.<room>`)."""
    for folder, prefix in [(room, f"minigate.{room}") for room in ROOMS] + [("minigate", "minigate")]:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            yield Source(path, ".".join((prefix, *parts)))


class _ImportCollector(ast.NodeVisitor):
    """Every import in a module, relative ones resolved, each noted as inside a function or not."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.imports: list[Import] = []
        self._functions = 0

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node)
        # `from minigate import gateway` imports the room itself; `from x import a, b` imports x.
        for module in [f"{base}.{alias.name}" for alias in node.names] if base == "minigate" else [base]:
            self._add(module, node)

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = self.package.split(".")
        anchor = package[: len(package) - node.level + 1]
        return ".".join(anchor + ([node.module] if node.module else []))

    def _add(self, module: str, node: ast.stmt) -> None:
        if module == "minigate" or module.startswith("minigate."):
            self.imports.append(Import(module, node.lineno, self._functions > 0))


def imports_of(text: str, package: str) -> list[Import]:
    collector = _ImportCollector(package)
    collector.visit(ast.parse(text))
    return collector.imports


def broken_rule(source: Source, imported: Import) -> str | None:
    """The rule this import breaks, in DESIGN.md's words, or None when it is allowed."""
    target = room_of(imported.module)
    if source.room != FACE and target == source.room:
        return None
    if source.room != FACE:
        if is_command_layer(imported.module):
            return COMMAND_LAYER_RULE
        forbidden, rule = FORBIDDEN[source.room]
        return rule if target in forbidden else None
    if target == FACE:
        return None
    if is_command_layer(source.name):
        return None if imported.in_function else CLI_RULE
    if source.name == "minigate.config":
        return None if imported.module == f"minigate.{target}.settings" else CONFIG_RULE
    return FACE_RULE


def violations(part: str) -> list[str]:
    """`file:line: imports module -- rule` for each import of `part` (a room or the face) that breaks a rule."""
    found = []
    for source in sources():
        if source.room != part:
            continue
        for imported in imports_of(source.path.read_text(), source.package):
            if rule := broken_rule(source, imported):
                found.append(f"{source.where}:{imported.line}: imports {imported.module} -- {rule}")
    return found


@pytest.mark.parametrize("part", [*ROOMS, FACE])
def test_imports_follow_the_dependency_direction(part: str) -> None:
    found = violations(part)
    assert not found, f"{len(found)} import(s) against DESIGN.md's dependency direction:\n" + "\n".join(found)


def test_the_walk_sees_every_room_and_what_it_imports() -> None:
    """Guards the test above against passing vacuously: a misnamed folder or a walk that finds nothing."""
    named = {source.name for source in sources()}
    assert {"minigate.gateway.app", "minigate.router.rules", "minigate.logger.pipeline", "minigate.errors"} <= named
    gateway = [source for source in sources() if source.room == "gateway"]
    seen = {room_of(i.module) for source in gateway for i in imports_of(source.path.read_text(), source.package)}
    assert {"router", "logger", "serving"} <= seen


SNEAKY = '''
from __future__ import annotations
from typing import TYPE_CHECKING
from . import upstream
from ..errors import UpstreamError
if TYPE_CHECKING:
    from minigate.logger.records import CallRecord
def build() -> None:
    import minigate.gateway.app
    from minigate import router
'''


def test_function_level_type_only_and_relative_imports_all_count() -> None:
    source = Source(ROOT / "serving" / "sneaky.py", "minigate.serving.sneaky")
    found = [(i.module, i.line, i.in_function, broken_rule(source, i)) for i in imports_of(SNEAKY, source.package)]
    assert found == [
        ("minigate.serving", 4, False, None),
        ("minigate.errors", 5, False, None),
        ("minigate.logger.records", 7, False, FORBIDDEN["serving"][1]),
        ("minigate.gateway.app", 9, True, FORBIDDEN["serving"][1]),
        ("minigate.router", 10, True, FORBIDDEN["serving"][1]),
    ]


@pytest.mark.parametrize(("name", "module", "in_function", "rule"), [
    ("minigate.errors", "minigate.serving.replicas", False, FACE_RULE),
    ("minigate.config", "minigate.router.settings", False, None),
    ("minigate.config", "minigate.router.rules", True, CONFIG_RULE),
    ("minigate.cli", "minigate.conversion.replay", True, None),
    ("minigate.cli.tasks", "minigate.router.catalogue", False, CLI_RULE),
    ("minigate.logger.keys", "minigate.cli", True, COMMAND_LAYER_RULE),
    ("minigate.logger.keys", "minigate.serving.pricing", False, None),
])
def test_the_face_and_its_command_layer(name: str, module: str, in_function: bool, rule: str | None) -> None:
    source = Source(ROOT / Path(*name.split(".")[1:]).with_suffix(".py"), name)
    assert broken_rule(source, Import(module, 1, in_function)) == rule
