"""A PEFT LoRA adapter rewritten as a llama.cpp GGUF LoRA adapter, for the base GGUF it was trained on.

peft saves `adapter_config.json` + `adapter_model.safetensors` with Hugging Face tensor names;
llama.cpp loads a GGUF whose metadata says `general.type = adapter`, `adapter.type = lora`,
`adapter.lora.alpha`, with the base's `general.architecture`, and whose tensors pair up as
`<base tensor name>.lora_a` / `.lora_b`. The matrices keep their orientation: ggml lists dimensions
innermost first, so peft's A (rank × in) and B (out × rank) are what llama.cpp expects for a base
tensor of ne = (in, out). llama.cpp scales B·A by alpha / rank, as peft does by lora_alpha / r.

One rearrangement matters: llama.cpp's HF→GGUF conversion of llama models permutes the rows of
attn_q and attn_k (within each head, the two rotary halves are interleaved, as its rope expects),
and transformers undoes it when loading the GGUF. Our base weights come from that load, so an
adapter trained on them sees unpermuted rows: the rows of B for q_proj and k_proj get the same
permutation here, or llama.cpp would add each head's update to the wrong dimensions.

>>> write_gguf_adapter(Path("out/intent"), Path("out/intent/adapter.gguf"), base=base)  # doctest: +SKIP
PosixPath('out/intent/adapter.gguf')
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from minigate.conversion.finetune.base import Base
from minigate.errors import MinigateError

__all__ = ["AdapterConversionError", "BaseMismatch", "NotAPeftAdapter", "RankMismatch", "UnsupportedAdapter",
           "SUPPORTED_MODULES", "write_gguf_adapter"]

Matrix = npt.NDArray[np.float32]

SUPPORTED_MODULES: dict[str, str] = {  # peft target module -> the base GGUF's tensor, per block
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
# Options that change what an adapter computes beyond B·A·alpha/r, which llama.cpp's LoRA cannot express.
_UNSUPPORTED_OPTIONS = ("use_dora", "lora_bias", "use_qalora", "use_bdlora", "fan_in_fan_out", "modules_to_save",
                        "rank_pattern", "alpha_pattern", "layer_replication", "trainable_token_indices",
                        "alora_invocation_tokens")
# Architectures whose HF→GGUF conversion permutes attn_q / attn_k rows (llama.cpp's LlamaModel.permute).
_ROPE_PERMUTED = frozenset({"llama"})
_TENSOR = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_ANY_LORA = re.compile(r"\.(\w+)\.lora_[AB]\.weight$")


class AdapterConversionError(MinigateError):
    """A PEFT adapter that cannot become a GGUF adapter for this base; the message says why."""


class NotAPeftAdapter(AdapterConversionError):
    """The directory lacks a LoRA `adapter_config.json` or `adapter_model.safetensors`."""


class UnsupportedAdapter(AdapterConversionError):
    """A target module or an option that llama.cpp's LoRA cannot apply."""


class RankMismatch(AdapterConversionError):
    """A and B of one module disagree on the rank, or with the config's `r`."""


class BaseMismatch(AdapterConversionError):
    """The adapter names a tensor the base GGUF lacks, or of another shape: trained on another base."""


@dataclass(frozen=True)
class _Pair:
    """One adapted base tensor: its GGUF name, peft's A (rank × in) and B (out × rank)."""

    name: str
    a: Matrix
    b: Matrix


@dataclass(frozen=True)
class _BaseFacts:
    """What the converter checks against and names after in the base GGUF."""

    architecture: str
    heads: int
    kv_heads: int
    shapes: dict[str, tuple[int, int]]  # tensor name -> (in, out), ggml order


