"""Does llama.cpp, with our GGUF adapter on the GGUF base, answer as torch does with the PEFT adapter?

The local kind serves the GGUF pair; evaluation measured the torch pair. They differ in more than
format (the GGUF base is quantised; the converter rearranges weights), so the run checks: llama.cpp
answers every validation prompt greedily and the answers are compared with torch's, text for text.
The share that match is on the card; under `PARITY_BAR` the CLI warns that the served miniature
will not score what the card says.

>>> parity(base.gguf, out / "adapter.gguf", split.validation, tokenizer, tuned_answers)  # doctest: +SKIP
{'checked': 100, 'same': 99, 'share': 0.99, 'bar': 0.98}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minigate.conversion.finetune.evaluate import budget
from minigate.conversion.finetune.examples import Example, prompt_text

__all__ = ["PARITY_BAR", "parity"]

PARITY_BAR = 0.98
_CONTEXT = 4096


def parity(base_gguf: Path, adapter_gguf: Path, examples: Sequence[Example], tokenizer: Any,
           torch_answers: Sequence[str]) -> dict[str, Any]:
    """How many of llama.cpp's greedy answers equal torch's; `skipped` says why when it could not run."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"checked": 0, "skipped": "llama-cpp-python is not installed (pip install 'minigate[local]')"}
    llm = Llama(model_path=str(base_gguf), lora_path=str(adapter_gguf), n_ctx=_CONTEXT,
                n_threads=os.cpu_count() or 1, verbose=False)
    same = 0
    mismatches: list[dict[str, str]] = []
    for example, expected in zip(examples, torch_answers):
        completion = llm.create_completion(prompt_text(example), max_tokens=budget(example, tokenizer),
                                           temperature=0.0, stop=["<|im_end|>"])
        text = str(completion["choices"][0]["text"]).strip()  # type: ignore[index]
        if text == expected:
            same += 1
        elif len(mismatches) < 5:
            mismatches.append({"llama.cpp": text, "torch": expected})
    checked = len(examples)
    return {"checked": checked, "same": same, "share": round(same / checked, 4) if checked else None,
            "bar": PARITY_BAR, "mismatches": mismatches}
