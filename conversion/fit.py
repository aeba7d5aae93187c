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

A logistic regression (scikit-learn, imported only here) over the request features and, unless
`lexical=False`, the words of the last user turn (router/lexical.py) predicts the label; its
coefficients are written as a scoring file (`{"bias", "weights", "lexical"}`) that the config's
`scoring.model` points to. The gateway reads that file as plain JSON: serving the fitted score needs
neither scikit-learn nor torch.
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from minigate.router.features import FEATURE_NAMES, extract_features
from minigate.router.lexical import last_user_text, terms
from minigate.router.score import numeric_inputs

__all__ = ["DEFAULT_L2", "Format", "detect_format", "fit_scoring", "load_labelled", "read_labelled", "read_routellm"]

Format = Literal["auto", "requests", "routellm"]
# The L2 penalty (scikit-learn's 1/C). 20 generalised best on RouteLLM's MMLU data under 5-fold
# cross-validation (C = 0.03-0.1 within 0.005 APGR; the scikit-learn default, C = 1, lost 0.03): with
# thousands of word weights, strong shrinkage keeps only words that recur with the label.
DEFAULT_L2 = 20.0
# A word enters the scoring file only if at least this many training prompts contain it: rarer words
# carry no reliable signal, would bloat the file, and may be one user's name or id.
_MIN_PROMPTS = 5
_TERM = "term:"  # feature-name prefix of words; feature names and words contain no ':'
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


def load_labelled(path: Path, fmt: Format = "auto", strong: str = "strong",
                  weak: str = "weak") -> tuple[list[dict[str, Any]], list[bool]]:
    """Requests and `needs_frontier` labels from one file; ValueError names the file and the problem."""
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "requests":
        with path.open("rb") as lines:
            try:
                return read_labelled(lines)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
    return read_routellm(path, strong, weak)


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


def read_routellm(path: Path, strong: str, weak: str) -> tuple[list[dict[str, Any]], list[bool]]:
    """Prompts as one-turn requests, labelled `weak wrong and strong right`, from RouteLLM CSV or JSONL."""
    requests: list[dict[str, Any]] = []
    labels: list[bool] = []
    for number, row in _routellm_rows(path):
        missing = [key for key in ("prompt", strong, weak) if key not in row]
        if missing:
            raise ValueError(f"{path}: row {number} has no {missing} (it has {sorted(row)}); "
                             "name the models' columns with --strong and --weak")
        try:
            strong_ok, weak_ok = _correct(row[strong]), _correct(row[weak])
        except ValueError as exc:
            raise ValueError(f"{path}: row {number}: {exc}") from exc
        requests.append({"messages": [{"role": "user", "content": str(row["prompt"])}]})
        labels.append(strong_ok and not weak_ok)
    return requests, labels


def fit_scoring(requests: Sequence[Mapping[str, Any]], needs_frontier: Sequence[bool], *, lexical: bool = True,
                l2: float = DEFAULT_L2) -> dict[str, Any]:
    """Fit on all the data; returns the scoring file's content: bias, weights per feature, word weights, stats."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    if len(set(needs_frontier)) < 2:
        raise ValueError("the labels must include both outcomes (some requests needing the frontier, some not)")
    numeric = [numeric_inputs(extract_features(body)) for body in requests]
    means = {name: statistics.fmean(row[name] for row in numeric) for name in FEATURE_NAMES}
    scales = {name: statistics.pstdev((row[name] for row in numeric), means[name]) or 1.0 for name in FEATURE_NAMES}
    words = [terms(last_user_text(body)) if lexical else set() for body in requests]
    vocabulary = {word for word, count in Counter(w for ws in words for w in ws).items() if count >= _MIN_PROMPTS}
    # Standardised features (comparable penalties) and a 1 per known word present; sparse for scikit-learn.
    rows = [{**{name: (row[name] - means[name]) / scales[name] for name in FEATURE_NAMES},
             **dict.fromkeys((_TERM + word for word in ws & vocabulary), 1.0)}
            for row, ws in zip(numeric, words, strict=True)]
    vectorizer = DictVectorizer()
    model = LogisticRegression(C=1 / l2, max_iter=2000).fit(vectorizer.fit_transform(rows), list(needs_frontier))
    coefficients = {name: float(c) for name, c in zip(vectorizer.feature_names_, model.coef_[0], strict=True)}
    # Fold the standardisation into the coefficients so the score reads raw feature values.
    weights = {name: coefficients.get(name, 0.0) / scales[name] for name in FEATURE_NAMES}
    bias = float(model.intercept_[0]) - sum(weights[name] * means[name] for name in FEATURE_NAMES)
    return {"bias": bias, "weights": weights, "lexical": _word_weights(coefficients), "examples": len(rows),
            "needs_frontier_share": sum(needs_frontier) / len(needs_frontier), "l2": l2}


def _word_weights(coefficients: Mapping[str, float]) -> dict[str, float]:
    """Words by weight, strongest escalation first; 4 decimals and no zeros keep the file small."""
    rounded = {name.removeprefix(_TERM): round(c, 4) for name, c in coefficients.items() if name.startswith(_TERM)}
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
