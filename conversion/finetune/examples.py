"""The training examples: OpenAI chat fine-tuning JSONL, rendered by the base model's chat template.

An example is one `{"messages", "tools"?}` object a line, as `minigate dataset export` writes it. Its
text is what the served model will see: `serving.chat_render` renders the conversation (and the
tools, and earlier tool calls) exactly as the local llama.cpp child renders a request, so the adapter
learns the prompt it is going to get. (That is the base's own ChatML template, extended to tools,
which SmolLM2's template drops.) The loss is on assistant replies only, and only on those a person (or the
export) did not mark `"weight": 0`; the export marks the history's assistant turns that way, since
another model wrote them. The last assistant turn is the reference the evaluation compares against.

Where the labelled text is found: the conversation is rendered up to each assistant turn (with the
generation prompt) and through it; the characters in between are the reply. The whole text is then
tokenized once, and a token is labelled when it starts inside a reply. Rendering prefixes this way
works for every template that renders a conversation turn by turn, which chat templates do.

>>> split = read_split(Path("export/"))  # doctest: +SKIP
>>> encoded = encode(split.train[0], template)  # doctest: +SKIP
>>> sum(encoded.labelled)  # the reply's tokens  # doctest: +SKIP
3
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from minigate.conversion.dataset_split import split as stratified_split
from minigate.conversion.jsonl import json_objects
from minigate.conversion.observations import output_kind
from minigate.router.catalogue import OutputKind
from minigate.serving.chat_render import render_chat

__all__ = ["Encoded", "Example", "ExampleError", "Split", "Template", "encode", "prompt_text", "read_split", "task_kind"]

_VALIDATION_SHARE = 0.1


class ExampleError(ValueError):
    """A data file that is not chat fine-tuning JSONL; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One conversation; `reply` is its last assistant turn, the answer evaluation compares with."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    where: str  # file:line, for messages about it

    @property
    def reply(self) -> dict[str, Any]:
        return self.messages[-1]

    @property
    def prompt(self) -> list[dict[str, Any]]:
        return self.messages[:-1]

    @property
    def kind(self) -> OutputKind | None:
        return output_kind({"choices": [{"message": self.reply}]})


@dataclass(frozen=True)
class Split:
    """The examples to learn from and those held out; `digest` identifies the data (for the card)."""

    train: list[Example]
    validation: list[Example]
    digest: str
    sources: list[str]


@dataclass(frozen=True)
class Encoded:
    """Token ids and which of them carry loss (the assistant replies)."""

    ids: list[int]
    labelled: list[bool]

    @property
    def first_labelled(self) -> int:
        return self.labelled.index(True) if True in self.labelled else len(self.ids)


class Template(Protocol):
    """What encoding needs from a tokenizer: offset-mapped tokenization (transformers' fast tokenizers)."""

    def __call__(self, text: str, *, add_special_tokens: bool = ..., return_offsets_mapping: bool = ...) -> Any: ...


def read_split(data: Path, validation: Path | None = None, *, seed: int = 0) -> Split:
    """Examples from a file or an export directory; without validation data, a tenth is held out, by kind."""
    if data.is_dir():
        validation = validation or (data / "validation.jsonl" if (data / "validation.jsonl").is_file() else None)
        data = data / "train.jsonl"
    if not data.is_file():
        raise ExampleError(f"{data}: no such file (give a JSONL file or a `minigate dataset export` directory)")
    train = _read(data)
    if not train:
        raise ExampleError(f"{data}: no examples")
    sources = [str(data)]
    if validation is not None:
        held_out = _read(validation)
        sources.append(str(validation))
    else:
        train, held_out = stratified_split(train, [_stratum(example) for example in train], _VALIDATION_SHARE, seed)
    return Split(train, held_out, _digest(sources), sources)


def task_kind(examples: Iterable[Example]) -> OutputKind:
    """The kind of reply most examples end with; free text when none says otherwise."""
    counts: dict[OutputKind, int] = {}
    for example in examples:
        kind = example.kind or "free_text"
        counts[kind] = counts.get(kind, 0) + 1
    return max(counts, key=lambda kind: counts[kind]) if counts else "free_text"


def encode(example: Example, template: Template) -> Encoded:
    """Render the conversation once, and label the tokens of the replies that take loss."""
    text = _render(example.messages, example.tools, generation_prompt=False)
    spans = []
    for index, message in enumerate(example.messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        start = len(_render(example.messages[:index], example.tools, generation_prompt=True))
        end = len(_render(example.messages[:index + 1], example.tools, generation_prompt=False))
        spans.append((start, end))
    tokens = template(text, add_special_tokens=False, return_offsets_mapping=True)
    labelled = [any(start <= first < end for start, end in spans) for first, _ in tokens["offset_mapping"]]
    return Encoded(list(tokens["input_ids"]), labelled)


def prompt_text(example: Example) -> str:
    """The text a server renders for the example's request: everything before the reply, then the cue."""
    return _render(example.prompt, example.tools, generation_prompt=True)


def _render(messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
            generation_prompt: bool) -> str:
    return render_chat(messages, tools, add_generation_prompt=generation_prompt)


def _read(path: Path) -> list[Example]:
    examples = []
    with path.open("rb") as lines:
        for number, value in json_objects(lines):
            if isinstance(value, str):  # "line N: why"
                raise ExampleError(f"{path}: {value}")
            examples.append(_example(value, f"{path}:{number + 1}"))
    return examples


def _example(value: dict[str, Any], where: str) -> Example:
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ExampleError(f"{where}: an example needs \"messages\", a list of chat messages")
    if messages[-1].get("role") != "assistant":
        raise ExampleError(f"{where}: the last message must be the assistant's reply (the answer to learn)")
    if messages[-1].get("weight", 1) == 0:
        raise ExampleError(f"{where}: the last assistant message has weight 0: there would be nothing to learn")
    tools = value.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ExampleError(f"{where}: \"tools\" must be a list")
    return Example(messages, tools, where)


def _stratum(example: Example) -> str:
    """Labels are held out label by label; other kinds by their system prompt (their agent step)."""
    if example.kind == "label":
        return f"label:{str(example.reply.get('content')).strip().casefold()}"
    system = next((str(m.get("content")) for m in example.messages if m.get("role") == "system"), "")
    return f"step:{hashlib.sha256(system.encode()).hexdigest()[:12]}"


def _digest(sources: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(Path(source).read_bytes())
    return f"sha256:{digest.hexdigest()}"
