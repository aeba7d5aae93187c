"""`minigate router fit`: fit the escalation score's weights on labelled outcomes, and cross-validate them."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, cast

import typer

from minigate.cli.common import (
    ConfigOption,
    SinceOption,
    UntilOption,
    actor,
    bad_parameter_on,
    config_or_exit,
    err,
    exit_on,
    fail,
    out,
    when,
)

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["app"]



class Cv(str, Enum):
    """`--cv` values: conversion.fit_cv's schemes (the CLI imports no room at module level)."""

    random = "random"
    subjects = "subjects"

app = typer.Typer(help="The escalation score: fit its weights on labelled outcomes.", no_args_is_help=True)

# Why --embeddings never writes a file: the gateway's score is a few dictionary lookups per request, with
# no model (router/score.py); an embedding of every request's text would put MiniLM on the request path.
_EVALUATION_ONLY = ("--embeddings is an evaluation option: the gateway scores a request without any model, and "
                    "a scoring file with embedding weights would need MiniLM to embed every request's text (tens "
                    "of ms of CPU each). Compare the variants with --cv, then write the file without --embeddings")


@app.command("fit")
def router_fit(
    input: Annotated[Optional[list[Path]], typer.Option(
        "--input", "-i", help="Labelled data (repeatable): request JSONL with 'miniature_ok', or RouteLLM CSV/JSONL "
        "(prompt plus each model's True/False correctness). A file's name is its subject for --cv subjects.")] = None,
    from_log: Annotated[bool, typer.Option(
        "--from-log", help="Also label the call log's calls by their shadow verdicts, feedback and escalations "
        "(needs the log key; audited). A call's task is its subject for --cv subjects.")] = False,
    config: ConfigOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Scoring file for config's scoring.model (optional with --cv).")] = None,
    format: Annotated[Literal["auto", "requests", "routellm"], typer.Option(
        help="Input format; auto: .csv is RouteLLM, JSONL by its first line ('miniature_ok' or 'prompt').")] = "auto",
    strong: Annotated[str, typer.Option(help="RouteLLM data: the strong model's correctness column.")] = "strong",
    weak: Annotated[str, typer.Option(help="RouteLLM data: the weak model's correctness column.")] = "weak",
    lexical: Annotated[bool, typer.Option(
        help="Also weigh the words of the last user turn (serving then costs ~15 µs per 200-token prompt).")] = True,
    l2: Annotated[float, typer.Option(min=0.001, help="L2 penalty (scikit-learn's 1/C); higher keeps weights "
                                      "smaller.")] = 20.0,
    cv: Annotated[Optional[list[Cv]], typer.Option(
        help="Cross-validate (repeatable): 'random' folds, or 'subjects' (whole input files held out); prints "
        "AUC, APGR and CPT per set of inputs.")] = None,
    folds: Annotated[int, typer.Option(min=2, help="Folds of --cv.")] = 5,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings", help="With --cv: also try MiniLM embeddings of the last user turn as inputs (needs the "
        "`tasks` extra; evaluation only: never written to a scoring file).")] = False,
    embedding_cache: Annotated[Optional[Path], typer.Option(
        envvar="MINIGATE_EMBEDDING_CACHE", help="Embedding cache directory for --embeddings; default: none.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the --cv report as JSON instead of a table.")] = False,
) -> None:
    """Fit a logistic regression over request features (and words); write {"bias", "weights", "lexical"} as JSON.

    RouteLLM data is labelled "needs the frontier" where the weak model was wrong and the strong one right.
    With --cv, first print how well such a fit ranks requests it was not fitted on.
    """
    schemes = cast('list[Literal["random", "subjects"]]', list(dict.fromkeys(c.value for c in cv or [])))
    if not input and not from_log:
        raise typer.BadParameter("give labelled data with --input, or --from-log", param_hint="--input/--from-log")
    if output is None and not schemes:
        raise typer.BadParameter("give --output to write a scoring file, --cv to cross-validate, or both",
                                 param_hint="--output/--cv")
    if embeddings and (output is not None or not schemes):
        raise typer.BadParameter(_EVALUATION_ONLY, param_hint="--embeddings")
    if as_json and not schemes:
        raise typer.BadParameter("--json prints the cross-validation report: add --cv", param_hint="--json")
    import orjson
    from rich.progress import Progress

    from minigate.conversion.fit import Labelled, fit_scoring, load_labelled
    from minigate.conversion.fit_cv import cross_validate
    from minigate.conversion.fit_view import cv_table

    data = Labelled([], [], [], [])  # both models' outcomes known until a file without them (requests JSONL)
    with bad_parameter_on(OSError, ValueError, hint="--input"):
        for path in input or []:
            data += load_labelled(path, format, strong, weak)
    if from_log:
        data += _from_log(config, when(since, "--since"), when(until, "--until"))
    if schemes:
        with Progress(console=err, disable=not err.is_terminal) as bar:
            vectors = _embeddings(data.requests, embedding_cache, bar) if embeddings else None
            fitting = bar.add_task("cross-validating", total=None)
            with bad_parameter_on(ValueError, hint="--cv"):
                report = cross_validate(data, vectors, schemes=schemes, folds=folds, lexical=lexical, l2=l2,
                                        progress=lambda done, total: bar.update(fitting, completed=done, total=total))
        if as_json:
            typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            out.print(cv_table(report))
    if output is None:
        return
    with bad_parameter_on(ValueError, hint="--input"):
        fitted = fit_scoring(data.requests, data.needs_frontier, lexical=lexical, l2=l2)
    output.write_bytes(orjson.dumps(fitted, option=orjson.OPT_INDENT_2))
    err.print(f"fitted on {fitted['examples']} requests ({fitted['needs_frontier_share']:.0%} needed the frontier), "
              f"{len(fitted['lexical'])} words; wrote {output} ({output.stat().st_size / 1024:.0f} KiB): "
              "set scoring.model to it")


def _from_log(config: Path | None, since: float | None, until: float | None) -> Any:
    """The call log's labelled outcomes (conversion/fit_log.py); stops, saying why, when there are none."""
    import asyncio

    from minigate.conversion.fit_log import read_log_outcomes

    cfg = config_or_exit(config)
    found = asyncio.run(read_log_outcomes(cfg.logging, since=since, until=until, actor=actor()))
    if not found.requests:
        fail("no call in the log has an outcome yet: shadow a task (`shadow:` on a rule), rate calls "
             "(POST /v1/minigate/feedback), or route some to a miniature with escalate_on checks")
    err.print(f"from the call log: {len(found.requests)} labelled calls, "
              f"{sum(found.needs_frontier) / len(found.requests):.0%} needed the frontier")
    return found


def _embeddings(requests: list[dict[str, Any]], cache: Path | None, bar: Progress) -> Any:
    """MiniLM vectors of each request's last user text; without the `tasks` extra the command stops, saying so."""
    from minigate.router.embedding import Embedder, EmbeddingCache, EmbeddingsUnavailable
    from minigate.router.lexical import last_user_text

    embedding = bar.add_task("embedding", total=None)
    with exit_on(EmbeddingsUnavailable):
        return Embedder(EmbeddingCache(cache) if cache else None).embed(
            [last_user_text(body) for body in requests],
            progress=lambda done, total: bar.update(embedding, completed=done, total=total))
