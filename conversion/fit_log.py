"""`minigate router fit --from-log`: outcome labels from the call log, for the escalation score.

`router fit` learns which requests need the frontier from labelled outcomes. The call log has them
once S6 runs. A logged client call is labelled by the first of these that it has:

1. its shadow verdicts (router/agreement.py): the miniature agreed with the frontier, so the
   miniature would do; it disagreed, so the call needs the frontier. Forward and reverse shadows
   count alike, since both judge the miniature on this very request;
2. feedback on a call a miniature served (`POST /v1/minigate/feedback`): a mean score of at least 0.5
   means the miniature did;
3. an escalation: the cascade refused the miniature's reply, so the call needed the frontier.

Anything else teaches nothing and is left out. Each request's subject, for `--cv subjects`, is its
task, so cross-validation can hold out whole tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from minigate.conversion.fit import Labelled
from minigate.logger.export import export_calls
from minigate.logger.reader import CallReader
from minigate.logger.settings import LoggingSection
from minigate.logger.stores import CallQuery, open_store

__all__ = ["GOOD_FEEDBACK", "label_calls", "read_log_outcomes"]

GOOD_FEEDBACK = 0.5  # a mean rating at least this good says the miniature's reply did


async def read_log_outcomes(settings: LoggingSection, *, since: float | None, until: float | None,
                            actor: str) -> Labelled:
    """Labelled requests from the log over the window; reading payloads needs the log key and is audited."""
    verdicts = await _verdicts(settings.store, since, None)  # a shadow may finish after the window ends
    calls: list[dict[str, Any]] = []
    await export_calls(settings, since=since, until=until, actor=actor, write=calls.extend)
    return label_calls(calls, verdicts)


def label_calls(calls: Sequence[Mapping[str, Any]], verdicts: Mapping[str, Sequence[str]]) -> Labelled:
    """Label exported calls (with payloads and `feedback`) from their shadows' verdicts, feedback or escalation.

    >>> call = {"request_id": "a", "task": "t001", "tier": "frontier", "escalated": None,
    ...         "request": {"messages": [{"role": "user", "content": "hi"}]}}
    >>> label_calls([call], {"a": ["disagree"]}).needs_frontier
    [True]
    """
    requests: list[dict[str, Any]] = []
    labels: list[bool] = []
    subjects: list[str] = []
    for call in calls:
        request = call.get("request")
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            continue  # not logged, or not readable with this key
        needs = _needs_frontier(call, verdicts.get(call["request_id"], ()))
        if needs is not None:
            requests.append(request)
            labels.append(needs)
            subjects.append(str(call.get("task") or "unknown"))
    return Labelled(requests, labels, subjects)


def _needs_frontier(call: Mapping[str, Any], verdicts: Sequence[str]) -> bool | None:
    judged = [verdict for verdict in verdicts if verdict in ("agree", "disagree")]
    if judged:
        return judged.count("disagree") > len(judged) / 2
    ratings = call.get("feedback")
    if call.get("tier") == "miniature" and isinstance(ratings, list) and ratings:
        return sum(float(rating["score"]) for rating in ratings) / len(ratings) < GOOD_FEEDBACK
    if call.get("escalated") is not None:
        return True
    return None


async def _verdicts(store_url: str, since: float | None, until: float | None) -> dict[str, list[str]]:
    """Shadowed request id -> its shadows' verdicts (metadata only)."""
    store = await open_store(store_url)
    try:
        found: dict[str, list[str]] = {}
        query = CallQuery(since=since, until=until, kind="shadows", limit=5000)
        async for page in CallReader(store, None).metadata(query):
            for row in page:
                if row["verdict"] is not None:
                    found.setdefault(row["shadow_of"], []).append(row["verdict"])
        return found
    finally:
        await store.close()
