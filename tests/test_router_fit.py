"""`minigate router fit` learns weights from labelled outcomes; `scoring.model` serves them without sklearn."""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from minigate.config import load_config
from minigate.conversion.fit_cv import routing_quality
from minigate.errors import ConfigError
from minigate.router.decision import Router
from minigate.router.lexical import terms

ROUTELLM = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm" / "mmlu" / "responses"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
needs_routellm = pytest.mark.skipif(not ROUTELLM.is_dir(), reason="../shared/data/routellm is absent")
# Four subjects whose prompts differ in wording only; the strong model wins mostly on the first two.
SUBJECTS = {"a_law": ("Assess the tort claim the plaintiff filed in case {}.", True),
            "b_physics": ("Derive the eigenvalue of the operator in problem {}.", True),
            "c_geography": ("Name the capital city of the country in list {}.", False),
            "d_weather": ("Say which colour the sky had on the day in log {}.", False)}

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


def subject_files(tmp_path: Path, rows: int = 40) -> list[str]:
    """RouteLLM JSONL, one file per subject: `-i` arguments."""
    rng = random.Random(0)
    args = []
    for name, (template, hard) in SUBJECTS.items():
        lines = [orjson.dumps({"prompt": template.format(rng.randrange(1000)), "strong": True,
                               "weak": (rng.random() < 0.9) != hard}) for _ in range(rows)]
        (tmp_path / f"{name}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        args += ["-i", str(tmp_path / f"{name}.jsonl")]
    return args


def cv_rows(result: subprocess.CompletedProcess[str]) -> dict[tuple[str, str], dict[str, float]]:
    assert result.returncode == 0, result.stderr
    return {(row["variant"], row["cv"]): row for row in orjson.loads(result.stdout)["rows"]}


@pytest.mark.slow
def test_leaving_subjects_out_measures_generalisation_not_memory(tmp_path: Path) -> None:
    """Subjects told apart by their wording: random folds learn them, held-out subjects can't be recognised."""
    result = fit(*subject_files(tmp_path), "--cv", "random", "--cv", "subjects", "--folds", "2", "--json")
    rows = cv_rows(result)
    assert set(rows) == {(variant, cv) for variant in ("features", "features + words") for cv in ("random", "subjects")}
    for variant in ("features", "features + words"):
        assert rows[variant, "random"]["auc"] > 0.8 and rows[variant, "random"]["apgr"] > 0.6
        assert rows[variant, "subjects"]["auc"] < 0.6 and rows[variant, "subjects"]["apgr"] < 0.55
    report = orjson.loads(result.stdout)
    assert (report["examples"], report["subjects"], report["folds"]) == (160, 4, 2)
    assert report["strong_accuracy"] == 1.0
    assert report["weak_accuracy"] == pytest.approx(1 - report["needs_frontier_share"])


def test_cv_and_embeddings_options_say_what_they_need(tmp_path: Path) -> None:
    args, scoring = subject_files(tmp_path, rows=10), tmp_path / "scoring.json"
    nothing = fit(*args)
    assert nothing.returncode == 2 and "--output" in nothing.stderr and "--cv" in nothing.stderr
    refused = fit(*args, "--cv", "subjects", "--embeddings", "-o", str(scoring))
    assert refused.returncode == 2 and "evaluation option" in refused.stderr and not scoring.exists()
    too_few = fit(*args, "--cv", "subjects", "--folds", "5")
    assert too_few.returncode == 2 and "at least 5 subjects" in too_few.stderr


@pytest.mark.slow
def test_embeddings_are_cross_validated_beside_words(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers", reason="--embeddings needs the `tasks` extra")
    result = fit(*subject_files(tmp_path, rows=20), "--cv", "subjects", "--folds", "2", "--embeddings",
                 "--embedding-cache", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    for variant in ("features", "features + words", "features + embeddings", "features + words + embeddings"):
        assert f"{variant} " in result.stdout
    assert "leave subjects out" in result.stdout and "random" not in result.stdout.split("APGR", 1)[1]
    assert (tmp_path / "cache" / "vectors.npy").is_file()  # a second run embeds nothing


@pytest.mark.slow
@needs_routellm
def test_cross_validation_on_mmlu_subjects_reports_routellm_figures(tmp_path: Path) -> None:
    names = ("moral_scenarios", "high_school_mathematics", "marketing", "virology", "anatomy", "world_religions")
    rows = {name: mmlu(name)[:60] for name in names}
    args = [arg for name in names for arg in ("-i", str(write_csv(tmp_path / f"mmlu_{name}.csv", rows[name])))]
    result = fit(*args, "--strong", STRONG, "--weak", WEAK, "--cv", "subjects", "--cv", "random", "--folds", "3",
                 "--json")
    figures = cv_rows(result)
    report = orjson.loads(result.stdout)
    every = [row for subject in rows.values() for row in subject]
    assert (report["examples"], report["subjects"]) == (360, 6)
    assert report["strong_accuracy"] == pytest.approx(sum(row[STRONG] == "True" for row in every) / 360)
    assert [row["cv"] for row in report["rows"]] == ["subjects", "subjects", "random", "random"]
    for row in figures.values():
        # APGR is unbounded where the two models' accuracies are close (high-school maths: Mixtral leads).
        assert 0 < row["auc"] < 1 and 0 <= row["cpt50"] <= row["cpt80"] <= 100 and np.isfinite(row["apgr"])


def test_apgr_rewards_sending_the_strong_models_wins_first() -> None:
    """RouteLLM's APGR: 1 when routing reaches strong-model accuracy at once, about 0.5 for a random order."""
    rng = np.random.default_rng(0)
    strong, weak = rng.random(2000) < 0.8, rng.random(2000) < 0.5
    gain = (strong & ~weak).astype(float)
    oracle, _, _ = routing_quality(gain + rng.random(2000) * 0.1, strong, weak)
    blind, _, _ = routing_quality(rng.random(2000), strong, weak)
    backwards, _, _ = routing_quality(-gain + rng.random(2000) * 0.1, strong, weak)
    assert oracle > 0.9 and 0.4 < blind < 0.6 and backwards < 0.2


def test_fit_from_log_labels_calls_by_shadow_verdicts_feedback_and_escalations(
    upstream: Any, make_gateway: Any, tmp_path: Path
) -> None:
    import httpx

    from minigate.conversion.fit_log import label_calls
    from tests.conftest import AGENT_KEY, gateway_config
    from tests.support.waiting import eventually

    config = gateway_config(upstream.base_url)
    config["routes"]["gpt-4.1"] = {"default": "gpt-4.1", "rules": [
        {"name": "measured", "when": {}, "use": "gpt-4.1", "shadow": {"model": "mini", "sample": 1.0}}]}
    gateway = make_gateway(config)
    upstream.script(reply="shipping")  # the frontier; the miniature echoes the message: right only on "shipping"
    upstream.script(reply=None, model="mini-lora")
    texts = ["shipping", "where is my parcel", "shipping", "refund my card please"]
    for text in texts:
        response = httpx.post(f"{gateway.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                              json={"model": "gpt-4.1", "messages": [{"role": "user", "content": text}]})
        assert response.status_code == 200
    eventually(lambda: gateway.metric("minigate_log_records_written_total") >= 2 * len(texts))

    result = fit("--from-log", "--config", str(tmp_path / "minigate-0.yaml"), "--output", str(tmp_path / "s.json"),
                 "--no-lexical")
    assert result.returncode == 0, result.stderr
    assert "from the call log: 4 labelled calls, 50% needed the frontier" in result.stderr
    assert orjson.loads((tmp_path / "s.json").read_bytes())["examples"] == 4

    call = {"request_id": "x", "task": "t001", "request": {"messages": [{"role": "user", "content": "hi"}]}}
    labelled = label_calls([{**call, "tier": "miniature", "escalated": None, "feedback": [{"score": 0.2}]},
                            {**call, "tier": "miniature", "escalated": "invalid_label"},
                            {**call, "tier": "frontier", "escalated": None}], {})
    assert labelled.needs_frontier == [True, True] and labelled.subjects == ["t001", "t001"]
