"""`minigate finetune` from data to a served-ready adapter directory, step by step.

    read the examples, their PII placeholders filled with surrogates → make (or reuse) the base weights →
    encode → LoRA-train within the budget → evaluate base vs tuned on validation → save the PEFT adapter →
    convert it to a GGUF adapter → check llama.cpp and torch answer alike → write the card

Each step reports through `Report` (a terminal gets progress bars, a pipe nothing), and the result
is the card as plain values. The heavy libraries (torch, transformers, peft) are imported here, never
by the CLI module that parses the options, so `minigate --help` stays fast and a missing extra gets
a message saying what to install.

>>> card = finetune(Request(data=Path("export/"), out=Path("adapters/intent")), Report())  # doctest: +SKIP
>>> card["validation"]["tuned"]["agreement"]  # doctest: +SKIP
0.98
"""

from __future__ import annotations

import hashlib
import os
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from minigate.conversion.finetune.base import base_model
from minigate.conversion.finetune.card import write_card
from minigate.conversion.finetune.evaluate import Embed, evaluate
from minigate.conversion.finetune.examples import Example, Split, encode, read_split, task_kind
from minigate.conversion.finetune.gguf_adapter import write_gguf_adapter
from minigate.conversion.finetune.parity import parity
from minigate.conversion.finetune.surrogates import Surrogates
from minigate.conversion.finetune.train import Hyper, Tick, train

__all__ = ["GGUF_ADAPTER", "Report", "Request", "finetune"]

GGUF_ADAPTER = "adapter.gguf"


@dataclass(frozen=True)
class Request:
    """What to train, from what, into where."""

    data: Path
    out: Path
    validation: Path | None = None
    base: str = "smollm2-135m-instruct"
    hyper: Hyper = field(default_factory=Hyper)
    device: str = "cpu"
    resume: bool = False
    name: str | None = None  # the adapter's model name; default: the directory's name
    surrogates: bool = True  # fill the log's PII placeholders with made-up values (surrogates.py)


@dataclass
class Report:
    """Where a run tells what it is doing: a stage starts, training ticks, a stage ends."""

    stage: Callable[[str], object] = lambda what: None
    tick: Tick = lambda done, planned, loss: None
    embed: Embed | None = None


def finetune(request: Request, report: Report) -> dict[str, Any]:
    """Run every step; returns the card (also written to `out/card.json`)."""
    started = time.monotonic()
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(request.device)
    report.stage("reading the examples")
    split = read_split(request.data, request.validation, seed=request.hyper.seed)
    surrogates = Surrogates(request.hyper.seed)
    if request.surrogates:
        split = surrogates.split(split)
    kind = task_kind(split.train)
    report.stage(f"preparing the base model {request.base}")
    base = base_model(request.base)
    tokenizer, model = _load(base.hf_dir, request.hyper, device)
    report.stage(f"encoding {len(split.train)} + {len(split.validation)} examples")
    rows = [encode(example, tokenizer) for example in split.train]
    held_out = [encode(example, tokenizer) for example in split.validation]
    report.stage("training")
    request.out.mkdir(parents=True, exist_ok=True)
    trained = train(model, rows, held_out, [_step(example) for example in split.train], request.hyper,
                    request.out, device, resume=request.resume, tick=report.tick)
    report.stage(f"evaluating base and tuned on {len(split.validation)} validation examples")
    evaluation = evaluate(model, tokenizer, split.validation, kind, device, report.embed)
    report.stage("writing the adapter")
    model.save_pretrained(request.out)
    (request.out / "adapter_config.json").write_bytes(_pointing_at(request.out, base.hf_dir))
    tokenizer.save_pretrained(request.out)
    write_gguf_adapter(request.out, request.out / GGUF_ADAPTER, base=base)
    report.stage("checking llama.cpp against torch")
    agreement = parity(base.gguf, request.out / GGUF_ADAPTER, split.validation, tokenizer,
                       [tuned for _, tuned in evaluation.answers])
    facts = {
        "name": request.name or request.out.resolve().name, "base": {"name": base.name, "gguf": str(base.gguf),
                                                                    "hf_dir": str(base.hf_dir)},
        "data": {"sources": split.sources, "digest": split.digest, "train": len(split.train),
                 "validation": len(split.validation), "kind": kind, "train_tokens": sum(len(r.ids) for r in rows),
                 "surrogates": {"on": request.surrogates, "examples": surrogates.filled}},
        "hyper": {**asdict(request.hyper), "target_modules": list(request.hyper.target_modules)},
        "device": request.device, "threads": torch.get_num_threads(), "training": asdict(trained),
        "validation": {"kind": kind, "base": evaluation.base.document(), "tuned": evaluation.tuned.document()},
        "gguf_parity": agreement, "wall_s": round(time.monotonic() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "files": {"peft": "adapter_config.json, adapter_model.safetensors", "gguf": GGUF_ADAPTER},
    }
    write_card(facts, request.out)
    return facts


def _load(hf_dir: Path, hyper: Hyper, device: torch.device) -> tuple[Any, Any]:
    # The run reports its own progress: no bar per loaded file, no deprecation notice peft triggers inside transformers.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = model.to(device)
    torch.manual_seed(hyper.seed)
    config = LoraConfig(r=hyper.rank, lora_alpha=hyper.alpha, lora_dropout=hyper.dropout,
                        target_modules=list(hyper.target_modules), task_type="CAUSAL_LM")
    return tokenizer, get_peft_model(model, config)


def _step(example: Example) -> str:
    """The agent step an example comes from: its system prompt and tools (what its batch shares)."""
    system = [message.get("content") for message in example.messages if message.get("role") == "system"]
    return hashlib.sha256(orjson.dumps([system, example.tools])).hexdigest()


def _pointing_at(out: Path, hf_dir: Path) -> bytes:
    """peft writes the base's path as it was loaded; keep it, absolute, so vLLM and peft find the base."""
    config = orjson.loads((out / "adapter_config.json").read_bytes())
    config["base_model_name_or_path"] = str(hf_dir.resolve())
    return orjson.dumps(config, option=orjson.OPT_INDENT_2)
