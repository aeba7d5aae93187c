"""Routing many requests offline (`minigate route score`): the request-JSONL format in, decisions out.

Request JSONL: one chat completions body per line, with an optional top-level "id"; a line without
one gets its 0-based line number. Nothing here calls an upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from minigate.conversion.jsonl import json_objects
from minigate.errors import RequestError
from minigate.router.decision import Router

__all__ = ["score_lines"]


def score_lines(router: Router, lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """One result per non-blank input line, in order: {"id", "score", "model", "tier", "rule"}, or an error."""
    for number, body in json_objects(lines):
        if isinstance(body, str):
            yield {"id": str(number), "error": body}
            continue
        request_id = str(body.pop("id", number))
        try:
            explanation = router.explain(str(body.get("model", "")), body, {})
        except RequestError as exc:
            yield {"id": request_id, "error": exc.message}
            continue
        target = explanation.decision.target
        yield {"id": request_id, "score": round(explanation.score, 6), "model": target.name, "tier": target.tier,
               "rule": explanation.decision.rule}
