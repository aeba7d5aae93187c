"""`minigate router fit --cv`: how well a fitted escalation score ranks prompts it was not fitted on.

Two ways to hold prompts out, each in `folds` folds, every prompt scored once by a model fitted without it:

- `random`: prompts dealt into folds at random (seed 0). Prompts of one subject sit on both sides, so
  words can learn which subjects the weak model trails on: this measures memory as much as insight.
- `subjects`: leave-subjects-out, a group k-fold where a subject (an input file's stem: RouteLLM
  ships one CSV per MMLU subject) is held out whole. This measures what the score does on kinds of
  prompts it has never seen, the case that matters for new traffic.

Each scheme is run for a ladder of inputs: features only, + words, and, when asked, + MiniLM
embeddings. Figures: ROC AUC of the `needs_frontier` label, and, where both models' outcomes are known
(RouteLLM data), RouteLLM's APGR and CPT computed as its evaluate.py does (bench/routing.py alike):
thresholds at the 11 edges of 10 equal-count bins of the scores, APGR = (AUC of accuracy against
strong-model share - weak accuracy) / (strong - weak accuracy), CPT(x%) = strong-model calls needed for
x% of the accuracy gap.

>>> [len(held) for held in held_out("subjects", ["a"] * 4 + ["b"] * 2 + ["c"] * 2, 2)]
[4, 4]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from minigate.conversion.fit import DEFAULT_L2, Labelled
from minigate.conversion.fit_design import Inputs, Matrix, fit_logistic

__all__ = ["CvReport", "Figures", "Scheme", "Variant", "cross_validate", "held_out", "routing_quality", "variants"]

Scheme = Literal["random", "subjects"]
_THRESHOLDS = 11


@dataclass(frozen=True)
class Variant:
    """Which inputs a fit may use beside the request features."""

    name: str
    words: bool
    embeddings: bool


@dataclass(frozen=True)
class Figures:
    """One variant under one scheme; APGR and CPTs (% of calls) are None without both models' outcomes."""

    variant: str
    cv: Scheme
    auc: float
    apgr: float | None
    cpt50: float | None
    cpt80: float | None


@dataclass(frozen=True)
class CvReport:
    """What `router fit --cv` prints: the data's size and every variant's figures under every scheme."""

    examples: int
    subjects: int
    folds: int
    l2: float
    needs_frontier_share: float
    strong_accuracy: float | None
    weak_accuracy: float | None
    rows: list[Figures]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def variants(*, lexical: bool, embeddings: bool) -> list[Variant]:
    """The ladder of inputs: features, + words (unless not lexical), + embeddings (when asked), both."""
    ladder = [Variant("features", False, False)]
    if lexical:
        ladder.append(Variant("features + words", True, False))
    if embeddings:
        ladder.append(Variant("features + embeddings", False, True))
        if lexical:
            ladder.append(Variant("features + words + embeddings", True, True))
    return ladder


def held_out(scheme: Scheme, subjects: Sequence[str], folds: int) -> list[npt.NDArray[np.intp]]:
    """Each fold's held-out rows (sorted). `subjects` deals whole subjects, largest first, to the smallest fold."""
    if scheme == "random":
        if len(subjects) < folds:
            raise ValueError(f"{folds}-fold cross-validation needs at least {folds} requests, got {len(subjects)}")
        order = np.random.default_rng(0).permutation(len(subjects))
        return [np.sort(order[fold::folds]) for fold in range(folds)]
    sizes = Counter(subjects)
    if len(sizes) < folds:
        raise ValueError(f"leave-subjects-out in {folds} folds needs at least {folds} subjects (input files), "
                         f"got {len(sizes)}: give more files or fewer --folds")
    fold_of: dict[str, int] = {}
    loads = [0] * folds
    for subject, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        fold_of[subject] = smallest = loads.index(min(loads))
        loads[smallest] += size
    assignment = np.array([fold_of[subject] for subject in subjects])
    return [np.flatnonzero(assignment == fold) for fold in range(folds)]


def cross_validate(data: Labelled, embeddings: Matrix | None, *, schemes: Sequence[Scheme], folds: int = 5,
                   lexical: bool = True, l2: float = DEFAULT_L2,
                   progress: Callable[[int, int], object] = lambda done, total: None) -> CvReport:
    """Every variant under every scheme; `embeddings` (one row per request) adds the embedding variants."""
    inputs = Inputs.of(data.requests, lexical=lexical, embeddings=embeddings)
    labels = np.array(data.needs_frontier, dtype=bool)
    ladder = variants(lexical=lexical, embeddings=embeddings is not None)
    splits = {scheme: held_out(scheme, data.subjects, folds) for scheme in schemes}
    total, done = len(ladder) * len(schemes) * folds, 0
    progress(done, total)
    rows = []
    for scheme in schemes:
        for variant in ladder:
            view = inputs.without(words=not variant.words, embeddings=not variant.embeddings)
            scores = np.zeros(len(labels))
            for held in splits[scheme]:
                train = np.setdiff1d(np.arange(len(labels)), held)
                scores[held] = fit_logistic(view.take(train), labels[train].tolist(), l2).scores(view.take(held))
                done += 1
                progress(done, total)
            rows.append(_figures(variant.name, scheme, scores, labels, data.outcomes))
    strong, weak = _accuracies(data.outcomes)
    return CvReport(len(labels), len(set(data.subjects)), folds, l2, float(labels.mean()), strong, weak, rows)


def routing_quality(scores: Matrix, strong: npt.NDArray[np.bool_],
                    weak: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    """APGR, CPT(50%) and CPT(80%) (in % of calls) when the highest-scored prompts go to the strong model."""
    thresholds = np.percentile(scores, np.linspace(0, 100, _THRESHOLDS))
    shares, accuracies = [], []
    for index, threshold in enumerate(thresholds):
        chosen = scores >= threshold if index != _THRESHOLDS - 1 else scores > threshold
        shares.append(chosen.mean() * 100)
        accuracies.append(np.where(chosen, strong, weak).mean() * 100)
    order = np.argsort(shares, kind="stable")
    share, accuracy = np.array(shares)[order], np.array(accuracies)[order]
    strong_accuracy, weak_accuracy = strong.mean() * 100, weak.mean() * 100
    span = share[-1] / 100 - share[0] / 100
    area = float(np.trapezoid(accuracy, share / 100))
    apgr = (area - weak_accuracy * span) / ((strong_accuracy - weak_accuracy) * span)
    cpt50, cpt80 = (float(np.interp(part * (strong_accuracy - weak_accuracy) + weak_accuracy, accuracy, share))
                    for part in (0.5, 0.8))
    return float(apgr), cpt50, cpt80


def _figures(variant: str, scheme: Scheme, scores: Matrix, labels: npt.NDArray[np.bool_],
             outcomes: list[tuple[bool, bool]] | None) -> Figures:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels, scores))
    if outcomes is None:
        return Figures(variant, scheme, auc, None, None, None)
    both = np.array(outcomes, dtype=bool)
    return Figures(variant, scheme, auc, *routing_quality(scores, both[:, 0], both[:, 1]))


def _accuracies(outcomes: list[tuple[bool, bool]] | None) -> tuple[float | None, float | None]:
    if outcomes is None:
        return None, None
    both = np.array(outcomes, dtype=bool)
    return float(both[:, 0].mean()), float(both[:, 1].mean())
