"""The wheel maps the rooms' top-level folders into `minigate.*`; every module imports from it and type-checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a fresh virtual environment

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("gateway", "router", "logger", "serving", "protocols", "conversion")  # top-level folders: minigate.<room>
TRAINING = "minigate.conversion.finetune"  # the one package that imports torch (and only the job needs it)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = clean_copy(work / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(source)],
                   check=True, timeout=300)
    wheel = next(work.glob("minigate-*.whl"))
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    return target


def clean_copy(source: Path) -> Path:
    """What setuptools reads, without `build/`: a wheel built in the tree reuses `build/lib`, where a module
    deleted or moved since the last build lives on and would hide a package missing from pyproject.toml."""
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("minigate", "examples", *ROOMS):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def modules(target: Path) -> list[str]:
    package = target / "minigate"
    return sorted(
        ".".join(path.relative_to(target).with_suffix("").parts).removesuffix(".__init__")
        for path in package.rglob("*.py")
        if path.name != "__main__.py"  # importing it runs the CLI
    )


def source_packages() -> set[str]:
    """Every package in the repository, by the name the wheel gives it (`logger/seal/` is `minigate.logger.seal`)."""
    found: set[str] = set()
    for folder, name in [("minigate", "minigate"), ("examples", "minigate.examples"),
                         *((room, f"minigate.{room}") for room in ROOMS)]:
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join((name, *init.parent.relative_to(ROOT / folder).parts)))
    return found


def test_wheel_holds_the_rooms_and_no_top_level_room(installed: Path) -> None:
    names = {path.name for path in installed.iterdir()}
    assert not names & {*ROOMS, "examples"}
    found = modules(installed)
    for package in ("minigate.gateway", "minigate.router", "minigate.logger", "minigate.logger.redact",
                    "minigate.logger.seal", "minigate.logger.stores", "minigate.serving", "minigate.protocols",
                    "minigate.conversion"):
        assert package in found
    assert (installed / "minigate" / "py.typed").is_file()
    assert (installed / "minigate" / "prices.json").is_file()
    assert (installed / "minigate" / "examples" / "minigate.yaml").is_file()


def test_wheel_holds_every_package_of_the_repository(installed: Path) -> None:
    """setuptools lists packages by hand here: a new subpackage left out of pyproject.toml is missing from the wheel."""
    missing = source_packages() - set(modules(installed))
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


def test_every_module_imports_from_the_wheel(installed: Path) -> None:
    """Only the fine-tuning job may load torch: nothing the gateway or another command imports does."""
    names = modules(installed)
    light = [name for name in names if not name.startswith(TRAINING)]
    heavy = [name for name in names if name.startswith(TRAINING)]
    script = (
        "import importlib, sys\n"
        f"for name in {light!r} + {heavy!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(installed)!r}), (name, module.__file__)\n"
        f"    assert name in {heavy!r} or 'torch' not in sys.modules, f'importing {{name}} loads torch'\n"
        "print(len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env={"PYTHONPATH": str(installed)}, cwd=installed,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_mypy_resolves_and_accepts_the_package(installed: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
         str(ROOT / ".mypy_cache"), "-p", "minigate"],
        cwd=installed, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
