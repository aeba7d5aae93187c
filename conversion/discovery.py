"""`minigate tasks discover`: find the recurring tasks in a set of calls and write them as a catalogue.

A task is what one miniature can learn, so discovery follows agent steps first (`steps.find_steps`):
a step that constrains its output (tools, a response format, label replies) or gives a specific
instruction in its system prompt is exactly one task, never split by what its calls ask about and
never merged with another step. Only open-ended calls (no system prompt or a generic one) are split
by content: each is read two ways, its user content (the last user turn) and its step's context
(masked system prompt, tools, response format; one text per signature), both embedded with MiniLM
and blended half and half, and the blend is clustered (`clustering.cluster`), so one generic
assistant's calls become the several things people ask it. Tasks get stable ids from the previous
catalogue (`catalogue.identify`), and every task is described from its calls: size, shares of calls
and cost, tokens, the kind of reply, signatures, tools, its distinctive terms and the calls nearest
its centroid, and what its replies must be (a label task's closed label set, a json task's schema),
which the gateway's cascade checks miniatures against.

>>> found = discover(calls, Embedder(cache), previous=None, discovered_at="2025-06-01T00:00Z")  # doctest: +SKIP
>>> found.catalogue.tasks[0].name  # doctest: +SKIP
'card-arrived-delivery'
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from minigate.conversion.clustering import cluster
from minigate.conversion.naming import distinctive_terms, task_name
from minigate.conversion.observations import Observation, Skipped
from minigate.conversion.steps import Step, find_steps
from minigate.router.cascade import normalise_label
from minigate.router.catalogue import Catalogue, Identity, OutputKind, Task, identify
from minigate.router.embedding import MODEL_NAME, blend
from minigate.router.features import extract_features
from minigate.router.signature import signature, tool_names
from minigate.router.task_text import content_text, context_text

__all__ = ["METHOD", "Discovery", "Progress", "TextEmbedder", "discover"]

METHOD = "steps+spectral-ward-silhouette"  # open-ended calls only are clustered
_EXAMPLES = 5
_ANCHOR_SHARE = 0.5  # a tool (or schema) names a task when at least this share of its calls offer it
# A task's label replies are a closed set (see _labels) with at most this many values, covering this share
# of its replies, seen in at least this many replies.
_MAX_LABELS = 50
_LABEL_COVERAGE = 0.95
_MIN_LABEL_REPLIES = 20

Floats = npt.NDArray[np.float32]
Progress = Callable[[str, int, int], object]  # stage, done, total


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str], progress: Callable[[int, int], object] = ...) -> Floats: ...


@dataclass(frozen=True)
class Discovery:
    """The catalogue, each call's task id (in input order), and each call's blended vector."""

    catalogue: Catalogue
    assignments: list[tuple[str, str]]
    vectors: Floats

    def assignment_lines(self, read: Sequence[Observation | Skipped]) -> bytes:
        """`{"id", "task", "name"}` per input line, in input order; "unknown" for lines without a request.

        `read` is what discovery was given plus the lines skipped, in the order they were read.
        """
        names = {task.id: task.name for task in self.catalogue.tasks}
        tasks = iter(task for _, task in self.assignments)  # in the order of the lines that held a request
        lines = []
        for item in read:
            task = "unknown" if isinstance(item, Skipped) else next(tasks)
            lines.append(orjson.dumps({"id": item.id, "task": task, "name": names.get(task, "unknown")}) + b"\n")
        return b"".join(lines)


def discover(observations: Sequence[Observation], embedder: TextEmbedder, *, previous: Catalogue | None,
             discovered_at: str, progress: Progress = lambda stage, done, total: None) -> Discovery:
    """Split the calls into tasks (steps whole, open-ended calls by content) and describe each; ids and
    people's edits carry over from `previous`."""
    if not observations:
        raise ValueError("there are no calls to discover tasks in")
    signatures = [signature(observation.body) for observation in observations]
    vectors = _vectors(observations, signatures, embedder, progress)
    steps = find_steps([observation.body for observation in observations],
                       [observation.output_kind for observation in observations])
    progress("clustering", 0, 1)
    clusters = sorted(_clusters(steps, vectors), key=len, reverse=True)  # new ids go to the biggest tasks first
    progress("clustering", 1, 1)
    identities, centroids, next_id = identify(previous, np.stack([_centroid(vectors[rows]) for rows in clusters]))
    groups: dict[Identity, list[int]] = {}
    for identity, rows in zip(identities, clusters):
        groups.setdefault(identity, []).extend(rows.tolist())
    kept = _kept(previous, {identity.id for identity in groups})
    before = {task.id: task for task in previous.tasks} if previous else {}
    tasks = _describe(groups, observations, signatures, vectors, before, taken={task.name for task in kept}) + kept
    catalogue = Catalogue(sorted(tasks, key=lambda task: (-task.size, task.id)), centroids, len(observations),
                          discovered_at, METHOD, MODEL_NAME, next_id)
    owner = {row: identity.id for identity, rows in groups.items() for row in rows}
    assignments = [(observation.id, owner[row]) for row, observation in enumerate(observations)]
    return Discovery(catalogue, assignments, vectors)


