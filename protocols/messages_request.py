"""An Anthropic Messages API request as a chat completions request, to serve `/v1/messages` from any upstream. Pure.

What maps: `system` becomes the first message; user turns become user messages (text, images), with
their `tool_result` blocks first, as `tool` messages; assistant turns become assistant messages with
`tool_calls` for their `tool_use` blocks; `tools`, `tool_choice` (with `disable_parallel_tool_use`),
`max_tokens`, `temperature`, `top_p`, `stop_sequences`, `stream`, `metadata.user_id` and
`output_config.format` have direct equivalents.

Hints that change no answer are dropped (`_IGNORED`, and `cache_control` on blocks and tools); what a
chat upstream can't honour is accepted only absent or at its neutral value (`_NEUTRAL`: `top_k`,
`thinking`, ...); server tools, documents and anything unknown are refused with a 400 that names the
field, rather than quietly answering a different question than the client asked.

>>> to_chat_body({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
{'model': 'm', 'messages': [{'role': 'user', 'content': 'Hi'}], 'max_tokens': 8}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from minigate.errors import InvalidRequest

__all__ = ["to_chat_body"]

_TRANSLATED = frozenset({
    "model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences", "stream", "metadata",
    "tools", "tool_choice", "output_config",
})
# Prompt caching, capacity and speed preferences, cache-miss diagnostics: none changes the answer.
_IGNORED = frozenset({"cache_control", "service_tier", "speed", "diagnostics"})
# Chat upstreams can't honour these: accepted only absent (null) or at the value that asks for nothing.
_NEUTRAL: dict[str, Any] = {"top_k": None, "thinking": {"type": "disabled"}, "container": None, "inference_geo": None}
_TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "strict", "cache_control",
                        "eager_input_streaming"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def to_chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request body as a chat completions body; raises `InvalidRequest` (400, naming the
    field) for what can't be served."""
    given = {key: value for key, value in body.items() if value is not None}
    _refuse_unservable(given)
    if not isinstance(given.get("model"), str):
        raise InvalidRequest("model: Field required (a string).", param="model")
    chat: dict[str, Any] = {"model": given["model"], "messages": _system(given.get("system"))}
    chat["messages"] += _conversation(given.get("messages"))
    chat["max_tokens"] = _max_tokens(given)
    chat.update(_sampling(given))
    chat.update(_tools(given))
    chat.update(_output_config(given.get("output_config")))
    user = _user_id(given.get("metadata"))
    if user is not None:
        chat["user"] = user
    if given.get("stream") is True:
        # The usage chunk is the only place a chat stream tells the input tokens message_delta reports.
        chat["stream"], chat["stream_options"] = True, {"include_usage": True}
    return chat


