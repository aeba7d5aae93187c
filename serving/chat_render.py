"""How a miniature sees a conversation: SmolLM2's ChatML, extended to tools and tool calls.

SmolLM2-135M-Instruct's chat template renders `role` and `content` only: it drops the offered tools,
and an assistant turn that called a tool (content null) makes it fail. A miniature for a tool step
must see both, and must see them the same way when `minigate finetune` trains it and when the local
llama.cpp child serves it — so both render through this one function instead of the GGUF's template.
It imports only the standard library: the child, which need not have minigate installed, loads it by path.

For a conversation without tools it writes exactly what SmolLM2's template writes (the tests compare
the two), so the base model is served as before. Tools are listed in the system turn, one JSON
object a line inside `<tools>`, and a call is written as `<tool_call>{"name", "arguments"}</tool_call>`
(the Hermes convention many small models learned); a tool's result is a `tool` turn.

>>> render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True)
'<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
>>> tool_calls_in_text('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
[('f', {'x': 1})]
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_SYSTEM", "END_OF_TURN", "render_chat", "tool_calls_in_text"]

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
END_OF_TURN = "<|im_end|>"
_TOOLS_INTRO = ("\n\nYou may call one or more functions to answer. Their signatures, one a line:\n<tools>\n{tools}\n"
                "</tools>\nTo call one, reply with <tool_call>{{\"name\": <name>, \"arguments\": <arguments "
                "object>}}</tool_call>")
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def render_chat(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None, *,
                add_generation_prompt: bool = False) -> str:
    """The prompt text of `messages` (OpenAI chat messages), with `tools` (OpenAI tool definitions) offered."""
    listed = _tools_text(tools)
    parts = []
    if not messages or messages[0].get("role") != "system":
        parts.append(_turn("system", DEFAULT_SYSTEM + listed))
    for index, message in enumerate(messages):
        role = str(message.get("role"))
        text = _content(message.get("content"))
        if role == "system" and index == 0:
            text += listed
        elif role == "assistant":
            text += "".join(_call_text(call) for call in message.get("tool_calls") or [])
        parts.append(_turn(role, text))
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def tool_calls_in_text(text: str) -> list[tuple[str, Any]] | None:
    """(name, arguments) of each `<tool_call>` a reply holds; None when it holds none, or one that doesn't parse."""
    blocks = _TOOL_CALL.findall(text)
    if not blocks:
        return None
    calls = []
    for block in blocks:
        try:
            value = json.loads(block)
        except ValueError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        calls.append((value["name"], value.get("arguments", {})))
    return calls


def _turn(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}{END_OF_TURN}\n"


def _content(content: Any) -> str:
    """Text content as is; content parts joined (text parts only: a miniature reads no images)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


def _tools_text(tools: Sequence[dict[str, Any]] | None) -> str:
    if not tools:
        return ""
    lines = [_json(tool.get("function", tool)) for tool in tools]
    return _TOOLS_INTRO.format(tools="\n".join(lines))


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # written as the teacher sent it
    return "<tool_call>" + _json({"name": function.get("name"), "arguments": arguments}) + "</tool_call>"


def _json(value: Any) -> str:
    """JSON as the Hermes convention writes it (`", "` and `": "`), unicode kept."""
    return json.dumps(value, ensure_ascii=False)
