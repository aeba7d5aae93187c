"""The agent's side of the run: its calls sent through minigate with the openai SDK, a few at a time.

Each call goes as the agent would send it (streamed or not) and comes back as an `Outcome`: the reply the
agent got, and what minigate's response headers say about it (which model answered, which task it was
matched to, the request id that finds it in the call log).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agent import Turn
from openai import APIError, OpenAI

__all__ = ["Outcome", "send"]

AGENTS = 4  # calls in flight at once: a few agent workers sharing one gateway


@dataclass(frozen=True, slots=True)
class Outcome:
    """One call as the agent saw it."""

    turn: Turn
    request_id: str | None
    model: str | None  # x-minigate-model: the model entry that answered
    tier: str | None
    task: str | None  # x-minigate-task: the catalogue task minigate matched, if any
    content: str | None
    tool_calls: list[dict[str, Any]]
    error: str | None = None

    @property
    def on_miniature(self) -> bool:
        return self.tier == "miniature"


def send(base_url: str, turns: Sequence[Turn], progress: Callable[[int], object] = lambda n: None) -> list[Outcome]:
    """Every turn through the gateway, `AGENTS` at a time; outcomes in the turns' order."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)

    def one(turn: Turn) -> Outcome:
        try:
            outcome = _streamed(client, turn) if turn.stream else _whole(client, turn)
        except APIError as exc:
            outcome = Outcome(turn, None, None, None, None, None, [], error=f"{type(exc).__name__}: {exc}")
        progress(1)
        return outcome

    with ThreadPoolExecutor(AGENTS) as pool:
        return list(pool.map(one, turns))


def _whole(client: OpenAI, turn: Turn) -> Outcome:
    raw = client.chat.completions.with_raw_response.create(**turn.request)
    message = raw.parse().choices[0].message
    calls = [{"name": call.function.name, "arguments": call.function.arguments}
             for call in message.tool_calls or [] if call.type == "function"]
    return _outcome(turn, raw.headers, message.content, calls)


def _streamed(client: OpenAI, turn: Turn) -> Outcome:
    raw = client.chat.completions.with_raw_response.create(**turn.request, stream=True)
    pieces: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for chunk in raw.parse():
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    return _outcome(turn, raw.headers, "".join(pieces) if pieces else None, [calls[i] for i in sorted(calls)])


def _outcome(turn: Turn, headers: Any, content: str | None, calls: list[dict[str, Any]]) -> Outcome:
    return Outcome(turn, headers.get("x-minigate-request-id"), headers.get("x-minigate-model"),
                   headers.get("x-minigate-tier"), headers.get("x-minigate-task"), content,
                   [{"id": f"call_{n}", "type": "function", "function": call} for n, call in enumerate(calls)])
