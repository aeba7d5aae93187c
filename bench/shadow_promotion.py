"""The second half of bench/shadow: the autopilot promotes a good miniature, then demotes it once it drifts.

`minigate serve` (its autopilot on: `conversion.auto_promote`) fronts bench/shadow_upstream.py: a
frontier that answers every BANKING77 message (10 intents, tests/support/banking_task.py) with its
gold label, and a miniature right with probability `accuracy_before`. The rule that serves the task
shadows a sample of its calls with the miniature. Clients send the messages at a fixed concurrency
until the autopilot writes its promotion (the promotions file appears); then the miniature drifts to
`accuracy_after`, and the clients go on until replies come from the miniature (`x-minigate-rule:
promoted:intents`) and then from the frontier again. The drift starts at the decision, not at the
first reply the miniature serves: shadows made between the decision and the reload count towards the
demotion too (every verdict since the promotion does), and they should judge the drifted miniature.
Even so, the autopilot dates a promotion from the start of its review, before it has read the call log,
so the shadows made while it reads and writes (a fraction of a second) still judge the miniature at
its old rate and count towards the demotion: `old_rate_verdicts` counts them (the miniature's answers
between the decision and the drift; before the promotion every miniature call is a shadow).

Counted per seed, from the promotions file's history, the call log (read back through
`GET /v1/minigate/calls`) and each reply's headers and clock:
- verdicts when the bar was first crossed: the policy's own `gate` / `review` replayed over the logged
  shadow verdicts in order (what the statistics need);
- verdicts at the decision: the agree/n the autopilot's reason states (adds those that came in before
  its next review, every `interval_s`);
- client calls the gateway had answered when the autopilot decided (the history's `at`), and until
  the first reply served the other way (adds the reload).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from minigate.config import promotions_path
from minigate.router.promotions import Change, gate, load_promotions, review
from minigate.router.settings import Policy
from overhead_proc import Server, stop_server
from shadow_fixtures import AGENT_KEY, TASK, gateway_config, write_catalogue, write_config
from shadow_upstream import LabelUpstream
from shadow_verdicts import first_change, first_crossing, reaction_s, shadow_verdicts, stated_verdicts
from tests.support.banking_task import classifier_examples

__all__ = ["PromotionSettings", "Trial", "run_trial", "summarise_trials", "trials_document"]

PROMOTED_RULE = f"promoted:{TASK}"
MEASURE_RULE = "measure"


@dataclass(frozen=True)
class PromotionSettings:
    minigate: Path
    workdir: Path
    accuracy_before: float
    accuracy_after: float
    sample: float  # the rule's shadow sample before promotion
    reverse_sample: float  # conversion.shadow_sample: the frontier's shadow of the promoted task
    min_samples: int
    min_agreement: float
    demote_samples: int
    interval_s: float
    concurrency: int
    per_intent: int  # BANKING77 messages per intent
    max_calls: int  # per phase: a miniature the autopilot never moves stops the trial here

    def policy(self) -> Policy:
        return Policy(min_agreement=self.min_agreement, min_samples=self.min_samples,
                      demote_samples=self.demote_samples, shadow_sample=self.reverse_sample)

    def conversion(self) -> dict[str, Any]:
        return {"auto_promote": True, "auto_demote": True, "interval_s": self.interval_s,
                "min_samples": self.min_samples, "min_agreement": self.min_agreement,
                "demote_samples": self.demote_samples, "shadow_sample": self.reverse_sample}


@dataclass(frozen=True)
class _Reply:
    sent_at: float
    done_at: float
    rule: str
    status: int


@dataclass
class Trial:
    """One seed: promotion, then demotion after the drift (None where it never came within max_calls)."""

    seed: int
    wall_s: float
    promote_bar_verdicts: int | None  # verdicts when the gate first allowed the promotion
    promote_lag_s: float | None  # from that verdict's shadow to the review that promoted
    promote_verdicts: tuple[int, int] | None  # (agree, n) the autopilot promoted on
    calls_to_promotion: int | None  # answered when the autopilot decided
    calls_to_first_miniature_reply: int | None
    demote_bar_verdicts: int | None  # verdicts since the promotion when the review first allowed the demotion
    demote_lag_s: float | None
    demote_verdicts: tuple[int, int] | None
    miniature_calls_to_demotion: int | None  # served by the drifted miniature when the autopilot decided
    miniature_calls: int  # served by the miniature in all, until the frontier served again
    old_rate_verdicts: int | None  # shadows at accuracy_before made after the promotion's `at`
    promote_reason: str | None
    demote_reason: str | None
    errors: int


def _requests(per_intent: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The bench's request bodies, shuffled with the seed, and each message's gold label."""
    train, held_out = classifier_examples(per_intent, seed=seed)
    bodies, gold = [], {}
    for row in train + held_out:
        system, user, answer = row["messages"]
        bodies.append({"model": "gpt-4.1", "messages": [system, user], "max_tokens": 16, "temperature": 0})
        gold[user["content"]] = answer["content"]
    random.Random(seed).shuffle(bodies)
    return bodies, gold


