"""The wheel maps the four top-level folders into `minigate.*`; every module imports from it and type-checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a fresh virtual environment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(ROOT)],
                   check=True, timeout=300)
    wheel = next(work.glob("minigate-*.whl"))
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    return target


def modules(target: Path) -> list[str]:
    package = target / "minigate"
    return sorted(
        ".".join(path.relative_to(target).with_suffix("").parts).removesuffix(".__init__")
        for path in package.rglob("*.py")
        if path.name != "__main__.py"  # importing it runs the CLI
    )


def test_wheel_holds_the_rooms_and_no_top_level_room(installed: Path) -> None:
    names = {path.name for path in installed.iterdir()}
    assert not names & {"gateway", "router", "logger", "serving"}
    found = modules(installed)
    for room in ("gateway", "router", "logger", "serving"):
        assert f"minigate.{room}" in found
    assert (installed / "minigate" / "py.typed").is_file()
    assert (installed / "minigate" / "examples" / "minigate.yaml").is_file()


def test_every_module_imports_from_the_wheel(installed: Path) -> None:
    names = modules(installed)
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(installed)!r}), (name, module.__file__)\n"
        "assert 'torch' not in sys.modules\n"
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
