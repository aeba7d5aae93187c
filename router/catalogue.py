"""The task catalogue: `tasks.yaml` for people and the router, centroids beside it in `tasks.npz`.

Task ids are stable. Re-discovery matches each new cluster to the centroid it is most similar to
(one to one, most similar pairs first, above `MATCH_SIMILARITY`), so a task keeps its id and its name
while its calls drift, and fresh ids are only ever drawn for new tasks. What a person decided
survives too: a renamed task keeps its name, and a task merged into another keeps its centroid in
`tasks.npz` under its own id, so a cluster that matches it next time lands in the task it was merged
into. Tasks a person touched stay listed (with no calls) when a re-discovery doesn't find them.

A task may also say what its replies must be, for the cascade (router.cascade.TaskContract): `labels`,
the closed set of replies of a label task, and `schema`, the JSON schema of a json task. Discovery
fills them from the calls; people may write or correct them in `tasks.yaml` (a catalogue without them
loads as before).

>>> catalogue = load_catalogue(Path("tasks.yaml"))  # doctest: +SKIP
>>> save_catalogue(rename(catalogue, "t003", "refund-request"), Path("tasks.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

__all__ = ["MATCH_SIMILARITY", "Catalogue", "CatalogueError", "Identity", "OutputKind", "Task", "catalogue_document",
           "identify", "load_catalogue", "merge", "rename", "save_catalogue"]

MATCH_SIMILARITY = 0.8  # cosine between centroids; the same task's centroid moves far less across runs
FORMAT = 1
_NAME = r"^[a-z0-9][a-z0-9_./-]*$"

Floats = npt.NDArray[np.float32]
OutputKind = Literal["free_text", "json", "tool_call", "label"]  # what a task's replies mostly are


class CatalogueError(ValueError):
    """A catalogue that can't be read, or an edit that can't be made (unknown task, taken name)."""


@dataclass(frozen=True)
class Task:
    """One recurring task.

    >>> Task("t001", "card-arrived", size=120, call_share=0.3, signatures={"9f2c41d07a5be113": 120}).name
    'card-arrived'
    """

    id: str
    name: str
    size: int
    call_share: float
    signatures: dict[str, int]  # signature -> calls of this task with it
    cost_share: float | None = None  # None: no call had a known cost
    prompt_tokens: int | None = None  # median
    output_tokens: int | None = None  # median, of calls with a logged reply (any model's)
    output_kind: OutputKind | None = None  # the most common kind of reply; None: no reply seen
    tools: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # ids of the calls nearest the centroid
    served_by: dict[str, int] = field(default_factory=dict)  # model -> logged calls it served
    named_by: Literal["discovery", "user"] = "discovery"
    merged: list[str] = field(default_factory=list)  # ids a person merged into this task
    labels: list[str] = field(default_factory=list)  # the closed set of replies (label tasks); empty: not known
    schema: dict[str, Any] | None = None  # the JSON schema replies match (json tasks); None: not known
    # Written by people: `{model, sample, max_concurrency}` (router.settings.ShadowSpec) shadows the task's
    # calls whatever rule serves them, unless that rule names its own shadow.
    shadow: dict[str, Any] | None = None
    # Median output of the calls a frontier model answered: what a miniature-served call's counterfactual
    # (what it would have cost without minigate) is priced on. None: no frontier reply logged, or an
    # older catalogue.
    frontier_output_tokens: int | None = None


@dataclass(frozen=True)
class Catalogue:
    """Every task (most calls first), the centroid of every id (merged ids too), and the run's facts."""

    tasks: list[Task]
    centroids: dict[str, Floats]
    calls: int
    discovered_at: str
    method: str
    model: str
    next_id: int

    def find(self, key: str) -> Task:
        """A task by id or by name."""
        for task in self.tasks:
            if key in (task.id, task.name):
                return task
        raise CatalogueError(f"no task {key!r} in the catalogue (see `minigate tasks list`)")

    def owner(self, task_id: str) -> str | None:
        """The task an id now belongs to: itself, or the task it was merged into."""
        return next((task.id for task in self.tasks if task_id == task.id or task_id in task.merged), None)


