"""`minigate route`: routing, offline; explain one decision, score many."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from minigate.cli.common import ConfigOption, config_or_exit, err, out
from minigate.config import Config

__all__ = ["app"]

app = typer.Typer(help="Routing, offline: explain one decision, score many.", no_args_is_help=True)


@app.command("explain")
def route_explain(
    config: ConfigOption = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="One request JSON; default stdin.")] = None,
    header: Annotated[Optional[list[str]], typer.Option(help="A request header, NAME=VALUE (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show one request's features, escalation score, every rule's outcome and the decision."""
    import orjson

    from minigate.errors import RequestError
    from minigate.router.decision import Router

    cfg = config_or_exit(config)
    raw = input.read_bytes() if input else sys.stdin.buffer.read()
    try:
        body = orjson.loads(raw)
        headers = dict(item.split("=", 1) for item in header or [])
        task = _task_by_signature(cfg, body)
        explanation = Router.from_config(cfg).explain(str(body.get("model", "")), body, headers, task)
    except (orjson.JSONDecodeError, AttributeError, ValueError) as exc:
        raise typer.BadParameter(f"the input must be one chat completions request as JSON: {exc}") from exc
    except RequestError as exc:
        raise typer.BadParameter(exc.message) from exc
    decision = explanation.decision
    report = {"task": task, "features": explanation.features.as_dict(), "score": explanation.score,
              "rules": [{"rule": name, "matched": matched} for name, matched in explanation.rules],
              "decision": {"route": decision.route, "model": decision.target.name, "tier": decision.target.tier,
                           "rule": decision.rule}}
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    features = Table(title=f"features (escalation score {explanation.score:.3f})")
    features.add_column("feature")
    features.add_column("value")
    for name, value in explanation.features.as_dict().items():
        features.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    out.print(features)
    rules = Table(title=f"rules of route {decision.route!r}")
    rules.add_column("rule")
    rules.add_column("outcome")
    for name, matched in explanation.rules:
        chosen = matched and name == decision.rule
        rules.add_row(name, "matched, chosen" if chosen else "matched" if matched else "no match")
    out.print(rules)
    out.print(f"task: {task}; decision: [bold]{decision.target.name}[/] ({decision.target.tier}) "
              f"by rule {decision.rule!r}")


def _task_by_signature(cfg: Config, body: dict[str, Any]) -> str:
    """The request's task name as the gateway would match it by signature (no embedding offline)."""
    if cfg.tasks.catalogue is None:
        return "unknown"
    from minigate.router.matcher import TaskMatcher

    matcher = TaskMatcher.load(cfg.tasks.model_copy(update={"embedding": False}))
    return matcher.name_of(matcher.known(body))


@app.command("score")
def route_score(
    config: ConfigOption = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Request JSONL; default stdin.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Decisions JSONL; default stdout.")] = None,
) -> None:
    """Route every request of a JSONL file offline: {"id", "score", "model", "tier", "rule"} per line."""
    import orjson
    from rich.progress import Progress

    from minigate.conversion.batch import score_lines
    from minigate.router.decision import Router

    cfg = config_or_exit(config)
    router = Router.from_config(cfg)
    source = input.open("rb") if input else sys.stdin.buffer
    sink = output.open("wb") if output else sys.stdout.buffer
    total = sum(1 for _ in input.open("rb")) if input else None
    with Progress(console=err, disable=not (err.is_terminal and input)) as bar:
        task = bar.add_task("scoring", total=total)
        for result in score_lines(router, source):
            sink.write(orjson.dumps(result) + b"\n")
            bar.advance(task)
    sink.flush()
