"""The escalation score: how much a request looks like it needs the frontier model, in [0, 1].

A transparent logistic combination of features with shipped weights, which `scoring` in the config
can override feature by feature. Counts are capped so one runaway signal can't dominate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from minigate.router.features import FEATURE_NAMES, Features

__all__ = ["DEFAULT_BIAS", "DEFAULT_WEIGHTS", "escalation_score", "numeric_inputs"]

DEFAULT_BIAS = -2.5
DEFAULT_WEIGHTS: dict[str, float] = {
    "length": 1.5,
    "reasoning": 1.5,
    "specialisation": 1.0,
    "multi_step": 1.0,
    "output_constraints": 0.5,
    "multiple_intents": 0.5,
    "corrections": 0.75,
    "code": 0.5,
    "math": 1.0,
    "tools": 0.15,
    "images": 0.5,
    "non_latin": 0.5,
}
_CAPS = {"corrections": 3, "tools": 10, "images": 4, "prompt_tokens": 8000, "max_tokens": 8000,
         "turns": 20, "messages": 40, "tool_results": 20, "audio": 4, "reasoning_cues": 5, "intents": 8,
         "schema_depth": 8}


def numeric_inputs(features: Features) -> dict[str, float]:
    """Every feature as a number the score can weigh: booleans 0/1, absent values 0, counts capped."""
    values: dict[str, float] = {}
    for name in FEATURE_NAMES:
        raw = getattr(features, name)
        value = 0.0 if raw is None else float(raw)
        values[name] = min(value, _CAPS[name]) if name in _CAPS else value
    return values


def escalation_score(features: Features, weights: Mapping[str, float] = DEFAULT_WEIGHTS,
                     bias: float = DEFAULT_BIAS) -> float:
    inputs = numeric_inputs(features)
    z = bias + sum(weight * inputs[name] for name, weight in weights.items())
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