@dataclass(frozen=True)
class Identity:
    """Who a fresh cluster is: an id, and the previous task's name and overrides when it matched one."""

    id: str
    name: str | None = None  # None: a new task, to be named from its terms
    named_by: Literal["discovery", "user"] = "discovery"
    merged: tuple[str, ...] = ()


def identify(previous: Catalogue | None, centroids: Floats) -> tuple[list[Identity], dict[str, Floats], int]:
    """Ids for fresh clusters (rows of unit centroids): matched to the previous catalogue, or new.

    Returns each cluster's identity (clusters matching two parts of one merged task share it), the
    centroid table to store (fresh centroids for matched and new ids, old ones kept for the rest), and
    the next free id number.
    """
    known = list(previous.centroids) if previous else []
    next_id = previous.next_id if previous else 1
    table = dict(previous.centroids) if previous else {}
    matched = _match(centroids, np.stack([table[key] for key in known])) if known and len(centroids) else {}
    identities: list[Identity] = []
    for row, centroid in enumerate(centroids):
        if row in matched:
            part = known[matched[row]]
        else:
            part, next_id = f"t{next_id:03d}", next_id + 1
        table[part] = centroid
        task_id = (previous.owner(part) if previous else None) or part
        identities.append(_identity(previous, task_id))
    return identities, table, next_id


def rename(catalogue: Catalogue, key: str, name: str) -> Catalogue:
    """The catalogue with one task renamed by a person (kept across re-discovery)."""
    import re

    if not re.match(_NAME, name):
        raise CatalogueError(f"{name!r}: a task name is lower-case letters, digits and _ . / - (rules refer to it)")
    task = catalogue.find(key)
    if any(other.name == name and other.id != task.id for other in catalogue.tasks):
        raise CatalogueError(f"another task is already named {name!r}")
    renamed = replace(task, name=name, named_by="user")
    return replace(catalogue, tasks=[renamed if other.id == task.id else other for other in catalogue.tasks])


def merge(catalogue: Catalogue, into: str, others: Sequence[str]) -> Catalogue:
    """The catalogue with `others` folded into `into` (kept across re-discovery).

    Sizes, shares and signatures add up; token figures become size-weighted means of the medians.
    """
    target = catalogue.find(into)
    absorbed = [catalogue.find(key) for key in others]
    if any(task.id == target.id for task in absorbed) or not absorbed:
        raise CatalogueError("merge a task with one or more other tasks")
    parts = [target, *absorbed]
    signatures: dict[str, int] = {}
    for part in parts:
        for key, count in part.signatures.items():
            signatures[key] = signatures.get(key, 0) + count
    merged = replace(
        target,
        size=sum(part.size for part in parts),
        call_share=sum(part.call_share for part in parts),
        cost_share=_sum_known(part.cost_share for part in parts),
        signatures=signatures,
        prompt_tokens=_weighted(parts, "prompt_tokens"),
        labels=_merged_labels(parts),
        schema=target.schema if all(part.schema == target.schema for part in parts) else None,
        output_tokens=_weighted(parts, "output_tokens"),
        frontier_output_tokens=_weighted(parts, "frontier_output_tokens"),
        tools=sorted({tool for part in parts for tool in part.tools}),
        served_by=dict(sum((Counter(part.served_by) for part in parts), Counter())),
        examples=[example for part in parts for example in part.examples][:len(target.examples) or 5],
        merged=[*target.merged, *(key for task in absorbed for key in (task.id, *task.merged))],
    )
    gone = {task.id for task in absorbed}
    tasks = [merged if task.id == target.id else task for task in catalogue.tasks if task.id not in gone]
    return replace(catalogue, tasks=sorted(tasks, key=lambda task: -task.size))


