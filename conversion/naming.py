"""Names for discovered tasks: the terms that set a task's calls apart (c-TF-IDF), and its tools or schema.

c-TF-IDF (Grootendorst, BERTopic) treats all the texts of one task as one document: a term scores
by how often that task uses it, weighed against how common the term is across all tasks, so
"card arrived" names the late-card task and "please" names nothing.

>>> distinctive_terms([["my card has not arrived", "card still not here"], ["transfer failed", "transfer declined"]])
[['card', 'arrived'], ['transfer', 'declined', 'failed']]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["distinctive_terms", "task_name"]

_TERMS = 3
_SLUG = re.compile(r"[^a-z0-9_.]+")


def distinctive_terms(texts_by_task: Sequence[Sequence[str]], top: int = _TERMS) -> list[list[str]]:
    """The `top` most distinctive words of each task's texts (words of two letters or more, no stop words)."""
    from sklearn.feature_extraction.text import CountVectorizer

    documents = [" ".join(texts) for texts in texts_by_task]
    vectorizer = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{2,}\b",
                                 preprocessor=_plain)
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # no words at all (empty texts, or stop words only)
        return [[] for _ in documents]
    words = vectorizer.get_feature_names_out()
    per_task = counts.sum(axis=1, keepdims=True)
    tf = counts / np.maximum(per_task, 1.0)
    idf = np.log1p(per_task.mean() / np.maximum(counts.sum(axis=0), 1.0))
    scores = tf * idf
    return [[str(words[j]) for j in np.argsort(-row, kind="stable")[:top] if row[j] > 0] for row in scores]


def _plain(text: str) -> str:
    """Lower case, apostrophes dropped: "hasn't" becomes the stop word "hasnt", not the word "hasn"."""
    return text.lower().replace("'", "").replace("’", "")


def task_name(terms: Sequence[str], anchor: str | None) -> str:
    """A slug for rules and headers: the anchor (a tool or schema name), then the terms.

    >>> task_name(["card", "arrive"], None), task_name(["weather", "city"], "get_weather")
    ('card-arrive', 'get_weather/weather-city')
    """
    slug = "-".join(_SLUG.sub("-", term.lower()).strip("-") for term in terms if term) or "task"
    return f"{_SLUG.sub('-', anchor.lower()).strip('-')}/{slug}" if anchor else slug