def _cycle(bodies: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    while True:
        yield from bodies


async def _drive(base_url: str, bodies: Iterator[dict[str, Any]], concurrency: int, max_calls: int,
                 finished: Callable[[_Reply], bool]) -> list[_Reply]:
    """Send bodies from `concurrency` clients until a reply is `finished` (or `max_calls` were sent)."""
    replies: list[_Reply] = []
    sent = 0
    stop = False
    headers = {"authorization": f"Bearer {AGENT_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        async def worker() -> None:
            nonlocal sent, stop
            while not stop and sent < max_calls:
                sent += 1
                started = time.time()
                response = await client.post("/v1/chat/completions", json=next(bodies))
                reply = _Reply(started, time.time(), response.headers.get("x-minigate-rule", ""), response.status_code)
                replies.append(reply)
                stop = stop or finished(reply)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return replies


def _serve(settings: PromotionSettings, config: Path, port: int) -> Server:
    """`minigate serve` on `config`, once /readyz answers 200."""
    log = config.with_suffix(".log")
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen([str(settings.minigate), "serve", "--config", str(config), "--log-level", "warning"],
                                   stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=dict(os.environ, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1"),
                                   start_new_session=True)
    server = Server("minigate", process, port, log, 0.0)
    while time.monotonic() - started < 60:
        if process.poll() is not None:
            raise RuntimeError(f"minigate serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                server.startup_s = time.monotonic() - started
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"minigate serve not ready in 60 s: {log.read_text()[-2000:]}")


def _until(replies: list[_Reply], rule: str) -> int | None:
    """Replies up to and including the first one served by `rule`."""
    return next((i + 1 for i, reply in enumerate(replies) if reply.rule == rule), None)


@dataclass(frozen=True)
class _Observed:
    """What one trial saw: the clients' replies, the miniature's answer times, the log's verdicts."""

    replies: list[_Reply]
    miniature_answered: list[float]
    verdicts: list[tuple[float, str]]
    drift_at: float


def _measure_trial(seed: int, wall_s: float, seen: _Observed, history: list[Change], policy: Policy) -> Trial:
    promote, demote = first_change(history, "promote"), first_change(history, "demote")
    miniature = [reply for reply in seen.replies if reply.rule == PROMOTED_RULE]
    promoted_at = promote.at if promote else float("inf")
    promotable = first_crossing(seen.verdicts, 0.0, promoted_at, lambda card: gate(card, policy))
    demotable = first_crossing(seen.verdicts, promoted_at, demote.at if demote else float("inf"),
                                lambda card: review(card, None, policy))
    return Trial(
        seed=seed, wall_s=round(wall_s, 1),
        promote_bar_verdicts=promotable[0] if promotable else None, promote_lag_s=reaction_s(promotable, promote),
        promote_verdicts=stated_verdicts(promote),
        calls_to_promotion=sum(reply.done_at <= promote.at for reply in seen.replies) if promote else None,
        calls_to_first_miniature_reply=_until(seen.replies, PROMOTED_RULE),
        demote_bar_verdicts=demotable[0] if demotable else None, demote_lag_s=reaction_s(demotable, demote),
        demote_verdicts=stated_verdicts(demote),
        miniature_calls_to_demotion=sum(reply.done_at <= demote.at for reply in miniature) if demote else None,
        miniature_calls=len(miniature),
        old_rate_verdicts=sum(promote.at <= t < seen.drift_at for t in seen.miniature_answered) if promote else None,
        promote_reason=promote.reason if promote else None, demote_reason=demote.reason if demote else None,
        errors=sum(reply.status != 200 for reply in seen.replies),
    )


def _back_to_the_frontier() -> Callable[[_Reply], bool]:
    """True at the first reply of the `measure` rule after one from the miniature."""
    served = False

    def finished(reply: _Reply) -> bool:
        nonlocal served
        served = served or reply.rule == PROMOTED_RULE
        return served and reply.rule == MEASURE_RULE

    return finished


def run_trial(settings: PromotionSettings, seed: int, free_port: Callable[[], int]) -> Trial:
    """One seed on a fresh upstream, gateway and call log."""
    workdir = settings.workdir / f"seed-{seed}"
    workdir.mkdir()
    bodies, gold = _requests(settings.per_intent, seed)
    catalogue = write_catalogue(workdir / "tasks.yaml", bodies[0])
    started = time.monotonic()
    with LabelUpstream(gold, frontier="gpt-4.1", miniature="mini", accuracy=settings.accuracy_before,
                       seed=seed) as upstream:
        port = free_port()
        rule = {"name": MEASURE_RULE, "when": {"task": TASK}, "use": "frontier",
                "shadow": {"model": "mini", "sample": settings.sample}}
        config = write_config(workdir / "minigate.yaml", gateway_config(
            port=port, upstream_url=upstream.base_url, frontier_model="gpt-4.1", mini_model="mini",
            catalogue=catalogue, store=f"sqlite:///{workdir}/calls.db", rule=rule,
            conversion=settings.conversion()))
        promotions = promotions_path(config)
        server = _serve(settings, config, port)
        try:
            base_url, stream = f"http://127.0.0.1:{port}", _cycle(bodies)
            replies = asyncio.run(_drive(base_url, stream, settings.concurrency, settings.max_calls,
                                         lambda reply: promotions.exists()))
            drift_at = time.time()
            if promotions.exists():
                upstream.accuracy = settings.accuracy_after
                replies += asyncio.run(_drive(base_url, stream, settings.concurrency, settings.max_calls,
                                              _back_to_the_frontier()))
            seen = _Observed(replies, upstream.miniature_answered, shadow_verdicts(base_url), drift_at)
        finally:
            stop_server(server)
    return _measure_trial(seed, time.monotonic() - started, seen, load_promotions(promotions).history,
                          settings.policy())


def _spread(values: list[int] | list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise_trials(trials: list[Trial]) -> dict[str, Any]:
    """Median and range of each count over the seeds that reached it."""
    def counts(name: str) -> list[int]:
        return [value for trial in trials if isinstance(value := getattr(trial, name), int)]

    def seconds(name: str) -> list[float]:
        return [value for trial in trials if isinstance(value := getattr(trial, name), float)]

    return {
        "promoted": sum(trial.promote_verdicts is not None for trial in trials),
        "demoted": sum(trial.demote_verdicts is not None for trial in trials),
        "trials": len(trials),
        "verdicts_when_promotion_allowed": _spread(counts("promote_bar_verdicts")),
        "promotion_lag_s": _spread(seconds("promote_lag_s")),
        "verdicts_to_promotion": _spread([t.promote_verdicts[1] for t in trials if t.promote_verdicts]),
        "calls_to_promotion": _spread(counts("calls_to_promotion")),
        "calls_to_first_miniature_reply": _spread(counts("calls_to_first_miniature_reply")),
        "verdicts_when_demotion_allowed": _spread(counts("demote_bar_verdicts")),
        "demotion_lag_s": _spread(seconds("demote_lag_s")),
        "verdicts_to_demotion": _spread([t.demote_verdicts[1] for t in trials if t.demote_verdicts]),
        "miniature_calls_to_demotion": _spread(counts("miniature_calls_to_demotion")),
        "miniature_calls": _spread(counts("miniature_calls")),
        "old_rate_verdicts": _spread(counts("old_rate_verdicts")),
        "errors": sum(trial.errors for trial in trials),
    }


def trials_document(trials: list[Trial]) -> list[dict[str, Any]]:
    return [asdict(trial) for trial in trials]
