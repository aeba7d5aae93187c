"""The escalation score: how much a request looks like it needs the frontier model, in [0, 1].

A transparent logistic combination of features with shipped weights, which `scoring` in the config
can override feature by feature. Counts are capped so one runaway signal can't dominate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from minigate.router.features import FEATURE_NAMES, Features

__all__ = ["DEFAULT_BIAS", "DEFAULT_WEIGHTS", "escalation_score", "numeric_inputs"]

# A request with no signal scores sigmoid(-2.5) = 0.08: most traffic should stay on the miniature.
DEFAULT_BIAS = -2.5
DEFAULT_WEIGHTS: dict[str, float] = {
    # Length is the best single predictor of needing the strong model (RouteLLM's prompt-length baseline;
    # bench/routing). 3.5 lets it escalate alone at about the seed rule's 3000 tokens: length 0.75 gives
    # z = -2.5 + 2.6 = 0.1, score 0.53; a 4000-token prompt scores 0.73, a 500-token one 0.11.
    "length": 3.5,
    "reasoning": 1.5,
    "specialisation": 1.0,
    "multi_step": 1.0,
    "output_constraints": 0.5,
    "multiple_intents": 0.5,
    "corrections": 0.75,
    "code": 0.5,
    # 0: math notation already counts once through `reasoning` (+0.5 of that factor, i.e. as much as one
    # reasoning cue); a direct weight counted it twice, and its pattern also fires on prices ("$100 ...
    # $20") and numeric ranges in legal and clinical text. Raise it in config for maths-heavy traffic.
    "math": 0.0,
    "tools": 0.15,
    "images": 0.5,
    "non_latin": 0.5,
}
_CAPS = {"corrections": 3, "tools": 10, "images": 4, "prompt_tokens": 8000, "max_tokens": 8000,
         "turns": 20, "messages": 40, "tool_results": 20, "audio": 4, "reasoning_cues": 5, "intents": 8,
         "schema_depth": 8}


def numeric_inputs(features: Features) -> dict[str, float]:
    """Every feature as a number the score can weigh: booleans 0/1, absent values 0, counts capped."""
    return {name: _numeric(features, name) for name in FEATURE_NAMES}


def escalation_score(features: Features, weights: Mapping[str, float] = DEFAULT_WEIGHTS,
                     bias: float = DEFAULT_BIAS) -> float:
    # The weighted inputs only, not all of numeric_inputs: this runs on every routed request.
    z = bias + sum(weight * _numeric(features, name) for name, weight in weights.items())
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def _numeric(features: Features, name: str) -> float:
    raw = getattr(features, name)
    value = 0.0 if raw is None else float(raw)
    cap = _CAPS.get(name)
    return value if cap is None else min(value, cap)