def _vectors(observations: Sequence[Observation], signatures: list[str], embedder: TextEmbedder,
             progress: Progress) -> Floats:
    contexts: dict[str, str] = {}
    for key, observation in zip(signatures, observations):
        contexts.setdefault(key, context_text(observation.body))
    texts = [content_text(observation.body) for observation in observations]
    context_texts = [contexts[key] for key in signatures]
    every = embedder.embed([*texts, *dict.fromkeys(context_texts)],
                           progress=lambda done, total: progress("embedding", done, total))
    by_context = dict(zip(dict.fromkeys(context_texts), every[len(texts):]))
    return blend(every[:len(texts)], np.stack([by_context[text] for text in context_texts]))


def _clusters(steps: Sequence[Step], vectors: Floats) -> list[npt.NDArray[np.intp]]:
    """Rows of each task: every step that is one task whole, then the open-ended calls clustered by content."""
    whole = [np.array(step.rows, dtype=np.intp) for step in steps if step.is_one_task]
    open_rows = np.array(sorted(row for step in steps if not step.is_one_task for row in step.rows), dtype=np.intp)
    if not len(open_rows):
        return whole
    # Identical calls (same content, same step) are clustered once: repeats would weigh on the tree and
    # the silhouettes, and make the tasks found depend on how often a caller retried.
    unique, inverse = np.unique(vectors[open_rows], axis=0, return_inverse=True)
    labels = cluster(unique).labels[inverse.reshape(-1)]
    return [*whole, *(open_rows[labels == label] for label in range(int(labels.max()) + 1))]


def _centroid(vectors: Floats) -> Floats:
    mean = vectors.mean(axis=0)
    return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), dtype=np.float32)


def _describe(groups: dict[Identity, list[int]], observations: Sequence[Observation], signatures: list[str],
              vectors: Floats, before: Mapping[str, Task], *, taken: set[str]) -> list[Task]:
    total_cost = sum(observation.cost or 0.0 for observation in observations)
    has_cost = any(observation.cost is not None for observation in observations)
    terms = distinctive_terms([[content_text(observations[row].body) for row in rows] for rows in groups.values()])
    taken = taken | {identity.name for identity in groups if identity.name}
    tasks = []
    for (identity, rows), words in zip(groups.items(), terms):
        members = [observations[row] for row in rows]
        tools = _common_tools(members)
        name = identity.name or _unique(task_name(words, _anchor(members, tools)), taken)
        taken.add(name)
        costs = [member.cost or 0.0 for member in members]
        nearest = np.argsort(-(vectors[rows] @ _centroid(vectors[rows])), kind="stable")[:_EXAMPLES]
        kind = _output_kind(members)
        labels, schema = _contract(members, kind, before.get(identity.id))
        tasks.append(Task(
            id=identity.id, name=name, size=len(rows), call_share=round(len(rows) / len(observations), 6),
            signatures=dict(Counter(signatures[row] for row in rows).most_common()),
            cost_share=round(sum(costs) / total_cost, 6) if has_cost and total_cost else None,
            prompt_tokens=_median(member.input_tokens or extract_features(member.body).prompt_tokens
                                  for member in members),
            output_tokens=_median(member.output_tokens for member in members),
            output_kind=kind, tools=tools, terms=words,
            examples=[members[int(index)].id for index in nearest],
            served_by=dict(Counter(member.model for member in members if member.model).most_common()),
            named_by=identity.named_by, merged=list(identity.merged), labels=labels, schema=schema,
            shadow=before[identity.id].shadow if identity.id in before else None,  # a person's: it stays
            frontier_output_tokens=_median(member.output_tokens for member in members if member.tier == "frontier"),
        ))
    return tasks