def _refuse_unservable(body: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key in _TRANSLATED or key in _IGNORED:
            continue
        if key not in _NEUTRAL:
            raise InvalidRequest(f"{key}: unknown parameter; minigate's Messages API does not take it.", param=key)
        if value != _NEUTRAL[key]:
            neutral = "" if _NEUTRAL[key] is None else f" or send {orjson.dumps(_NEUTRAL[key]).decode()}"
            raise InvalidRequest(f"{key}: not supported here, as the model behind this route speaks chat completions, "
                                 f"which has no equivalent; remove it{neutral}.", param=key)


def _max_tokens(body: Mapping[str, Any]) -> int:
    value = body.get("max_tokens")
    if value is None:
        raise InvalidRequest("max_tokens: Field required.", param="max_tokens")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest("max_tokens: must be a positive integer.", param="max_tokens")
    return value


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    sampling: dict[str, Any] = {}
    for key, high in (("temperature", 1), ("top_p", 1)):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= high:
            raise InvalidRequest(f"{key}: must be a number between 0 and {high}.", param=key)
        sampling[key] = value
    stop = body.get("stop_sequences")
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise InvalidRequest("stop_sequences: must be an array of strings.", param="stop_sequences")
    if stop:
        sampling["stop"] = stop
    return sampling


def _user_id(metadata: Any) -> str | None:
    if metadata is None:
        return None
    extra = set(metadata) - {"user_id"} if isinstance(metadata, Mapping) else {""}
    user = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    if extra or not isinstance(user, str | None):
        raise InvalidRequest("metadata: must be {user_id: string}.", param="metadata")
    return user


def _output_config(config: Any) -> dict[str, Any]:
    """Structured outputs: Anthropic's `output_config.format` is chat's strict `json_schema` response format."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise InvalidRequest("output_config: must be an object.", param="output_config")
    for key, value in config.items():
        if key != "format" and value is not None:
            raise InvalidRequest(f"output_config.{key}: not supported here, as the model behind this route speaks "
                                 "chat completions; remove it.", param=f"output_config.{key}")
    spec = config.get("format")
    if spec is None:
        return {}
    schema = spec.get("schema") if isinstance(spec, Mapping) and spec.get("type") == "json_schema" else None
    if not isinstance(schema, Mapping):
        raise InvalidRequest("output_config.format: must be {type: json_schema, schema: {...}}.",
                             param="output_config.format")
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": schema,
                                                                         "strict": True}}}


# -- tools --


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be an array.", param="tools")
    translated: dict[str, Any] = {}
    if tools:
        translated["tools"] = [_tool(tool, f"tools[{number}]") for number, tool in enumerate(tools)]
    translated.update(_tool_choice(body.get("tool_choice"), has_tools=bool(tools)))
    return translated


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping):
        raise InvalidRequest(f"{where}: must be an object.", param=where)
    if tool.get("type") not in (None, "custom"):  # web_search_20250305, bash_20250124, text_editor_..., ...
        raise InvalidRequest(f"{where}.type: {tool.get('type')!r} is an Anthropic server tool, which the model "
                             "behind this route can't run; offer it as a custom tool with an input_schema.",
                             param=f"{where}.type")
    for key in tool:
        if key not in _TOOL_KEYS:
            raise InvalidRequest(f"{where}.{key}: not supported here; remove it.", param=f"{where}.{key}")
    name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
    if not isinstance(name, str) or not isinstance(schema, Mapping):
        raise InvalidRequest(f"{where}: a tool needs a name and an input_schema.", param=where)
    function: dict[str, Any] = {"name": name}
    if isinstance(description, str):
        function["description"] = description
    function["parameters"] = schema
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, *, has_tools: bool) -> dict[str, Any]:
    if choice is None:
        return {}
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    name = choice.get("name") if isinstance(choice, Mapping) else None
    if kind not in ("auto", "any", "tool", "none") or (kind == "tool" and not isinstance(name, str)):
        raise InvalidRequest("tool_choice: must be {type: auto | any | none} or {type: tool, name}.",
                             param="tool_choice")
    if not has_tools:
        if kind in ("auto", "none"):
            return {}
        raise InvalidRequest("tool_choice: asks for a tool call but no tools are given.", param="tool_choice")
    translated: dict[str, Any] = {
        "tool_choice": {"type": "function", "function": {"name": name}} if kind == "tool" else _CHOICES[kind]}
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        translated["parallel_tool_calls"] = False
    return translated


# -- messages --


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    text = _joined([block["text"] for block in _blocks(system, "system") if _is_text(block, "system")])
    return [{"role": "system", "content": text}] if text else []


def _conversation(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty array of messages.", param="messages")
    chat: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, Mapping) else None
        if role == "user":
            chat += _user(message.get("content"), where)
        elif role == "assistant":
            chat += _assistant(message.get("content"), where)
        else:
            raise InvalidRequest(f"{where}.role: must be user or assistant (the system prompt is `system`).",
                                 param=f"{where}.role")
    return chat


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """The turn's tool results as `tool` messages, then the rest of it as one user message."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for number, block in enumerate(_blocks(content, f"{where}.content")):
        here = f"{where}.content[{number}]"
        if block["type"] == "tool_result":
            result, images = _tool_result(block, here)
            results.append(result)
            parts += images
        elif block["type"] == "image":
            parts.append(_image(block, here))
        elif _is_text(block, here) and block["text"]:
            parts.append({"type": "text", "text": block["text"]})
    if not parts:
        return results
    is_text = all(part["type"] == "text" for part in parts)
    return [*results, {"role": "user", "content": _joined([p["text"] for p in parts]) if is_text else parts}]


def _assistant(content: Any, where: str) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for number, block in enumerate(_blocks(content, f"{where}.content")):
        here = f"{where}.content[{number}]"
        if block["type"] == "tool_use":
            calls.append(_tool_call(block, here))
        elif block["type"] in ("thinking", "redacted_thinking"):
            continue  # an earlier turn's thinking: Anthropic leaves it out of the context too
        elif _is_text(block, here):
            texts.append(block["text"])
    text = _joined(texts)
    if not text and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: must be a string or an array of content blocks.", param=where)
    for number, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            here = f"{where}[{number}]"
            raise InvalidRequest(f"{here}: must be a content block with a type.", param=here)
    return content


def _is_text(block: Mapping[str, Any], where: str) -> bool:
    """True for a text block (citations and cache_control left behind); refuses every type not handled before."""
    kind = block["type"]
    if kind == "text" and isinstance(block.get("text"), str):
        return True
    if kind == "document":
        problem = "document blocks are not supported here: chat completions upstreams take text and images only"
    elif kind.startswith(("server_tool_use", "web_", "code_execution", "bash_", "text_editor_", "tool_search")):
        problem = f"{kind} blocks come from Anthropic's server tools, which the model behind this route can't run"
    else:
        problem = f"a {kind} block is not supported here" if kind != "text" else "a text block needs its text"
    raise InvalidRequest(f"{where}: {problem}.", param=where)


def _joined(texts: list[str]) -> str:
    return "\n".join(text for text in texts if text)


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind == "url" and isinstance(source, Mapping) and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    if (kind == "base64" and isinstance(source, Mapping) and source.get("media_type") in _IMAGE_TYPES
            and isinstance(source.get("data"), str)):
        return {"type": "image_url", "image_url": {"url": f"data:{source['media_type']};base64,{source['data']}"}}
    raise InvalidRequest(f"{where}.source: must be {{type: url, url}} or {{type: base64, media_type, data}} "
                         "of a JPEG, PNG, GIF or WebP image (Files API images are not supported here).",
                         param=f"{where}.source")


def _tool_call(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id, name, tool_input = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(tool_input, Mapping):
        raise InvalidRequest(f"{where}: a tool_use block needs an id, a name and an input object.", param=where)
    arguments = orjson.dumps(tool_input).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_result(block: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The `tool` message, and the result's images: a tool message holds text only, so they join the user message."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"{where}.tool_use_id: Field required.", param=f"{where}.tool_use_id")
    content = block.get("content")
    blocks = [] if content is None else _blocks(content, f"{where}.content")
    images = [_image(b, f"{where}.content[{n}]") for n, b in enumerate(blocks) if b["type"] == "image"]
    text = _joined([b["text"] for n, b in enumerate(blocks)
                    if b["type"] != "image" and _is_text(b, f"{where}.content[{n}]")])
    if block.get("is_error") is True:  # chat has no error flag: say so in words, as the model must know
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images
