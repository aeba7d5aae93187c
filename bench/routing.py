"""bench/routing: how well minigate's escalation score routes RouteLLM's MMLU data (GPT-4 vs Mixtral).

Scores every decontaminated prompt with `minigate route score` (the shipped heuristic weights), then
with scoring files from `minigate router fit` under 5-fold cross-validation (each prompt scored by a
model that never saw it): the training folds are written as RouteLLM CSV, fitted by the real CLI, and
the held-out fold scored by `minigate route score` with `scoring.model` set, as users would run them.
Beside them RouteLLM's random and prompt-length baselines, and two ablations of the fit: features only
(`--no-lexical`) and the label "weak model wrong" (request JSONL with `miniature_ok`) instead of
RouteLLM's "weak wrong and strong right". Metrics exactly as RouteLLM's evaluate.py computes them:
thresholds at the 11 edges of 10 equal-count bins of the scores; per threshold, the share of
strong-model calls and the accuracy; APGR = (AUC - weak AUC) / (strong AUC - weak AUC) by the trapezoid
rule; CPT(x%) = strong calls needed for x% of the performance gap (np.interp).
Targets: heuristic APGR above the prompt-length baseline (RouteLLM reports 0.583), fitted >= 0.62.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minigate.router.lexical import Lexicon

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "routellm" / "mmlu"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
FITTED = "minigate fitted (5-fold CV)"
CONFIG = """\
upstreams: {up: {kind: openai, base_url: 'http://127.0.0.1:1/v1'}}
models: {big: {upstream: up, model: big, tier: frontier}}
routes: {gpt-4.1: {default: big}}
"""


def load() -> tuple[list[str], np.ndarray, np.ndarray]:
    contaminated = {json.loads(line)["eval_prompt"] for line in (DATA / "contaminated_prompts.jsonl").open()}
    prompts, strong, weak = [], [], []
    for path in sorted((DATA / "responses").glob("mmlu_*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row["prompt"] in contaminated:
                    continue
                prompts.append(row["prompt"])
                strong.append(row[STRONG] == "True")
                weak.append(row[WEAK] == "True")
    return prompts, np.array(strong), np.array(weak)


def body(prompt: str) -> dict[str, object]:
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": prompt}]}


def minigate(*args: str, stdin: bytes = b"") -> bytes:
    return subprocess.run([sys.executable, "-m", "minigate.cli", *args], input=stdin, capture_output=True,
                          check=True).stdout


def route_scores(prompts: Sequence[str], scoring: Path | None = None) -> np.ndarray:
    """Through the real CLI, as users would run it: shipped weights, or a fitted scoring file."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "minigate.yaml"
        config.write_text(CONFIG + (f"scoring: {{model: '{scoring}'}}\n" if scoring else ""))
        source = "\n".join(json.dumps(body(p)) for p in prompts) + "\n"
        out = minigate("route", "score", "--config", str(config), stdin=source.encode())
    return np.array([json.loads(line)["score"] for line in out.splitlines()])


def fit(path: Path, prompts: Sequence[str], strong: np.ndarray, weak: np.ndarray, label: str,
        *options: str) -> Path:
    """`minigate router fit` on RouteLLM CSV (label "gain"), or request JSONL with miniature_ok = weak right."""
    if label == "gain":
        source = path.with_suffix(".csv")
        with source.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["prompt", WEAK, STRONG])
            writer.writerows(zip(prompts, weak, strong, strict=True))
        options = ("--strong", STRONG, "--weak", WEAK, *options)
    else:
        source = path.with_suffix(".jsonl")
        source.write_text("".join(json.dumps({**body(p), "miniature_ok": bool(ok)}) + "\n"
                                  for p, ok in zip(prompts, weak, strict=True)))
    minigate("router", "fit", "-i", str(source), "-o", str(path), *options)
    return path


def fitted_scores(prompts: list[str], strong: np.ndarray, weak: np.ndarray, label: str = "gain",
                  *options: str, folds: int = 5) -> np.ndarray:
    order = np.random.default_rng(0).permutation(len(prompts))
    scores = np.zeros(len(prompts))
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(folds):
            held = order[k::folds]
            train = np.setdiff1d(order, held)
            scoring = fit(Path(tmp) / f"fold{k}.json", [prompts[i] for i in train], strong[train], weak[train],
                          label, *options)
            scores[held] = route_scores([prompts[i] for i in held], scoring)
    return scores


