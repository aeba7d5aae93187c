"""`minigate router fit` learns weights from labelled outcomes; `scoring.model` serves them without sklearn."""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from minigate.config import load_config
from minigate.errors import ConfigError
from minigate.router.decision import Router
from minigate.router.lexical import terms

ROUTELLM = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm" / "mmlu" / "responses"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
needs_routellm = pytest.mark.skipif(not ROUTELLM.is_dir(), reason="../shared/data/routellm is absent")

CONFIG = """\
upstreams: {{up: {{kind: openai, base_url: "http://127.0.0.1:1/v1"}}}}
models: {{big: {{upstream: up, model: big, tier: frontier}}}}
routes: {{r: {{default: big}}}}
scoring: {{model: "{model}"}}
"""


def fit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minigate.cli", "router", "fit", *args], capture_output=True,
                          text=True, timeout=300)


def router_for(tmp_path: Path, model: Path) -> Router:
    config_path = tmp_path / "minigate.yaml"
    config_path.write_text(CONFIG.format(model=model))
    return Router.from_config(load_config(config_path, {}))


def score(router: Router, text: str) -> float:
    return router.explain("r", {"messages": [{"role": "user", "content": text}]}, {}).score


def mmlu(subject: str) -> list[dict[str, str]]:
    with (ROUTELLM / f"mmlu_{subject}.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", WEAK, STRONG])
        writer.writeheader()
        writer.writerows(rows)
    return path


def labelled(rng: random.Random) -> bytes:
    """Synthetic outcomes: the small model fails on long prompts and on proofs, succeeds otherwise."""
    lines = []
    for _ in range(300):
        long, proof = rng.random() < 0.4, rng.random() < 0.3
        text = ("Prove that the series converges, step by step. " if proof else "What is my balance? ") + (
            "Context sentence about the account. " * 80 if long else "")
        ok = not (long or proof) if rng.random() < 0.9 else rng.random() < 0.5
        lines.append(orjson.dumps({"messages": [{"role": "user", "content": text}], "miniature_ok": ok}))
    return b"\n".join(lines) + b"\n"


@pytest.mark.slow
def test_fit_writes_a_scoring_file_the_config_can_use(tmp_path: Path) -> None:
    source, model = tmp_path / "labelled.jsonl", tmp_path / "scoring.json"
    source.write_bytes(labelled(random.Random(0)))
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "router", "fit", "-i", str(source), "-o", str(model)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    fitted = orjson.loads(model.read_bytes())
    assert fitted["examples"] == 300 and set(fitted) >= {"bias", "weights"}
    config_path = tmp_path / "minigate.yaml"
    config_path.write_text(CONFIG.format(model=model))
    router = Router.from_config(load_config(config_path, {}))

    def score(text: str) -> float:
        return router.explain("r", {"messages": [{"role": "user", "content": text}]}, {}).score

    easy, hard = score("What is my balance?"), score("Prove it step by step. " + "Context sentence. " * 80)
    assert easy < 0.3 < 0.7 < hard


