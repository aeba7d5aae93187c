"""How the `tasks` commands show the catalogue to people: rich tables, example texts, and two PNGs.

The catalogue keeps only the ids of a task's example calls (the calls nearest its centroid); their
texts are read back from the calls themselves when the user has them (`example_texts`), redacted as
the call log holds them.

`tasks.png` ranks tasks by their share of cost (of calls when no cost is known); `tasks-map.png`
draws every call in two dimensions (PCA of its blended vector), coloured by task. matplotlib is
imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from rich.table import Table

from minigate.conversion.jsonl import json_objects
from minigate.router.catalogue import Catalogue, Task
from minigate.router.signature import message_text

if TYPE_CHECKING:
    from minigate.logger.redact import Redactor

__all__ = ["PlotUnavailable", "catalogue_table", "example_texts", "task_table", "write_map", "write_shares"]

_PLOTTED = 20  # tasks drawn one by one; the rest are "other"
_TEXT_CHARS = 240  # of an example's text: enough to recognise the step, short enough for a table row


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def catalogue_table(catalogue: Catalogue) -> Table:
    """One row per task: id, name (* when a person named it), calls and their share, share of cost,
    median prompt/output tokens, kind of reply, number of signatures."""
    table = Table(title=f"{len(catalogue.tasks)} tasks in {catalogue.calls} calls ({catalogue.method}, "
                        f"{catalogue.discovered_at})")
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("calls", justify="right", no_wrap=True)
    table.add_column("cost", justify="right")
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("output")
    table.add_column("sigs", justify="right")
    for task in catalogue.tasks:
        table.add_row(task.id, task.name + (" *" if task.named_by == "user" else ""),
                      f"{task.size} {task.call_share:6.1%}", _share(task.cost_share),
                      f"{_number(task.prompt_tokens)}/{_number(task.output_tokens)}", task.output_kind or "-",
                      str(len(task.signatures)))
    return table


def task_table(task: Task, texts: Mapping[str, str] | None = None) -> Table:
    """Everything the catalogue knows about one task, as field and value; `texts` (example id -> text,
    from `example_texts`) shows what the example calls said next to their ids."""
    table = Table(title=f"task {task.id}: {task.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("named by", task.named_by), ("calls", f"{task.size} ({task.call_share:.1%} of calls)"),
        ("cost share", _share(task.cost_share)), ("prompt tokens (median)", _number(task.prompt_tokens)),
        ("output tokens (median)", _number(task.output_tokens)), ("output", task.output_kind or "unknown"),
        ("distinctive terms", ", ".join(task.terms) or "-"), ("tools", ", ".join(task.tools) or "-"),
        ("signatures", "\n".join(f"{key}  {count} calls" for key, count in task.signatures.items()) or "-"),
        ("served by (logged)", _served(task.served_by)),
        ("merged into it", ", ".join(task.merged) or "-"), ("example calls", _examples(task.examples, texts or {})),
    ]
    for field, value in rows:
        table.add_row(field, value)
    return table


def example_texts(task: Task, lines: Iterable[str | bytes], redactor: Redactor) -> dict[str, str]:
    """The text of each of `task`'s example calls found in `lines`, in the catalogue's order.

    `lines` are Request JSONL (ids as `tasks discover --input` gave them: `"id"`, else the line number)
    or `logs export` JSONL (`request_id`). The text is the last user turn, then `->` and the reply when
    the call was logged with one. A logged call was redacted when it was logged; a request body is
    redacted here, with the call log's default policy, so a table never shows more than the log would.
    """
    wanted = set(task.examples)
    found: dict[str, str] = {}
    for number, value in json_objects(lines):
        if isinstance(value, str):
            continue
        is_logged = "request_id" in value and "request" in value  # a request body has neither
        identifier = str(value["request_id"] if is_logged else value.get("id", number))
        if identifier in wanted and identifier not in found:
            text = _call_text(value["request"] if is_logged else value, value.get("response") if is_logged else None)
            found[identifier] = _clipped(text if is_logged else redactor.redact(text)[0])
    return {identifier: found[identifier] for identifier in task.examples if identifier in found}


def write_shares(catalogue: Catalogue, path: Path) -> None:
    """Horizontal bars: each task's share of cost, or of calls when no cost is known."""
    plt = _pyplot()
    tasks = [task for task in catalogue.tasks if task.size][:_PLOTTED]
    by_cost = all(task.cost_share is not None for task in tasks) and bool(tasks)
    shares = [(task.cost_share or 0.0) if by_cost else task.call_share for task in tasks]
    figure, axes = plt.subplots(figsize=(9, 0.35 * len(tasks) + 1.5))
    axes.barh([f"{task.id} {task.name}" for task in tasks], [share * 100 for share in shares], color="tab:blue")
    if by_cost:
        axes.scatter([task.call_share * 100 for task in tasks], range(len(tasks)), color="black", marker="|", s=120,
                     zorder=3, label="share of calls")
        axes.legend(loc="lower right")
    axes.invert_yaxis()
    found = sum(1 for task in catalogue.tasks if task.size)
    top = f"the {len(tasks)} biggest of {found} tasks" if found > len(tasks) else f"{found} tasks"
    axes.set(xlabel=f"share of {'cost' if by_cost else 'calls'} (%)",
             title=f"Tasks by share of {'cost' if by_cost else 'calls'}: {top} in {catalogue.calls} calls")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def write_map(vectors: npt.NDArray[np.float32], assigned: Sequence[str], catalogue: Catalogue, path: Path) -> None:
    """Every call as a point (the first two principal components of its vector), coloured by task."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    points = PCA(n_components=2, random_state=0).fit_transform(vectors) if len(vectors) > 2 \
        else np.zeros((len(vectors), 2))
    shown = [task for task in catalogue.tasks if task.size][:_PLOTTED]
    labels = np.array(assigned)
    figure, axes = plt.subplots(figsize=(9, 7))
    rest = ~np.isin(labels, [task.id for task in shown])
    axes.scatter(points[rest, 0], points[rest, 1], s=4, color="lightgrey", label="other tasks" if rest.any() else None)
    colours = plt.get_cmap("tab20")
    for index, task in enumerate(shown):
        mine = labels == task.id
        axes.scatter(points[mine, 0], points[mine, 1], s=6, color=colours(index % 20), label=f"{task.id} {task.name}")
        centre = points[mine].mean(axis=0)
        axes.annotate(task.id, centre, fontsize=8, weight="bold", ha="center")
    axes.set(title=f"{len(vectors)} calls by task (first two principal components of their vectors)",
             xticks=[], yticks=[])
    axes.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _pyplot() -> ModuleType:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("the plots need matplotlib: pip install 'minigate[tasks]'") from exc
    return plt


def _examples(ids: Sequence[str], texts: Mapping[str, str]) -> str:
    return "\n".join(f"{identifier}: {texts[identifier]}" if identifier in texts else identifier
                     for identifier in ids) or "-"


def _call_text(request: Any, response: Any) -> str:
    """The last user turn of a request body, and the first choice's reply when there is one."""
    messages = request.get("messages") if isinstance(request, dict) else None
    users = [message for message in messages or () if isinstance(message, dict) and message.get("role") == "user"]
    asked = " ".join(message_text(users[-1].get("content")).split()) if users else ""
    reply = _reply_text(response)
    return f"{asked} -> {reply}" if reply else asked


def _reply_text(response: Any) -> str:
    choices = response.get("choices") if isinstance(response, dict) else None
    message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) \
        else None
    if not isinstance(message, dict):
        return ""
    calls = [call.get("function") or {} for call in message.get("tool_calls") or () if isinstance(call, dict)]
    called = [f"{function.get('name', '')}({function.get('arguments', '')})" for function in calls]
    return " ".join([" ".join(message_text(message.get("content")).split()), *called]).strip()


def _clipped(text: str) -> str:
    return text if len(text) <= _TEXT_CHARS else text[: _TEXT_CHARS - 1] + "…"


def _served(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{model} {count / total:.0%}" for model, count in counts.items()) if total else "-"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)
