"""A labelling upstream for bench/shadow: the frontier is always right, the miniature right at a set rate.

A real OpenAI-protocol server (uvicorn on a free loopback port, in a thread). It knows the gold label
of every message the bench sends; the frontier model answers it, the miniature answers it with
probability `accuracy` and another label otherwise, drawn from a seeded RNG, so a seed gives the same
sequence of right and wrong answers. The bench changes `accuracy` while it runs to make the
miniature drift.

    with LabelUpstream(gold, frontier="gpt-4.1", miniature="mini", accuracy=0.97, seed=1) as up:
        ...  # point a gateway at up.base_url
        up.accuracy = 0.80
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from types import TracebackType

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["LabelUpstream"]


class LabelUpstream:
    """Answers `/v1/chat/completions` with one label; counts the calls each model got, and when the miniature's came."""

    def __init__(self, gold: Mapping[str, str], *, frontier: str, miniature: str, accuracy: float, seed: int) -> None:
        self.gold = dict(gold)  # the user's message -> its label
        self.labels = sorted(set(self.gold.values()))
        self.frontier = frontier
        self.miniature = miniature
        self.accuracy = accuracy
        self.calls: Counter[str] = Counter()
        self.miniature_answered: list[float] = []  # when each miniature call was answered (time.time())
        self._rng = random.Random(seed)
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                     access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def __enter__(self) -> LabelUpstream:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the labelling upstream did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def answer(self, model: str, message: str) -> str:
        """The frontier's label is the gold one; the miniature's is, with probability `accuracy`."""
        gold = self.gold[message]
        self.calls[model] += 1
        if model == self.miniature:
            self.miniature_answered.append(time.time())
        if model == self.frontier or self._rng.random() < self.accuracy:
            return gold
        return self._rng.choice([label for label in self.labels if label != gold])

    async def _chat(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except ClientDisconnect:  # a gateway stopped mid-shadow at the end of a trial: nobody to answer
            return Response(status_code=499)
        model = body["model"]
        if model not in (self.frontier, self.miniature):
            error = {"message": f"unknown model {model}", "type": "invalid_request_error", "param": "model",
                     "code": "model_not_found"}
            return Response(orjson.dumps({"error": error}), status_code=404, media_type="application/json")
        label = self.answer(model, body["messages"][-1]["content"])
        reply = {"id": f"chatcmpl-{sum(self.calls.values())}", "object": "chat.completion", "created": int(time.time()),
                 "model": model,
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": label}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 60, "completion_tokens": 3, "total_tokens": 63}}
        return Response(orjson.dumps(reply), media_type="application/json")
