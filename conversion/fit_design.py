"""The inputs of `router fit`'s logistic regression, and the regression itself.

Three kinds of input per request: the request features (router/features.py, standardised), a 0/1 per
known word of the last user turn (router/lexical.py) and, for evaluation only, the MiniLM embedding of
that text (standardised per dimension). What is learnt from data (the standardisation, the vocabulary)
is learnt from the training rows alone: `Design.learn` sees them, `Design.matrix` then encodes any rows.
Cross-validation needs that split, else the held-out rows would help pick the words that score them.

>>> inputs = Inputs.of([{"messages": [{"role": "user", "content": "hi"}]}] * 5, lexical=True)
>>> design = Design.learn(inputs)
>>> design.vocabulary, design.matrix(inputs).shape == (5, len(FEATURE_NAMES) + 1)
(['hi'], True)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from minigate.router.features import FEATURE_NAMES, extract_features
from minigate.router.lexical import last_user_text, terms
from minigate.router.score import numeric_inputs

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix  # type: ignore[import-untyped]

__all__ = ["MIN_PROMPTS", "Design", "Fitted", "Inputs", "Matrix", "fit_logistic"]

# A word enters the design only if at least this many training prompts contain it: rarer words carry
# no reliable signal, would bloat the scoring file, and may be one user's name or id.
MIN_PROMPTS = 5

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Inputs:
    """What each request offers the regression, computed once: raw features, words, embedding (or None)."""

    features: Matrix  # (rows, len(FEATURE_NAMES)), raw values as the score reads them
    words: list[frozenset[str]]  # empty sets without lexical inputs
    embeddings: Matrix | None = None  # (rows, dimensions)

    @classmethod
    def of(cls, requests: Sequence[Mapping[str, Any]], *, lexical: bool,
           embeddings: npt.NDArray[np.floating[Any]] | None = None) -> Inputs:
        rows = [numeric_inputs(extract_features(body)) for body in requests]
        features = np.array([[row[name] for name in FEATURE_NAMES] for row in rows], dtype=np.float64)
        words = [frozenset(terms(last_user_text(body))) if lexical else frozenset() for body in requests]
        return cls(features.reshape(len(rows), len(FEATURE_NAMES)), words,
                   None if embeddings is None else np.asarray(embeddings, dtype=np.float64))

    def take(self, rows: npt.NDArray[np.intp]) -> Inputs:
        """The inputs of some rows, in the given order."""
        return Inputs(self.features[rows], [self.words[row] for row in rows],
                      None if self.embeddings is None else self.embeddings[rows])

    def without(self, *, words: bool = False, embeddings: bool = False) -> Inputs:
        """The same rows with a kind of input dropped (the ablations of cross-validation)."""
        return Inputs(self.features, [frozenset()] * len(self.words) if words else self.words,
                      None if embeddings else self.embeddings)


@dataclass(frozen=True)
class Design:
    """Columns of the regression: standardised features, then known words, then standardised embedding dims."""

    means: Matrix
    scales: Matrix
    vocabulary: list[str]
    embedding: tuple[Matrix, Matrix] | None  # the embedding dimensions' means and scales

    @classmethod
    def learn(cls, inputs: Inputs) -> Design:
        counts = Counter(word for words in inputs.words for word in words)
        means, scales = _standardisation(inputs.features)
        return cls(means, scales, sorted(word for word, count in counts.items() if count >= MIN_PROMPTS),
                   None if inputs.embeddings is None else _standardisation(inputs.embeddings))

    def matrix(self, inputs: Inputs) -> csr_matrix:
        """Sparse rows for scikit-learn: features and embeddings are dense blocks, words mostly zeros."""
        from scipy import sparse  # type: ignore[import-untyped]

        column = {word: index for index, word in enumerate(self.vocabulary)}
        hits = [[column[word] for word in words if word in column] for words in inputs.words]
        indices = np.fromiter((index for row in hits for index in row), dtype=np.int64)
        pointers = np.cumsum([0, *map(len, hits)])
        blocks = [sparse.csr_matrix((inputs.features - self.means) / self.scales),
                  sparse.csr_matrix((np.ones(len(indices)), indices, pointers), shape=(len(hits), len(column)))]
        if self.embedding is not None:
            assert inputs.embeddings is not None, "a design learnt with embeddings encodes rows with embeddings"
            means, scales = self.embedding
            blocks.append(sparse.csr_matrix((inputs.embeddings - means) / scales))
        return sparse.hstack(blocks, format="csr")


@dataclass(frozen=True)
class Fitted:
    """A fitted regression over a design's columns: `scores` ranks rows (higher: more in need of the frontier)."""

    design: Design
    bias: float
    coefficients: Matrix

    def scores(self, inputs: Inputs) -> Matrix:
        return np.asarray(self.design.matrix(inputs) @ self.coefficients + self.bias, dtype=np.float64)

    def feature_weights(self) -> tuple[float, dict[str, float]]:
        """Bias and weights on raw feature values: the standardisation folded in, as the gateway's score reads them."""
        weights = self.coefficients[:len(FEATURE_NAMES)] / self.design.scales
        bias = self.bias - float(weights @ self.design.means)
        return bias, {name: float(weight) for name, weight in zip(FEATURE_NAMES, weights, strict=True)}

    def word_weights(self) -> dict[str, float]:
        """Each vocabulary word's coefficient (words are 0/1 inputs: nothing to fold in)."""
        start = len(FEATURE_NAMES)
        words = self.coefficients[start:start + len(self.design.vocabulary)]
        return dict(zip(self.design.vocabulary, map(float, words), strict=True))


def fit_logistic(inputs: Inputs, needs_frontier: Sequence[bool], l2: float) -> Fitted:
    """An L2-penalised logistic regression (scikit-learn's 1/C = l2) on the inputs' design."""
    from sklearn.linear_model import LogisticRegression

    if len(set(needs_frontier)) < 2:
        raise ValueError("the labels must include both outcomes (some requests needing the frontier, some not)")
    design = Design.learn(inputs)
    model = LogisticRegression(C=1 / l2, max_iter=2000).fit(design.matrix(inputs), list(needs_frontier))
    return Fitted(design, float(model.intercept_[0]), np.asarray(model.coef_[0], dtype=np.float64))


def _standardisation(values: Matrix) -> tuple[Matrix, Matrix]:
    """Column means and population standard deviations; a constant column keeps scale 1."""
    scales = values.std(axis=0)
    return values.mean(axis=0), np.where(scales > 0, scales, 1.0)
