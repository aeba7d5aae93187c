"""What an escalation threw away: the miniature's reply that failed its checks, in tokens.

The miniature's upstream bills that reply (or its GPU spent the time) although the client never sees
it, so the escalated call's cost includes it (`minigate.logger.seal.sealer`). Its tokens come from the
reply's own usage; a stream cut short by its checks has none yet, so its held text is estimated
(`router.features.estimate_tokens`), and its prompt is left for the writer to take from the served
call's usage, since both models read the same messages. Parsed only on an escalation, never on a
relayed call's way.

>>> wasted_reply("mini", b'{"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 7}}')
Wasted(model='mini', input_tokens=30, output_tokens=7)
>>> wasted_stream("mini", [b'data: {"choices": [{"delta": {"content": "Hello there"}}]}\\n\\n'])
Wasted(model='mini', input_tokens=None, output_tokens=2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minigate.logger.payloads import Reply, reply_from_body, reply_from_stream
from minigate.router.features import estimate_tokens, extract_features

__all__ = ["Wasted", "abandoned_stream", "wasted_reply", "wasted_stream"]


@dataclass(frozen=True, slots=True)
class Wasted:
    """A discarded miniature reply: the model entry that wrote it (its price) and its tokens."""

    model: str
    input_tokens: int | None  # None: its usage didn't say (the served call's prompt stands in)
    output_tokens: int


def wasted_reply(model: str, body: bytes) -> Wasted:
    """A whole non-streamed reply, as the cascade read it."""
    return _wasted(model, reply_from_body(body))


def wasted_stream(model: str, held: Sequence[bytes]) -> Wasted:
    """The chunks a stream's checks held before they failed it: the stream stopped there."""
    return _wasted(model, reply_from_stream(list(held)))


def abandoned_stream(chunks: Sequence[bytes], body: Mapping[str, Any]) -> tuple[int, int]:
    """The tokens of a stream whose client left: the upstream generated (and bills) them all the same.
    Its usage chunk never came, so the prompt is estimated from the request and the output from what was
    relayed (`_wasted`'s way)."""
    wasted = _wasted("", reply_from_stream(list(chunks)))
    prompt = wasted.input_tokens if wasted.input_tokens is not None else extract_features(body).prompt_tokens
    return prompt, wasted.output_tokens


def _wasted(model: str, reply: Reply) -> Wasted:
    input_tokens, output_tokens = reply.tokens
    if output_tokens is None:
        output_tokens = estimate_tokens(" ".join(_texts(reply.choices)))
    return Wasted(model, input_tokens, output_tokens)


def _texts(choices: list[dict[str, Any]]) -> list[str]:
    """What the model wrote: each choice's content, tool names and arguments."""
    texts = []
    for choice in choices:
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            texts.append(message["content"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts += [part for part in (function.get("name"), function.get("arguments")) if isinstance(part, str)]
    return texts