def scoring_file(prompts: list[str], strong: np.ndarray, weak: np.ndarray) -> dict[str, float]:
    """Size of a scoring file fitted on all prompts, and what its words cost per 200-token prompt."""
    with tempfile.TemporaryDirectory() as tmp:
        path = fit(Path(tmp) / "all.json", prompts, strong, weak, "gain")
        size, fitted = path.stat().st_size, json.loads(path.read_bytes())
    lexicon = Lexicon(fitted["lexical"])
    prompt = body(" ".join(prompts)[:1000])  # ~200 tokens of MMLU text
    runs = 20000  # CPU time, best of 7: the figure of the code, not of whatever else shares the machine
    seconds = min(timeit.repeat(lambda: lexicon.offset(prompt), number=runs, repeat=7, timer=time.process_time)) / runs
    return {"bytes": size, "words": len(fitted["lexical"]), "lexical_us_200_tokens": seconds * 1e6}


def curve(scores: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.percentile(scores, np.linspace(0, 100, 11))
    shares, accuracies = [], []
    for i, threshold in enumerate(thresholds):
        selection = scores >= threshold if i != len(thresholds) - 1 else scores > threshold
        shares.append(selection.mean() * 100)
        accuracies.append(np.where(selection, strong, weak).mean() * 100)
    order = np.argsort(shares, kind="stable")
    return np.array(shares)[order], np.array(accuracies)[order]


def metrics(shares: np.ndarray, accuracies: np.ndarray, strong_acc: float, weak_acc: float) -> dict[str, float]:
    x = shares / 100
    auc = np.trapezoid(accuracies, x)
    weak_auc, strong_auc = np.trapezoid(np.full_like(x, weak_acc), x), np.trapezoid(np.full_like(x, strong_acc), x)
    cpt = {f"cpt{int(p * 100)}": float(np.interp(p * (strong_acc - weak_acc) + weak_acc, accuracies, shares))
           for p in (0.5, 0.8)}
    return {"apgr": float((auc - weak_auc) / (strong_auc - weak_auc)), **cpt}


def plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], strong_acc: float, weak_acc: float) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, (shares, accuracies) in curves.items():
        axes.plot(shares, accuracies, marker=".", label=name)
    axes.axhline(strong_acc, color="red", linestyle="--", label="GPT-4 only")
    axes.axhline(weak_acc, color="grey", linestyle="--", label="Mixtral only")
    axes.set(xlabel="strong-model calls (%)", ylabel="MMLU accuracy (%)", title="Routing quality vs cost (MMLU)")
    axes.legend()
    out = HERE / "results" / "routing.png"
    figure.savefig(out, dpi=110, bbox_inches="tight")
    return out


def main() -> int:
    if not DATA.is_dir():
        print(f"no RouteLLM data at {DATA}: nothing to measure")
        return 0
    prompts, strong, weak = load()
    strong_acc, weak_acc = strong.mean() * 100, weak.mean() * 100
    print(f"{len(prompts)} prompts; GPT-4 {strong_acc:.1f}%, Mixtral {weak_acc:.1f}%")
    rng = random.Random(0)
    scores = {
        "random": np.array([rng.random() for _ in prompts]),
        "prompt length": np.array([float(len(p)) for p in prompts]),
        "minigate heuristic": route_scores(prompts),
        FITTED: fitted_scores(prompts, strong, weak),
        "fitted, features only": fitted_scores(prompts, strong, weak, "gain", "--no-lexical"),
        "fitted, label weak wrong": fitted_scores(prompts, strong, weak, "weak wrong"),
    }
    curves = {name: curve(s, strong, weak) for name, s in scores.items()}
    results = {name: metrics(*c, strong_acc, weak_acc) for name, c in curves.items()}
    print(f"{'router':<30}{'APGR':>8}{'CPT(50%)':>11}{'CPT(80%)':>11}")
    for name, row in results.items():
        print(f"{name:<30}{row['apgr']:>8.3f}{row['cpt50']:>10.1f}%{row['cpt80']:>10.1f}%")
    heuristic, length, fitted = (results[n]["apgr"] for n in ("minigate heuristic", "prompt length", FITTED))
    print(f"heuristic beats prompt length: {'PASS' if heuristic > length else 'FAIL'} ({heuristic:.3f} vs {length:.3f})")
    print(f"fitted APGR >= 0.62: {'PASS' if fitted >= 0.62 else 'FAIL'} ({fitted:.3f})")
    file = scoring_file(prompts, strong, weak)
    print(f"scoring file fitted on all prompts: {file['bytes'] / 1024:.0f} KiB, {file['words']:.0f} words; "
          f"its words cost {file['lexical_us_200_tokens']:.1f} us per 200-token prompt")
    picture = plot(curves, strong_acc, weak_acc)
    out = HERE / "results" / "routing.json"
    out.write_text(json.dumps({"benchmark": "routing", "prompts": len(prompts), "strong_accuracy": strong_acc,
                               "weak_accuracy": weak_acc, "routers": results, "scoring_file": file}, indent=2) + "\n")
    print(f"wrote {out}" + (f" and {picture}" if picture else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