def load_catalogue(path: Path) -> Catalogue:
    """Read `tasks.yaml` and the `tasks.npz` beside it; FileNotFoundError when there is none yet."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as stored:
            centroids = {str(key): np.asarray(row, dtype=np.float32)
                         for key, row in zip(stored["ids"], stored["centroids"])}
    except (yaml.YAMLError, KeyError, ValueError) as exc:
        raise CatalogueError(f"{path}: not a task catalogue ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CatalogueError(f"{path}: not a task catalogue of format {FORMAT}")
    try:
        tasks = [_task(entry) for entry in document["tasks"]]
        return Catalogue(tasks, centroids, int(document["calls"]), str(document["discovered_at"]),
                         str(document["method"]), str(document["model"]), int(document["next_id"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogueError(f"{path}: a task entry is malformed ({exc})") from exc


def save_catalogue(catalogue: Catalogue, path: Path) -> None:
    """Write `tasks.yaml` and `tasks.npz` (each replaced whole, never half-written)."""
    document = catalogue_document(catalogue)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = list(catalogue.centroids)
    stacked = np.stack([catalogue.centroids[key] for key in ids]) if ids else np.empty((0, 0), np.float32)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, ids=np.array(ids, dtype=str), centroids=stacked.astype(np.float32))
    partial.replace(path.with_suffix(".npz"))
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)
    staged = path.with_suffix(".partial.yaml")
    staged.write_text(text, encoding="utf-8")
    staged.replace(path)


def catalogue_document(catalogue: Catalogue) -> dict[str, Any]:
    """The catalogue as `tasks.yaml` holds it (and `tasks list --json` prints it): plain values, no centroids."""
    return {
        "format": FORMAT, "discovered_at": catalogue.discovered_at, "method": catalogue.method,
        "model": catalogue.model, "calls": catalogue.calls, "next_id": catalogue.next_id,
        "tasks": [asdict(task) for task in catalogue.tasks],
    }


def _match(fresh: Floats, known: Floats) -> dict[int, int]:
    """Fresh rows to known rows, one to one, most similar pairs first, none below `MATCH_SIMILARITY`."""
    if fresh.shape[1] != known.shape[1]:  # centroids of another embedding model: nothing to match
        return {}
    similarity = fresh @ known.T
    pairs = np.argwhere(similarity >= MATCH_SIMILARITY)
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for row, column in sorted(pairs.tolist(), key=lambda pair: -similarity[pair[0], pair[1]]):
        if row not in matched and column not in taken:
            matched[row] = column
            taken.add(column)
    return matched


def _identity(previous: Catalogue | None, task_id: str) -> Identity:
    task = next((task for task in previous.tasks if task.id == task_id), None) if previous else None
    if task is None:
        return Identity(task_id)
    return Identity(task_id, task.name, task.named_by, tuple(task.merged))


def _task(entry: Mapping[str, Any]) -> Task:
    """One task entry; `labels` and `schema` are checked, since people write them by hand."""
    task = Task(**entry)
    if not isinstance(task.labels, list) or not all(isinstance(label, str) and label.strip() for label in task.labels):
        raise ValueError(f"task {task.id}: labels must be a list of non-blank strings")
    if task.schema is not None:
        if not isinstance(task.schema, dict):
            raise ValueError(f"task {task.id}: schema must be a JSON schema (a mapping)")
        try:
            Draft202012Validator.check_schema(task.schema)
        except SchemaError as exc:
            raise ValueError(f"task {task.id}: schema is not a valid JSON schema: {exc.message}") from None
    if task.shadow is not None:
        from pydantic import ValidationError

        from minigate.router.settings import ShadowSpec

        try:
            ShadowSpec.model_validate(task.shadow)
        except ValidationError as exc:
            raise ValueError(f"task {task.id}: shadow: {exc.errors()[0]['msg']} "
                             f"({'.'.join(map(str, exc.errors()[0]['loc'])) or 'shadow'})") from None
    return task


def _merged_labels(parts: Sequence[Task]) -> list[str]:
    """The union of the parts' label sets; none when a part has none (the merged replies are not a closed set)."""
    if not all(part.labels for part in parts):
        return []
    return list(dict.fromkeys(label for part in parts for label in part.labels))


def _sum_known(values: Any) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _weighted(parts: Sequence[Task], attribute: str) -> int | None:
    pairs = [(getattr(part, attribute), part.size) for part in parts if getattr(part, attribute) is not None]
    total = sum(size for _, size in pairs)
    return round(sum(value * size for value, size in pairs) / total) if total else None
