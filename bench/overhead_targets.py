"""The servers the overhead benchmark compares, and how each one is started.

`direct` is the nginx upstream itself; the proxies run pinned to CPU 1 and are configured so
that `gpt-4.1` reaches the upstream's JSON location and `gpt-4.1-stream` its SSE location
(see overhead_fixtures for why there are two). Only minigate serves the Responses and Messages
APIs; the others are loaded through chat completions alone.

`--workers` compares minigate with `server.workers` 1, 2, ...: those targets (`minigate-1w`,
`minigate-2w`, ...) run on every CPU this process may use (WORKERS_CPUS), whatever their count of
workers, since more workers only help with more cores; so they are compared with each other, not
with the targets pinned to CPU 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from overhead_fixtures import API_PATHS, JSON_PATH, SSE_PATH, Api, Mode, nginx_config
from overhead_setup import BENCH

__all__ = ["PROXY_CPU", "UPSTREAM_CPU", "WORKERS_CPUS", "Launch", "Target", "upstream_launch", "minimal_target",
           "litellm_target", "minigate_target", "DIRECT"]

PROXY_CPU = "1"
UPSTREAM_CPU = "0"
WORKERS_CPUS = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
BENCH_KEY = "bench-key"
# LiteLLM rejects a master key that does not start with "sk-".
LITELLM_KEY = "sk-bench-key"


@dataclass(frozen=True)
class Launch:
    """A command line and its environment, ready for overhead_proc.start_server."""

    command: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Target:
    """One thing under test: its key, the APIs it serves, the chat path each mode is sent to, and
    how to start it.

    `launch(workdir, upstream_port, port)` builds the command line; it is None for `direct`,
    which is the upstream itself.
    """

    name: str
    api_key: str
    launch: Callable[[Path, int, int], Launch] | None
    paths: dict[Mode, str] = field(default_factory=lambda: {"json": JSON_PATH, "sse": JSON_PATH})
    startup_timeout_s: float = 60.0
    apis: tuple[Api, ...] = ("chat",)

    def path(self, api: Api, mode: Mode) -> str:
        """Where a request of `api` in `mode` goes: chat by mode, the others by API (the model names the mode)."""
        return self.paths[mode] if api == "chat" else API_PATHS[api]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    env.pop("DATABASE_URL", None)  # LiteLLM would try to reach it
    return env


def upstream_launch(nginx: str, workdir: Path, port: int) -> Launch:
    """nginx in the foreground on CPU 0, its config, pid and logs in `workdir`."""
    config = workdir / "nginx.conf"
    config.write_text(nginx_config(workdir, port))
    command = ["taskset", "-c", UPSTREAM_CPU, nginx, "-p", str(workdir), "-c", str(config),
               "-e", str(workdir / "nginx-error.log")]
    return Launch(command, _env())


DIRECT = Target("direct", BENCH_KEY, launch=None, paths={"json": JSON_PATH, "sse": SSE_PATH})


def minimal_target(python: Path) -> Target:
    def launch(workdir: Path, upstream: int, port: int) -> Launch:
        command = ["taskset", "-c", PROXY_CPU, str(python), "-m", "uvicorn", "minimal_proxy:app",
                   "--app-dir", str(BENCH), "--host", "127.0.0.1", "--port", str(port),
                   "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        return Launch(command, _env(MINIMAL_PROXY_UPSTREAM=f"http://127.0.0.1:{upstream}"))

    return Target("minimal", BENCH_KEY, launch, paths={"json": JSON_PATH, "sse": SSE_PATH})


_LITELLM_CONFIG = """model_list:
  - model_name: gpt-4.1
    litellm_params: {{model: openai/gpt-4.1, api_base: "http://127.0.0.1:{upstream}/v1", api_key: dummy}}
  - model_name: gpt-4.1-stream
    litellm_params: {{model: openai/gpt-4.1, api_base: "http://127.0.0.1:{upstream}/sse/v1", api_key: dummy}}
litellm_settings:
  telemetry: false
  callbacks: []
  success_callback: []
  failure_callback: []
general_settings:
  master_key: {key}
"""


def litellm_target(litellm: Path) -> Target:
    def launch(workdir: Path, upstream: int, port: int) -> Launch:
        config = workdir / "litellm.yaml"
        config.write_text(_LITELLM_CONFIG.format(upstream=upstream, key=LITELLM_KEY))
        command = ["taskset", "-c", PROXY_CPU, str(litellm), "--config", str(config),
                   "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        # The bundled cost map instead of a fetch from GitHub; no feedback banner.
        env = _env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_DONT_SHOW_FEEDBACK_BOX="True",
                   LITELLM_TELEMETRY="False")
        return Launch(command, env)

    return Target("litellm", LITELLM_KEY, launch, startup_timeout_s=180.0)


_MINIGATE_CONFIG = """server: {{host: 127.0.0.1, port: {port}, workers: {workers}}}
auth:
  keys:
    - {{name: bench, key: {key}, role: agent}}
upstreams:
  nginx: {{kind: openai, base_url: "http://127.0.0.1:{upstream}/v1", api_key: dummy}}
  nginx-sse: {{kind: openai, base_url: "http://127.0.0.1:{upstream}/sse/v1", api_key: dummy}}
models:
  gpt-4.1: {{upstream: nginx, model: gpt-4.1, tier: frontier}}
  gpt-4.1-stream: {{upstream: nginx-sse, model: gpt-4.1, tier: frontier}}
routes:
  gpt-4.1: {{default: gpt-4.1}}
  gpt-4.1-stream: {{default: gpt-4.1-stream}}
logging: {{store: "sqlite:///{workdir}/bench.db"}}
"""


def minigate_target(minigate: Path, workers: int | None = None) -> Target:
    """minigate pinned to CPU 1; with `workers`, `minigate-<N>w`: that many workers on WORKERS_CPUS."""
    def launch(workdir: Path, upstream: int, port: int) -> Launch:
        config = workdir / "minigate.yaml"
        config.write_text(_MINIGATE_CONFIG.format(port=port, key=BENCH_KEY, upstream=upstream,
                                                  workdir=workdir, workers=workers or 1))
        command = ["taskset", "-c", PROXY_CPU if workers is None else WORKERS_CPUS, str(minigate), "serve",
                   "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        return Launch(command, _env())

    name = "minigate" if workers is None else f"minigate-{workers}w"
    return Target(name, BENCH_KEY, launch, apis=("chat", "responses", "messages"))
