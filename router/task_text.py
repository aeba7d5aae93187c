"""What of a request the task embedder reads: the user's content, and the step's context.

A task is what the caller asks for (the last user turn) in the setting the agent step gives it (its
system prompt, tools and response format). Discovery embeds both and clusters on their blend: the
same question under two different instructions is two tasks, and two wordings of one instruction are
one. Both texts are cut to what MiniLM reads anyway (256 word pieces, about 1,000 characters).

>>> body = {"messages": [{"role": "system", "content": "Classify the ticket."},
...                      {"role": "user", "content": "My card never arrived"}]}
>>> content_text(body), context_text(body)
('My card never arrived', 'Classify the ticket.')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from minigate.router.signature import mask, message_text, system_prompt, tool_names

__all__ = ["content_text", "context_text"]

_HEAD_CHARS = 700
_TAIL_CHARS = 300  # a long turn often ends with the actual request, after pasted material


def content_text(body: Mapping[str, Any]) -> str:
    """The last user turn's text, its head and tail when long; "" when there is none."""
    messages = body.get("messages")
    turns = [message for message in messages if isinstance(message, dict) and message.get("role") == "user"] \
        if isinstance(messages, list) else []
    text = " ".join(message_text(turns[-1].get("content")).split()) if turns else ""
    if len(text) <= _HEAD_CHARS + _TAIL_CHARS:
        return text
    return f"{text[:_HEAD_CHARS]} … {text[-_TAIL_CHARS:]}"


def context_text(body: Mapping[str, Any]) -> str:
    """The step's setting: offered tools, response format name, then the masked system prompt's head."""
    parts = []
    tools = tool_names(body)
    if tools:
        parts.append("tools: " + ", ".join(tools) + ".")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        schema = response_format.get("json_schema")
        name = schema.get("name") if isinstance(schema, dict) else None
        parts.append(f"format: {name or response_format.get('type')}.")
    system = " ".join(mask(system_prompt(body)).split())
    if system:
        parts.append(system[:_HEAD_CHARS + _TAIL_CHARS])
    return " ".join(parts)

