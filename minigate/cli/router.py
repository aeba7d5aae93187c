"""`minigate router fit`: fit the escalation score's weights on labelled outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from minigate.cli.common import bad_parameter_on, err

__all__ = ["app"]

app = typer.Typer(help="The escalation score: fit its weights on labelled outcomes.", no_args_is_help=True)


@app.command("fit")
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
    with bad_parameter_on(OSError, ValueError, hint="--input"):
        for path in input:
            more_requests, more_labels = load_labelled(path, format, strong, weak)
            requests += more_requests
            labels += more_labels
        fitted = fit_scoring(requests, labels, lexical=lexical, l2=l2)
    output.write_bytes(orjson.dumps(fitted, option=orjson.OPT_INDENT_2))
    err.print(f"fitted on {fitted['examples']} requests ({fitted['needs_frontier_share']:.0%} needed the frontier), "
              f"{len(fitted['lexical'])} words; wrote {output} ({output.stat().st_size / 1024:.0f} KiB): "
              "set scoring.model to it")
