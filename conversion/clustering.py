"""Clustering call vectors into tasks, choosing how many tasks there are.

Choosing the number is the hard part (bench/clustering compares the methods). What works best on
MiniLM vectors: a spectral embedding of the k-nearest-neighbour graph (it follows the shape of the
data, where raw cosine distances blur neighbouring intents together), a Ward tree over it, and the
cut of the tree whose clusters have the best silhouette in the original space. One tree gives every
cut, so trying many numbers of tasks costs a silhouette each, not a clustering each.

The embedding's dimension matters as much as the cut: with d dimensions, the best cut lands near
one to three times d. So a few dimensions are tried (8, 16, 32, 64, 128, as the input allows) and
the (dimension, cut) with the best silhouette wins. Silhouettes are measured on one fixed sample of
the vectors, so every candidate is judged on the same points.

Beyond `SAMPLE` vectors, a random sample is clustered and every other vector takes the task of its
nearest sampled neighbours: the trees and the silhouettes grow with the square of the input.

>>> cluster(vectors).labels[:5]  # doctest: +SKIP
array([3, 3, 0, 7, 3])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SAMPLE", "Clustering", "Silhouettes", "cluster", "cut_tree", "spectral_coordinates", "ward_tree"]

SAMPLE = 10_000
_MIN_VECTORS = 6  # fewer calls than this are one task: no structure to find
_DIMENSIONS = (8, 16, 32, 64, 128)
_POINTS_PER_DIMENSION = 100  # a dimension is tried when there are this many vectors per dimension
_GRAPH_NEIGHBOURS = 15
_TREE_NEIGHBOURS = 10
_SILHOUETTE_SAMPLE = 4_000
_K_FLOOR = 64  # candidates up to here are always tried
_K_STEP = 1.08  # candidate numbers of tasks grow geometrically: 2, 3, ..., 100, 108, 117, ...
_WORKING_MEMORY_MB = 64  # scikit-learn's chunk size for distance computations (default 1 GiB)

Labels = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float32]
Tree = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Clustering:
    """Task labels (0..k-1) in input order, the k and embedding dimension chosen, and every silhouette tried."""

    labels: Labels
    chosen: int
    dimensions: int
    silhouettes: dict[int, dict[int, float]]  # dimension -> number of tasks -> silhouette


def cluster(vectors: Floats, *, max_tasks: int | None = None, seed: int = 0) -> Clustering:
    """Labels for unit vectors: spectral embeddings, Ward trees, the cut with the best silhouette."""
    from sklearn import config_context

    count = len(vectors)
    limit = min(max_tasks or count // 3, SAMPLE // 3)
    if count < _MIN_VECTORS or limit < 2:
        return Clustering(np.zeros(count, dtype=np.int64), 1 if count else 0, 0, {})
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(count, SAMPLE, replace=False)) if count > SAMPLE else np.arange(count)
    dimensions = [d for d in _DIMENSIONS if d * _POINTS_PER_DIMENSION <= len(sample)] or [_DIMENSIONS[0]]
    with config_context(working_memory=_WORKING_MEMORY_MB):
        coordinates = spectral_coordinates(vectors[sample], components=dimensions[-1], seed=seed)
        judge = Silhouettes(vectors[sample], seed=seed)
        best: tuple[float, int, int, Tree] | None = None
        scores: dict[int, dict[int, float]] = {}
        for dimension in dimensions:
            tree = ward_tree(_unit_rows(coordinates[:, :dimension]))
            scores[dimension] = judge.sweep(tree, _candidates(limit))
            chosen = max(scores[dimension], key=lambda k: (scores[dimension][k], -k))
            if best is None or scores[dimension][chosen] > best[0]:
                best = (scores[dimension][chosen], chosen, dimension, tree)
        assert best is not None  # at least one dimension is tried
        _, chosen, dimension, tree = best
        labels = cut_tree(tree, len(sample), chosen)
        if count > SAMPLE:
            labels = _spread(vectors, sample, labels)
    return Clustering(labels, chosen, dimension, scores)


class Silhouettes:
    """Silhouettes of many labellings of the same vectors, on one fixed sample of them (cosine distance).

    >>> Silhouettes(vectors).score(labels)  # doctest: +SKIP
    0.21
    """

    def __init__(self, vectors: Floats, *, seed: int = 0) -> None:
        count = len(vectors)
        rng = np.random.default_rng(seed)
        self.rows = np.sort(rng.choice(count, _SILHOUETTE_SAMPLE, replace=False)) if count > _SILHOUETTE_SAMPLE \
            else np.arange(count)
        sample = vectors[self.rows]
        self.distances = np.clip(1.0 - sample @ sample.T, 0.0, 2.0).astype(np.float32)
        np.fill_diagonal(self.distances, 0.0)

    def score(self, labels: Labels) -> float:
        """The mean silhouette of `labels` (one per vector); -1 when the sample sees a single cluster."""
        from sklearn.metrics import silhouette_score

        sampled = labels[self.rows]
        if not 1 < len(np.unique(sampled)) < len(sampled):
            return -1.0
        return float(silhouette_score(self.distances, sampled, metric="precomputed"))

    def sweep(self, tree: Tree, candidates: list[int]) -> dict[int, float]:
        """The silhouette of cuts of `tree` into each candidate number of clusters, in increasing order,
        until they pass twice the best so far (and `_K_FLOOR`): past its peak, finer cuts only score lower."""
        scores: dict[int, float] = {}
        best = candidates[0]
        for clusters in candidates:
            if clusters > max(2 * best, _K_FLOOR):
                break
            scores[clusters] = self.score(cut_tree(tree, len(tree) + 1, clusters))
            best = max(scores, key=lambda k: (scores[k], -k))
        return scores


def spectral_coordinates(vectors: Floats, *, components: int, neighbours: int = _GRAPH_NEIGHBOURS,
                         seed: int = 0) -> Floats:
    """The spectral embedding of the symmetric cosine k-NN graph, leading eigenvectors first.

    Calls of unrelated steps often leave the graph in pieces. The usual embedding drops its first
    eigenvector, which is constant only on a connected graph; on a graph in pieces it tells the
    pieces apart, so here the constant one alone is dropped.
    """
    import warnings

    from sklearn.manifold import spectral_embedding
    from sklearn.neighbors import kneighbors_graph

    graph = kneighbors_graph(vectors, min(neighbours, len(vectors) - 1), metric="cosine", include_self=False)
    graph = 0.5 * (graph + graph.T)
    wanted = min(components + 1, len(vectors) - 1)
    with warnings.catch_warnings():  # "not fully connected": handled, as said above
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        points = np.asarray(spectral_embedding(graph, n_components=wanted, drop_first=False, random_state=seed),
                            dtype=np.float32)
    varying = points.std(axis=0) > 1e-6 * np.abs(points).max(initial=1.0)
    return points[:, varying][:, :components]


def ward_tree(points: Floats, *, neighbours: int = _TREE_NEIGHBOURS) -> Tree:
    """The merges of a Ward tree restricted to k-NN neighbours (memory linear in the input, not square)."""
    import warnings

    from sklearn.cluster import AgglomerativeClustering
    from sklearn.neighbors import kneighbors_graph

    connectivity = kneighbors_graph(points, min(neighbours, len(points) - 1), include_self=False)
    tree = AgglomerativeClustering(n_clusters=None, distance_threshold=0.0, connectivity=connectivity,
                                   linkage="ward", compute_full_tree=True)
    with warnings.catch_warnings():  # unconnected parts are joined at the top of the tree, as they should be
        warnings.filterwarnings("ignore", message="the number of connected components")
        tree.fit(points)
    return np.asarray(tree.children_, dtype=np.int64)


def cut_tree(children: Tree, count: int, clusters: int) -> Labels:
    """Labels 0..clusters-1 after the first `count - clusters` merges of a tree (scikit-learn's `children_`)."""
    parent = np.arange(2 * count - 1)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = int(parent[node])
        return node

    for step, (left, right) in enumerate(children[:count - clusters]):
        parent[root(int(left))] = parent[root(int(right))] = count + step
    roots = np.fromiter((root(node) for node in range(count)), dtype=np.int64, count=count)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def _unit_rows(points: Floats) -> Floats:
    return np.asarray(points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def _candidates(limit: int) -> list[int]:
    candidates, k = [], 2
    while k <= limit:
        candidates.append(k)
        k = max(k + 1, round(k * _K_STEP))
    return candidates


def _spread(vectors: Floats, sample: npt.NDArray[np.int64], labels: Labels) -> Labels:
    """Every vector's label: its own if sampled, else the vote of its nearest sampled neighbours."""
    from sklearn.neighbors import KNeighborsClassifier

    voter = KNeighborsClassifier(n_neighbors=_TREE_NEIGHBOURS, metric="cosine").fit(vectors[sample], labels)
    spread = np.asarray(voter.predict(vectors), dtype=np.int64)
    spread[sample] = labels
    return spread