def write_gguf_adapter(adapter_dir: Path, out: Path, *, base: Base) -> Path:
    """Convert the PEFT adapter in `adapter_dir` for `base.gguf`; written whole to `out` or not at all."""
    config = _read_config(adapter_dir)
    rank = _check_config(config)
    pairs = [_rank_checked(pair, rank) for pair in _pairs(_read_tensors(adapter_dir))]
    stat = base.gguf.stat()
    facts = _read_base(base.gguf, stat.st_size, stat.st_mtime_ns)
    pairs = [_base_checked(pair, facts) for pair in pairs]
    alpha = float(config["lora_alpha"]) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)
    _write(out, facts.architecture, alpha, [_permuted(pair, facts) for pair in pairs])
    return out


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotAPeftAdapter(f"{adapter_dir} is not a PEFT adapter: it has no adapter_config.json") from exc
    except ValueError as exc:
        raise NotAPeftAdapter(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise NotAPeftAdapter(f"{path} is not a LoRA adapter's config (peft_type {found!r}, expected 'LORA')")
    return config


def _check_config(config: dict[str, Any]) -> int:
    """The config's rank, once every option llama.cpp cannot apply is known to be off."""
    used = [option for option in _UNSUPPORTED_OPTIONS if config.get(option)]
    if config.get("bias", "none") != "none":
        used.append(f"bias={config['bias']!r}")
    if used:
        raise UnsupportedAdapter(f"the adapter uses {', '.join(used)}, which llama.cpp's LoRA cannot apply")
    rank = config.get("r")
    if not isinstance(rank, int) or rank <= 0 or not isinstance(config.get("lora_alpha"), (int, float)):
        raise NotAPeftAdapter(f"adapter_config.json needs a positive integer r and a lora_alpha (r={rank!r})")
    return rank


def _read_tensors(adapter_dir: Path) -> dict[str, Matrix]:
    """Every tensor of the adapter, as float32 (torch reads bfloat16, which numpy cannot)."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise NotAPeftAdapter(f"{adapter_dir} is not a PEFT adapter: it has no adapter_model.safetensors")
    with safe_open(str(path), framework="pt") as weights:
        return {key: weights.get_tensor(key).float().numpy() for key in weights.keys()}


def _pairs(tensors: dict[str, Matrix]) -> list[_Pair]:
    """A and B grouped by the GGUF tensor they adapt, in block order."""
    halves: dict[tuple[int, str], dict[str, Matrix]] = {}
    for key, value in tensors.items():
        found = _TENSOR.match(key)
        if found is None or found[2] not in SUPPORTED_MODULES:
            raise UnsupportedAdapter(_unsupported(key))
        halves.setdefault((int(found[1]), found[2]), {})[found[3]] = value
    pairs = []
    for (block, module), half in sorted(halves.items()):
        if set(half) != {"A", "B"}:
            raise NotAPeftAdapter(f"layer {block} {module} has lora_{'/'.join(half)} but not both A and B")
        pairs.append(_Pair(f"blk.{block}.{SUPPORTED_MODULES[module]}.weight", half["A"], half["B"]))
    if not pairs:
        raise NotAPeftAdapter("adapter_model.safetensors holds no LoRA matrices")
    return pairs


def _unsupported(key: str) -> str:
    module = _ANY_LORA.search(key)
    if module is None:
        return f"unexpected tensor {key!r} in the adapter: only LoRA A/B matrices can be converted"
    return (f"target module {module[1]!r} ({key}) is not supported; supported: "
            f"{', '.join(SUPPORTED_MODULES)}")


@lru_cache(maxsize=4)
def _read_base(path: Path, size: int, mtime_ns: int) -> _BaseFacts:
    """What the converter needs from the base GGUF, read once per file version: GGUFReader parses the
    whole vocabulary, seconds for a 49k-token one, and a job or a test suite converts several adapters."""
    del size, mtime_ns  # only the cache key: a rewritten file is read again
    reader = gguf.GGUFReader(path)
    architecture = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())

    def count(key: str) -> int:
        field = reader.get_field(key.format(arch=architecture))
        return int(field.contents()) if field is not None else 0

    heads = count(gguf.Keys.Attention.HEAD_COUNT)
    shapes = {t.name: (int(t.shape[0]), int(t.shape[1])) for t in reader.tensors if len(t.shape) == 2}
    return _BaseFacts(architecture, heads, count(gguf.Keys.Attention.HEAD_COUNT_KV) or heads, shapes)


def _rank_checked(pair: _Pair, rank: int) -> _Pair:
    if pair.a.ndim != 2 or pair.b.ndim != 2 or pair.a.shape[0] != pair.b.shape[1]:
        raise RankMismatch(f"{pair.name}: lora_A {pair.a.shape} and lora_B {pair.b.shape} disagree on the rank")
    if pair.a.shape[0] != rank:
        raise RankMismatch(f"{pair.name}: the matrices have rank {pair.a.shape[0]}, adapter_config.json says r={rank}")
    return pair


def _base_checked(pair: _Pair, facts: _BaseFacts) -> _Pair:
    if pair.name not in facts.shapes:
        raise BaseMismatch(f"the base GGUF has no tensor {pair.name}: was the adapter trained on another base?")
    n_in, n_out = facts.shapes[pair.name]
    if (pair.a.shape[1], pair.b.shape[0]) != (n_in, n_out):
        raise BaseMismatch(f"{pair.name}: the adapter maps {pair.a.shape[1]} -> {pair.b.shape[0]}, the base "
                           f"{n_in} -> {n_out}: was the adapter trained on another base?")
    return pair


def _permuted(pair: _Pair, facts: _BaseFacts) -> _Pair:
    """B with attn_q / attn_k rows in the base GGUF's order (see the module docstring)."""
    if facts.architecture not in _ROPE_PERMUTED:
        return pair
    if pair.name.endswith(".attn_q.weight"):
        return _Pair(pair.name, pair.a, _interleave_rope_halves(pair.b, facts.heads))
    if pair.name.endswith(".attn_k.weight"):
        return _Pair(pair.name, pair.a, _interleave_rope_halves(pair.b, facts.kv_heads))
    return pair


def _interleave_rope_halves(rows: Matrix, heads: int) -> Matrix:
    """Per head, rows [x0..x(d/2-1), y0..y(d/2-1)] become [x0, y0, x1, y1, ...]."""
    head_dim = rows.shape[0] // heads
    split = rows.reshape(heads, 2, head_dim // 2, *rows.shape[1:])
    return np.ascontiguousarray(split.swapaxes(1, 2).reshape(rows.shape))


def _write(out: Path, architecture: str, alpha: float, pairs: list[_Pair]) -> None:
    """Write beside `out`, then rename: a llama.cpp child never loads a half-written adapter."""
    partial = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(partial, architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for pair in pairs:
        writer.add_tensor(f"{pair.name}.lora_a", pair.a.astype(np.float32))
        writer.add_tensor(f"{pair.name}.lora_b", pair.b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, out)