def test_bad_labels_and_missing_files_are_clear(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"messages": []}\n')
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "router", "fit", "-i", str(source), "-o",
                             str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "miniature_ok" in result.stderr
    config_path = tmp_path / "minigate.yaml"
    config_path.write_text(CONFIG.format(model=tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r":4: scoring: Value error, cannot read the scoring file"):
        load_config(config_path, {})


@pytest.mark.slow
@needs_routellm
def test_fit_reads_routellm_csv_and_learns_where_the_strong_model_helps(tmp_path: Path) -> None:
    """Real MMLU rows: Mixtral trails GPT-4 most on moral scenarios and leads it on high-school maths."""
    subjects = {name: mmlu(name) for name in ("moral_scenarios", "high_school_mathematics", "marketing")}
    train = [write_csv(tmp_path / f"{name}.csv", rows[:200]) for name, rows in subjects.items()]
    model = tmp_path / "scoring.json"
    result = fit(*(arg for path in train for arg in ("-i", str(path))), "-o", str(model), "--strong", STRONG,
                 "--weak", WEAK)
    assert result.returncode == 0, result.stderr
    fitted = orjson.loads(model.read_bytes())
    rows = [row for rows in subjects.values() for row in rows[:200]]
    gains = sum(row[STRONG] == "True" and row[WEAK] == "False" for row in rows)
    assert fitted["examples"] == 600 and fitted["needs_frontier_share"] == pytest.approx(gains / 600)
    # Only words that at least five training prompts contain are written.
    counts = Counter(word for row in rows for word in terms(row["prompt"]))
    assert fitted["lexical"] and min(counts[word] for word in fitted["lexical"]) >= 5
    router = router_for(tmp_path, model)
    held_out = {name: [score(router, row["prompt"]) for row in rows[200:300]] for name, rows in subjects.items()}
    mean = {name: sum(scores) / len(scores) for name, scores in held_out.items()}
    assert mean["moral_scenarios"] > mean["marketing"] > mean["high_school_mathematics"]


@pytest.mark.slow
def test_fit_detects_routellm_jsonl_and_labels_weak_wrong_where_strong_right(tmp_path: Path) -> None:
    rng = random.Random(1)
    lines = []
    for _ in range(200):
        hard = rng.random() < 0.5
        prompt = ("Evaluate the tort liability of the plaintiff. " if hard else "Name the capital of France. ") * 3
        strong_ok, weak_ok = rng.random() < 0.9, rng.random() < (0.3 if hard else 0.9)
        lines.append(orjson.dumps({"prompt": prompt, "strong": strong_ok, "weak": "True" if weak_ok else "False"}))
    source, model = tmp_path / "outcomes.jsonl", tmp_path / "scoring.json"
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = fit("-i", str(source), "-o", str(model))
    assert result.returncode == 0, result.stderr
    fitted = orjson.loads(model.read_bytes())
    rows = [orjson.loads(line) for line in lines]
    assert fitted["needs_frontier_share"] == pytest.approx(
        sum(row["strong"] and row["weak"] == "False" for row in rows) / 200)
    assert fitted["lexical"]["plaintiff"] > 0 > fitted["lexical"]["france"]
    router = router_for(tmp_path, model)
    assert score(router, "What is the capital of France?") < score(router, "Is the plaintiff's tort claim valid?")


@pytest.mark.slow
def test_serving_a_fitted_file_imports_neither_sklearn_nor_torch(tmp_path: Path) -> None:
    source, model = tmp_path / "labelled.jsonl", tmp_path / "scoring.json"
    source.write_bytes(labelled(random.Random(2)))
    assert fit("-i", str(source), "-o", str(model)).returncode == 0
    config_path = tmp_path / "minigate.yaml"
    config_path.write_text(CONFIG.format(model=model))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from minigate.config import load_config\n"
        "from minigate.router.decision import Router\n"
        f"router = Router.from_config(load_config(Path({str(config_path)!r}), {{}}))\n"
        "assert router.lexicon is not None\n"
        "router.explain('r', {'messages': [{'role': 'user', 'content': 'Prove it step by step.'}]}, {})\n"
        "assert not {'sklearn', 'torch', 'scipy'} & set(sys.modules), sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_no_lexical_writes_feature_weights_only(tmp_path: Path) -> None:
    source, model = tmp_path / "labelled.jsonl", tmp_path / "scoring.json"
    source.write_bytes(labelled(random.Random(3)))
    assert fit("-i", str(source), "-o", str(model), "--no-lexical").returncode == 0
    assert orjson.loads(model.read_bytes())["lexical"] == {}
    assert router_for(tmp_path, model).lexicon is None


def test_routellm_data_without_the_named_columns_is_a_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "mmlu_x.csv"
    source.write_text("prompt,model-a,model-b\nWhat is 2+2?,True,False\n")
    result = fit("-i", str(source), "-o", str(tmp_path / "x.json"))
    assert result.returncode == 2
    assert "--strong" in result.stderr and "model-a" in result.stderr
    source.write_text("prompt,model-a,model-b\nWhat is 2+2?,True,maybe\n")
    result = fit("-i", str(source), "-o", str(tmp_path / "x.json"), "--strong", "model-a", "--weak", "model-b")
    assert result.returncode == 2 and "row 2" in result.stderr and "maybe" in result.stderr


def test_words_split_the_same_way_at_fit_and_serve_time() -> None:
    assert terms("The Plaintiff's claim (tort), p-value=0.05?") == {
        "the", "plaintiff", "s", "claim", "tort", "p", "value", "0", "05"}
