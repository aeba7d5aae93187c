"""`minigate router fit`: learn the escalation score's weights from labelled outcomes.

Input: request JSONL where each line also has `"miniature_ok": true|false` (did the small model's
answer do?). A logistic regression (scikit-learn, imported only here) over the request features
predicts `not miniature_ok`; its coefficients are written as a scoring file (`{"bias", "weights"}`)
that the config's `scoring.model` points to. The gateway reads that file as plain JSON: serving the
fitted score needs neither scikit-learn nor torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from minigate.router.features import FEATURE_NAMES, extract_features
from minigate.router.score import numeric_inputs

__all__ = ["fit_scoring", "read_labelled"]


def read_labelled(lines: Iterable[str | bytes]) -> tuple[list[dict[str, Any]], list[bool]]:
    """Requests and `needs_frontier` labels from labelled JSONL; ValueError names a bad line."""
    requests: list[dict[str, Any]] = []
    labels: list[bool] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not JSON ({exc})") from exc
        if not isinstance(body, dict) or not isinstance(body.get("miniature_ok"), bool):
            raise ValueError(f"line {number}: needs a boolean 'miniature_ok' beside the request")
        labels.append(not body.pop("miniature_ok"))
        requests.append(body)
    return requests, labels


def fit_scoring(requests: Sequence[Mapping[str, Any]], needs_frontier: Sequence[bool]) -> dict[str, Any]:
    """Fit on all the data; returns the scoring file's content: bias, weights per feature, and stats."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(set(needs_frontier)) < 2:
        raise ValueError("the labels must include both outcomes (some miniature_ok true, some false)")
    rows = [list(numeric_inputs(extract_features(body)).values()) for body in requests]
    scaler = StandardScaler().fit(rows)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(rows), needs_frontier)
    # Fold the standardisation into the coefficients so the score reads raw feature values.
    scale = [s if s else 1.0 for s in scaler.scale_]
    weights = {name: float(c / s) for name, c, s in zip(FEATURE_NAMES, model.coef_[0], scale, strict=True)}
    bias = float(model.intercept_[0] - sum(c * m / s for c, m, s in zip(model.coef_[0], scaler.mean_, scale, strict=True)))
    return {"bias": bias, "weights": weights, "examples": len(rows),
            "needs_frontier_share": sum(needs_frontier) / len(needs_frontier)}
