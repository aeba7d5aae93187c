"""Live task matching: which catalogue task a request is, decided on the request path.

A signature the catalogue knows, held by one task, is a dictionary lookup: no model, microseconds.
Everything else (a signature never seen, or one shared by several tasks) is matched, when
`tasks.embedding` is on, to the nearest task centroid by the same blended embedding discovery
clusters on. That runs in one worker thread, with the model loaded once at start-up, never per
request; results are cached by signature and content; and it is bounded by `tasks.budget_ms`: over
budget the request goes on as `unknown` at once, while the embedding finishes in the background and
fills the cache for the next such call. A slower request is never the price of a task label.

The matcher also hands out each task's contract (`contract`): the labels or JSON schema the
catalogue knows its replies must have, which the cascade checks a miniature's reply against; and its
median frontier reply length (`frontier_output_tokens`), which prices a miniature's counterfactual.

Without `tasks.embedding`, nothing here imports torch or sentence-transformers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minigate.router.cascade import NO_CONTRACT, TaskContract
from minigate.router.settings import ShadowSpec, TasksSection
from minigate.router.signature import signature

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from minigate.router.embedding import Embedder

__all__ = ["UNKNOWN_TASK", "TaskMatcher"]

UNKNOWN_TASK = "unknown"
log = logging.getLogger("minigate.router")


@dataclass(frozen=True, slots=True)
class _Centroids:
    ids: list[str]
    matrix: npt.NDArray[np.float32]  # one unit row per task id


class TaskMatcher:
    """Task ids for requests, from one catalogue.

    >>> matcher = TaskMatcher({"9f2c41d07a5be113": "t001"})
    >>> matcher.known({"messages": [{"role": "user", "content": "hi"}]})
    'unknown'
    >>> matcher.contract("unknown") is NO_CONTRACT
    True
    """

    def __init__(self, by_signature: Mapping[str, str], names: Mapping[str, str] | None = None, *,
                 contracts: Mapping[str, TaskContract] | None = None,
                 shadows: Mapping[str, ShadowSpec] | None = None,
                 frontier_output_tokens: Mapping[str, int] | None = None, centroids: _Centroids | None = None,
                 embedder: Embedder | None = None, budget_s: float = 0.015, min_similarity: float = 0.5,
                 cache_size: int = 4096) -> None:
        self._by_signature = dict(by_signature)  # signature -> task id, for signatures one task holds
        self.names = dict(names or {})  # task id -> name: ids go to records and metrics, names to headers and rules
        self._contracts = dict(contracts or {})  # task id -> its contract, for tasks that have one
        self._shadows = dict(shadows or {})  # task id -> the shadow its catalogue entry names
        self._frontier_output = dict(frontier_output_tokens or {})  # task id -> median frontier output tokens
        self._centroids = centroids
        self._embedder = embedder
        self._budget_s = budget_s
        self._min_similarity = min_similarity
        self._cache: OrderedDict[bytes, str] = OrderedDict()  # signature + content -> task
        self._contexts: OrderedDict[str, Any] = OrderedDict()  # signature -> its context's embedding (worker only)
        self._cache_size = cache_size
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="minigate-tasks") if embedder else None

    @classmethod
    def load(cls, settings: TasksSection) -> TaskMatcher:
        """The matcher of the configured catalogue; embedding fallback only when `settings.embedding`."""
        from minigate.router.catalogue import load_catalogue

        if settings.catalogue is None:
            return cls({})
        catalogue = load_catalogue(settings.catalogue)
        holders: dict[str, set[str]] = {}
        for task in catalogue.tasks:
            for sig in task.signatures:
                holders.setdefault(sig, set()).add(task.id)
        by_signature = {sig: next(iter(ids)) for sig, ids in holders.items() if len(ids) == 1}
        names = {task.id: task.name for task in catalogue.tasks}
        contracts = {task.id: TaskContract.of(task.labels, task.schema, task.output_kind)
                     for task in catalogue.tasks if task.labels or task.schema is not None or task.output_kind}
        shadows = {task.id: ShadowSpec.model_validate(task.shadow) for task in catalogue.tasks if task.shadow}
        frontier_output = {task.id: task.frontier_output_tokens for task in catalogue.tasks
                           if task.frontier_output_tokens is not None}
        if not settings.embedding:
            return cls(by_signature, names, contracts=contracts, shadows=shadows,
                       frontier_output_tokens=frontier_output)
        import numpy as np
        import torch

        from minigate.router.embedding import Embedder

        # One request's two short texts gain nothing from intra-op threads, and on a busy host they
        # cost several times the work in contention: the matcher's one worker uses one core.
        torch.set_num_threads(1)

        live = [task.id for task in catalogue.tasks]
        centroids = _Centroids(live, np.stack([catalogue.centroids[task_id] for task_id in live]).astype(np.float32))
        return cls(by_signature, names, contracts=contracts, shadows=shadows, frontier_output_tokens=frontier_output,
                   centroids=centroids, embedder=Embedder(), budget_s=settings.budget_ms / 1000,
                   min_similarity=settings.min_similarity)

    def name_of(self, task_id: str) -> str:
        return self.names.get(task_id, UNKNOWN_TASK)

    def contract(self, task_id: str) -> TaskContract:
        """What the task's replies must be (labels, schema): the cascade's checks beyond the request's own."""
        return self._contracts.get(task_id, NO_CONTRACT)

    def frontier_output_tokens(self, task_id: str) -> int | None:
        """The median output of the task's frontier replies, as discovery logged them; None when unknown.

        What a call a miniature served would have cost without minigate is priced on it: a miniature's
        replies may be shorter (or longer) than the frontier's.
        """
        return self._frontier_output.get(task_id)

    def shadow(self, task_id: str) -> ShadowSpec | None:
        """The shadow the task's catalogue entry names (a rule's own shadow comes first)."""
        return self._shadows.get(task_id)

    def similarity(self) -> Callable[[str, str], float] | None:
        """The cosine of two texts by the matching model, for free-text shadow verdicts (router.agreement);
        None when embedding matching is off (no model is loaded just for that)."""
        embedder = self._embedder
        if embedder is None:
            return None

        def cosine(a: str, b: str) -> float:
            vectors = embedder.embed([a, b])
            return float(vectors[0] @ vectors[1])  # the vectors are unit length

        return cosine

    def known(self, body: Mapping[str, Any]) -> str:
        """The task by signature alone (what `route explain` and replay use): a hit, or `unknown`."""
        return self._by_signature.get(signature(body), UNKNOWN_TASK)

    async def match(self, body: Mapping[str, Any]) -> str:
        """The task of a live request, within the time budget."""
        sig = signature(body)
        task = self._by_signature.get(sig)
        if task is not None or self._worker is None:
            return task or UNKNOWN_TASK
        from minigate.router.task_text import content_text

        key = hashlib.blake2b(f"{sig}\x00{content_text(body)}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        future = asyncio.get_running_loop().run_in_executor(self._worker, self._nearest, body, sig)
        future.add_done_callback(lambda done: self._remember(key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._budget_s)
        except TimeoutError:
            return UNKNOWN_TASK

    async def warm_up(self) -> None:
        """Load the embedding model now, at start-up, so no request ever waits for it."""
        if self._worker is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._worker, self._nearest, {"messages": [{"role": "user", "content": "warm up"}]}, "")
            self._contexts.clear()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    def _nearest(self, body: Mapping[str, Any], sig: str) -> str:
        """Runs in the worker. A step's context (system prompt, tools, format) is the same for every call
        with its signature, so its embedding is computed once per signature; a call then embeds one text."""
        from minigate.router.embedding import blend
        from minigate.router.task_text import content_text, context_text

        assert self._embedder is not None and self._centroids is not None
        context = self._contexts.get(sig)
        if context is None:
            content, context = self._embedder.embed([content_text(body), context_text(body)])
            self._contexts[sig] = context
            if len(self._contexts) > self._cache_size:
                self._contexts.popitem(last=False)
        else:
            content = self._embedder.embed([content_text(body)])[0]
        point = blend(content[None, :], context[None, :])[0]
        similarities = self._centroids.matrix @ point
        best = int(similarities.argmax())
        return self._centroids.ids[best] if similarities[best] >= self._min_similarity else UNKNOWN_TASK

    def _remember(self, key: bytes, done: asyncio.Future[str]) -> None:
        if done.cancelled() or done.exception() is not None:
            if not done.cancelled():
                log.warning("task matching failed: %s", done.exception())
            return
        self._cache[key] = done.result()
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