def _kept(previous: Catalogue | None, found: set[str]) -> list[Task]:
    """Tasks a person renamed or merged stay listed, with no calls, when this run didn't find them."""
    if previous is None:
        return []
    return [replace(task, size=0, call_share=0.0, signatures={}, cost_share=None, prompt_tokens=None,
                    output_tokens=None, frontier_output_tokens=None, examples=[], served_by={})
            for task in previous.tasks if task.id not in found and (task.named_by == "user" or task.merged)]


def _common_tools(members: Sequence[Observation]) -> list[str]:
    counts = Counter(name for member in members for name in tool_names(member.body))
    return sorted(name for name, count in counts.items() if count >= _ANCHOR_SHARE * len(members))


def _anchor(members: Sequence[Observation], tools: list[str]) -> str | None:
    """What names a task besides its words: its one common tool, else its common response schema."""
    if len(tools) == 1:
        return tools[0]
    schemas = Counter(_schema_name(member) for member in members)
    name, count = schemas.most_common(1)[0]
    return name if name and count >= _ANCHOR_SHARE * len(members) else None


def _schema_name(observation: Observation) -> str | None:
    name = _json_schema(observation).get("name")
    return name if isinstance(name, str) else None


def _json_schema(observation: Observation) -> dict[str, Any]:
    """The request's `response_format.json_schema` (name, schema); empty when it has none."""
    response_format = observation.body.get("response_format")
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    return spec if isinstance(spec, dict) else {}


def _contract(members: Sequence[Observation], kind: OutputKind | None,
              earlier: Task | None) -> tuple[list[str], dict[str, Any] | None]:
    """The task's label set and schema as its calls show them. Where these calls can't tell (no logged
    reply, so no kind; no schema in the requests), the previous catalogue's stay: a person may have
    written them, and discovery from request bodies alone must not wipe what the call log showed.
    Replies now of another kind drop them."""
    labels = _labels(members) or (list(earlier.labels) if earlier and kind is None else [])
    schema = _schema(members) or (earlier.schema if earlier and kind in ("json", None) else None)
    return labels, schema


def _labels(members: Sequence[Observation]) -> list[str]:
    """The closed set of a label task's replies, each as most often logged; none unless the set is closed.

    Closed: at least `_MIN_LABEL_REPLIES` label replies, at most `_MAX_LABELS` distinct labels, label
    replies at least `_LABEL_COVERAGE` of the task's replies, and labels seen only once at most
    1 - `_LABEL_COVERAGE` of them (Good-Turing: the chance that the next reply is a label not seen yet).
    A set that is not closed would escalate the miniature's right answers as `invalid_label`.
    """
    spellings: dict[str, Counter[str]] = {}
    for member in members:
        if member.label is not None and (key := normalise_label(member.label)):  # "." is no label
            spellings.setdefault(key, Counter())[member.label] += 1
    counts = [sum(spelt.values()) for spelt in spellings.values()]
    replies = sum(1 for member in members if member.output_kind is not None)
    labelled, once = sum(counts), counts.count(1)
    if labelled < max(_MIN_LABEL_REPLIES, _LABEL_COVERAGE * replies) or len(counts) > _MAX_LABELS \
            or once > (1 - _LABEL_COVERAGE) * labelled:
        return []
    return [spellings[key].most_common(1)[0][0] for key in sorted(spellings)]


def _schema(members: Sequence[Observation]) -> dict[str, Any] | None:
    """The JSON schema every call of the task asks for in its `response_format`; None when any differs."""
    schemas = [_json_schema(member).get("schema") for member in members]
    first = schemas[0]
    return first if isinstance(first, dict) and all(schema == first for schema in schemas) else None


def _output_kind(members: Sequence[Observation]) -> OutputKind | None:
    kinds = Counter(member.output_kind for member in members if member.output_kind is not None)
    return kinds.most_common(1)[0][0] if kinds else None


def _median(values: Iterable[int | None]) -> int | None:
    known = [value for value in values if value is not None]
    return round(statistics.median(known)) if known else None


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}-{number}", number + 1
    return candidate
