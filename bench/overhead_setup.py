"""Everything the overhead benchmark installs or asks about the machine.

nginx and wrk come from Debian (apt-get); LiteLLM gets its own venv, `bench/.venv-litellm`, so
that it never touches the project's `.venv`. The minimal proxy runs on the project's Python when
that has Starlette, httpx and uvicorn (the same libraries minigate runs on), else on a scratch
venv, `bench/.venv-minimal`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "SetupFailed", "ensure_tools", "ensure_litellm", "free_port", "log", "minimal_python",
           "minigate_command", "machine_info", "tool_versions", "package_versions"]

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"
LITELLM_VENV = BENCH / ".venv-litellm"
MINIMAL_VENV = BENCH / ".venv-minimal"
# 1.106.2 is the newest plain pip resolves here (later ones need a certifi the registry lacks,
# 1.107.x were withdrawn). httptools lets uvicorn use the same HTTP parser as the other targets.
LITELLM_REQUIREMENTS = ["litellm[proxy]==1.106.2", "httptools"]
MINIMAL_REQUIREMENTS = ["starlette", "httpx", "uvicorn[standard]"]
MINIMAL_IMPORTS = "import starlette, httpx, uvicorn, uvloop, httptools"


class SetupFailed(RuntimeError):
    """An install step failed; the message holds the tail of its output."""


def _run(command: list[str]) -> None:
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise SetupFailed(f"{' '.join(command)} failed ({result.returncode}):\n{tail}")


def _which(name: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    return found


def ensure_tools() -> dict[str, str]:
    """Paths of nginx and wrk, installed with apt-get when missing."""
    missing = [name for name in ("nginx", "wrk") if _which(name) is None]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        _run([*sudo, "apt-get", "update", "-qq"])
        _run([*sudo, "apt-get", "install", "-y", "-qq", *missing])
    paths = {name: _which(name) for name in ("nginx", "wrk")}
    return {name: path for name, path in paths.items() if path is not None}


def _venv(path: Path, requirements: list[str]) -> Path:
    python = path / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(path)])
    _run([str(python), "-m", "pip", "install", "-q", *requirements])
    return python


def ensure_litellm() -> Path:
    """The `litellm` command of `bench/.venv-litellm`, installing the pinned release if needed."""
    command = LITELLM_VENV / "bin" / "litellm"
    python = LITELLM_VENV / "bin" / "python"
    wanted = LITELLM_REQUIREMENTS[0].split("==")[1]
    if not command.exists() or package_versions(python, ["litellm"]).get("litellm") != wanted:
        _venv(LITELLM_VENV, LITELLM_REQUIREMENTS)
    return command


def _imports(python: Path, statement: str) -> bool:
    result = subprocess.run([str(python), "-c", statement], capture_output=True)
    return result.returncode == 0


def minimal_python() -> Path:
    """The project's Python when it has the minimal proxy's libraries, else a scratch venv's."""
    if PROJECT_PYTHON.exists() and _imports(PROJECT_PYTHON, MINIMAL_IMPORTS):
        return PROJECT_PYTHON
    python = MINIMAL_VENV / "bin" / "python"
    if python.exists() and _imports(python, MINIMAL_IMPORTS):
        return python
    return _venv(MINIMAL_VENV, MINIMAL_REQUIREMENTS)


def minigate_command() -> Path | None:
    """The project's `minigate` command, or None when the gateway is not installed."""
    command = ROOT / ".venv" / "bin" / "minigate"
    return command if command.exists() else None


def machine_info() -> dict[str, object]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "memory_kb": _meminfo_total_kb()}


def _meminfo_total_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    """First line of `nginx -v` and `wrk -v` (both print to stderr and may exit non-zero)."""
    versions = {}
    for name, path in tools.items():
        result = subprocess.run([path, "-v"], capture_output=True, text=True)
        versions[name] = (result.stderr + result.stdout).strip().splitlines()[0]
    return versions


def package_versions(python: Path, names: list[str]) -> dict[str, str]:
    """Installed distribution versions (and `python`) as seen by the interpreter `python`."""
    script = ("import importlib.metadata as m, json, platform, sys\n"
              "found = {'python': platform.python_version()}\n"
              "for name in sys.argv[1:]:\n"
              "    try: found[name] = m.version(name)\n"
              "    except m.PackageNotFoundError: pass\n"
              "print(json.dumps(found))")
    result = subprocess.run([str(python), "-c", script, *names], capture_output=True, text=True)
    if result.returncode != 0:
        return {}
    versions: dict[str, str] = json.loads(result.stdout)
    return versions


def free_port() -> int:
    """A free loopback port for a server the benchmark starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
