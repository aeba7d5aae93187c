"""`minigate router fit`: learn the escalation score from labelled outcomes.

Two input formats, told apart by `detect_format` or named with `--format`:

- `requests`: request JSONL where each line also has `"miniature_ok": true|false` (did the small
  model's answer do?). The label is `not miniature_ok`.
- `routellm`: RouteLLM's evaluation data, a prompt and whether each model answered it correctly: CSV
  with a `prompt` column and one True/False column per model (RouteLLM's `mmlu_<subject>.csv`), or
  JSONL objects with the same keys. The label ("needs the frontier") is: the weak model was wrong
  *and the strong model right*. Where both are wrong, escalating buys nothing, so those prompts are
  not worth the strong model's price; labelling "weak wrong" alone teaches the score what is hard for
  every model (on RouteLLM's MMLU data, 5-fold APGR 0.58 against 0.64; docs/routing.md). RouteLLM's
  routers are likewise trained on whether the strong model *wins*.

A logistic regression (conversion/fit_design.py; scikit-learn, imported only there) over the request
features and, unless `lexical=False`, the words of the last user turn (router/lexical.py) predicts the
label; its coefficients are written as a scoring file (`{"bias", "weights", "lexical"}`) that the
config's `scoring.model` points to. The gateway reads that file as plain JSON: serving the fitted score
needs neither scikit-learn nor torch. How well such a score generalises is measured by
conversion/fit_cv.py.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from minigate.conversion.fit_design import Inputs, fit_logistic

__all__ = ["DEFAULT_L2", "Format", "Labelled", "detect_format", "fit_scoring", "load_labelled", "read_labelled",
           "read_routellm"]

Format = Literal["auto", "requests", "routellm"]
# The L2 penalty (scikit-learn's 1/C). 20 generalised best on RouteLLM's MMLU data under 5-fold
# cross-validation (C = 0.03-0.1 within 0.005 APGR; the scikit-learn default, C = 1, lost 0.03): with
# thousands of word weights, strong shrinkage keeps only words that recur with the label.
DEFAULT_L2 = 20.0
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def detect_format(path: Path) -> Literal["requests", "routellm"]:
    """A .csv is RouteLLM's; JSONL by its first object: `miniature_ok` means requests, `prompt` RouteLLM."""
    if path.suffix.lower() == ".csv":
        return "routellm"
    with path.open("rb") as lines:
        first = next((line for line in lines if line.strip()), b"{}")
    try:
        body = orjson.loads(first)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: line 1 is not JSON ({exc})") from exc
    if isinstance(body, dict) and "miniature_ok" in body:
        return "requests"
    if isinstance(body, dict) and "prompt" in body:
        return "routellm"
    raise ValueError(f"{path}: cannot tell the format (no 'miniature_ok' nor 'prompt' in line 1); use --format")


@dataclass(frozen=True)
class Labelled:
    """Requests and their `needs_frontier` labels, with the subject each came from and, for RouteLLM
    data, whether each model answered it correctly (what APGR needs; None for request JSONL).

    A request's subject is the stem of its file (RouteLLM ships one CSV per MMLU subject): what
    leave-subjects-out cross-validation holds out together.
    """

    requests: list[dict[str, Any]]
    needs_frontier: list[bool]
    subjects: list[str]
    outcomes: list[tuple[bool, bool]] | None = None  # (strong right, weak right) per request

    def __add__(self, other: Labelled) -> Labelled:
        both = None if self.outcomes is None or other.outcomes is None else self.outcomes + other.outcomes
        return Labelled(self.requests + other.requests, self.needs_frontier + other.needs_frontier,
                        self.subjects + other.subjects, both)


def load_labelled(path: Path, fmt: Format = "auto", strong: str = "strong", weak: str = "weak") -> Labelled:
    """Requests and `needs_frontier` labels from one file; ValueError names the file and the problem."""
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "routellm":
        return read_routellm(path, strong, weak)
    with path.open("rb") as lines:
        try:
            requests, labels = read_labelled(lines)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return Labelled(requests, labels, [path.stem] * len(requests))


def read_labelled(lines: Iterable[str | bytes]) -> tuple[list[dict[str, Any]], list[bool]]:
    """Requests and `needs_frontier` labels from labelled JSONL; ValueError names a bad line."""
    requests: list[dict[str, Any]] = []
    labels: list[bool] = []
    for number, body in _objects(lines):
        if not isinstance(body.get("miniature_ok"), bool):
            raise ValueError(f"line {number}: needs a boolean 'miniature_ok' beside the request")
        labels.append(not body.pop("miniature_ok"))
        requests.append(body)
    return requests, labels


def read_routellm(path: Path, strong: str, weak: str) -> Labelled:
    """Prompts as one-turn requests, labelled `weak wrong and strong right`, from RouteLLM CSV or JSONL."""
    requests: list[dict[str, Any]] = []
    outcomes: list[tuple[bool, bool]] = []
    for number, row in _routellm_rows(path):
        missing = [key for key in ("prompt", strong, weak) if key not in row]
        if missing:
            raise ValueError(f"{path}: row {number} has no {missing} (it has {sorted(row)}); "
                             "name the models' columns with --strong and --weak")
        try:
            outcomes.append((_correct(row[strong]), _correct(row[weak])))
        except ValueError as exc:
            raise ValueError(f"{path}: row {number}: {exc}") from exc
        requests.append({"messages": [{"role": "user", "content": str(row["prompt"])}]})
    labels = [strong_ok and not weak_ok for strong_ok, weak_ok in outcomes]
    return Labelled(requests, labels, [path.stem] * len(requests), outcomes)


def fit_scoring(requests: Sequence[Mapping[str, Any]], needs_frontier: Sequence[bool], *, lexical: bool = True,
                l2: float = DEFAULT_L2) -> dict[str, Any]:
    """Fit on all the data; returns the scoring file's content: bias, weights per feature, word weights, stats."""
    fitted = fit_logistic(Inputs.of(requests, lexical=lexical), needs_frontier, l2)
    bias, weights = fitted.feature_weights()
    return {"bias": bias, "weights": weights, "lexical": _word_weights(fitted.word_weights()),
            "examples": len(requests), "needs_frontier_share": sum(needs_frontier) / len(needs_frontier), "l2": l2}


def _word_weights(coefficients: Mapping[str, float]) -> dict[str, float]:
    """Words by weight, strongest escalation first; 4 decimals and no zeros keep the file small."""
    rounded = {word: round(c, 4) for word, c in coefficients.items()}
    return dict(sorted(((word, c) for word, c in rounded.items() if c), key=lambda item: -item[1]))


def _objects(lines: Iterable[str | bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise ValueError(f"line {number}: not a JSON object")
        yield number, body


def _routellm_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            yield from enumerate(csv.DictReader(handle), start=2)  # row 1 is the header
        return
    with path.open("rb") as lines:
        try:
            yield from _objects(lines)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _correct(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"a correctness column holds {value!r}; expected True/False")
