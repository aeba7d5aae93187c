"""The adapter's card: `card.json` (plain values) and `README.md` (tables, the loss curve, how to serve it).

A platform team decides from the card whether a miniature is worth serving: what it was trained on
(the data's digest and counts), how (hyper-parameters, steps, time, memory), and how well it did
against the teacher on held-out calls, beside the untuned base.

>>> serving_lines("intent", Path("/adapters/intent"))[1]
'  intent: {upstream: local, adapter: intent, path: /adapters/intent, tier: miniature}'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

__all__ = ["serving_lines", "write_card"]

_KIND = {"label": "exact label", "json": "same JSON value", "tool_call": "same tool and arguments",
         "free_text": "MiniLM cosine ≥ 0.8"}


def serving_lines(name: str, out: Path) -> list[str]:
    """The config that serves the adapter under its own name: a model entry on the local llama.cpp upstream
    (on a vLLM upstream the same keys, `path` being the directory as that server sees it) and a route to it."""
    return ["models:", f"  {name}: {{upstream: local, adapter: {name}, path: {out}, tier: miniature}}",
            "routes:", f"  {name}: {{default: {name}}}"]


def write_card(facts: dict[str, Any], out: Path) -> None:
    (out / "card.json").write_bytes(orjson.dumps(facts, option=orjson.OPT_INDENT_2) + b"\n")
    plotted = _plot(facts["training"]["losses"], out / "loss.png")
    (out / "README.md").write_text(_readme(facts, out, plotted), encoding="utf-8")


def _readme(facts: dict[str, Any], out: Path, plotted: bool) -> str:
    data, hyper, training, validation = facts["data"], facts["hyper"], facts["training"], facts["validation"]
    base, tuned = validation["base"], validation["tuned"]
    parity = facts["gguf_parity"]
    lines = [
        f"# {facts['name']}: a LoRA adapter on {facts['base']['name']}", "",
        f"Trained by `minigate finetune` on {data['train']} examples ({data['train_tokens']:,} tokens), "
        f"validated on {data['validation']}; replies are {data['kind'].replace('_', ' ')}, judged by "
        f"{_KIND[data['kind']]}.", "",
        "| on validation | agreement with the teacher | 95% interval | well-formed |",
        "|---|---|---|---|",
        f"| base {facts['base']['name']} | {base['agreement']:.1%} ({base['agreed']}/{base['n']}) | "
        f"{base['interval_95'][0]:.1%}–{base['interval_95'][1]:.1%} | {base['valid']}/{base['n']} |",
        f"| tuned | {tuned['agreement']:.1%} ({tuned['agreed']}/{tuned['n']}) | "
        f"{tuned['interval_95'][0]:.1%}–{tuned['interval_95'][1]:.1%} | {tuned['valid']}/{tuned['n']} |", "",
        "| training | |", "|---|---|",
        f"| steps | {training['steps']} of {training['steps_planned']} planned ({training['epochs_done']} epochs; "
        f"stopped by {training['stopped_by']}) |",
        f"| best validation loss | {_number(training['best_loss'])} at step {training['best_step']} "
        f"(before training: {_number(training['first_loss'])}) |",
        f"| LoRA | rank {hyper['rank']}, alpha {hyper['alpha']}, dropout {hyper['dropout']}, on "
        f"{', '.join(hyper['target_modules'])} |",
        f"| optimiser | AdamW, learning rate {hyper['lr']}, seed {hyper['seed']} |",
        f"| time | {training['wall_s']} s training, {facts['wall_s']} s in all, on {facts['device']} with "
        f"{facts['threads']} threads |",
        f"| peak memory | {facts['peak_rss_mb']} MB resident |",
        f"| llama.cpp vs torch | {_parity(parity)} |",
        f"| data | {data['digest']} ({', '.join(data['sources'])}) |",
        f"| PII placeholders | {_surrogates(data.get('surrogates'))} |", "",
    ]
    if plotted:
        lines += ["![loss](loss.png)", ""]
    lines += ["## Serve it", "", "Add to the gateway's config (then `minigate serve`, or save to reload):", "",
              "```yaml", *serving_lines(facts["name"], out.resolve()), "```", "",
              "vLLM loads the same directory (`adapter_config.json`, `adapter_model.safetensors`): use "
              "`upstream: <your vllm upstream>` instead of `local`.", ""]
    return "\n".join(lines)


def _parity(parity: dict[str, Any]) -> str:
    if not parity.get("checked"):
        return f"not checked: {parity.get('skipped', 'no validation examples')}"
    return f"the same greedy answer on {parity['same']}/{parity['checked']} validation prompts ({parity['share']:.1%})"


def _surrogates(surrogates: dict[str, Any] | None) -> str:
    if not surrogates or not surrogates["on"]:
        return "kept as logged (`<EMAIL_1>`)"
    return f"filled with made-up values of their kind in {surrogates['examples']} examples"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _plot(losses: list[tuple[int, float, float]], where: Path) -> bool:
    """Training and validation loss by step; False when matplotlib is missing or there is one point."""
    if len(losses) < 2:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=120)
    steps = [step for step, _, _ in losses]
    axes.plot(steps, [train for _, train, _ in losses], label="training (smoothed)")
    axes.plot(steps, [held for _, _, held in losses], label="validation", marker="o")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (replies only)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(where)
    plt.close(figure)
    return True
