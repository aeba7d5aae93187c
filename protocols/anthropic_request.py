"""An OpenAI chat completions request as an Anthropic Messages API request: pure translation, no I/O.

What maps: system and developer messages become the top-level `system`; user, assistant and tool
messages become user/assistant turns of content blocks (text, images, `tool_use`, `tool_result`);
`tools`, `tool_choice`, `parallel_tool_calls`, `max_completion_tokens`/`max_tokens`, `temperature`,
`top_p`, `stop` and `user` have direct equivalents. A JSON `response_format` has none: it becomes a
forced "answer tool" (see `anthropic_tools`).

Parameters Anthropic has no use for and that change no answer are dropped (`_IGNORED`); parameters
that would change the answer are accepted only at their neutral value (`_NEUTRAL`: `n: 1`,
`logprobs: false`, ...); anything else is refused with a 400 that names it, rather than silently
giving a different answer than the client asked for.

>>> to_messages_request({"model": "claude-x", "messages": [{"role": "user", "content": "Hi"}]}).body
{'model': 'claude-x', 'max_tokens': 4096, 'messages': [{'role': 'user', 'content': [{'type': 'text', 'text': 'Hi'}]}]}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from minigate.errors import InvalidRequest
from minigate.protocols.anthropic_tools import Answer, translate_tools

__all__ = ["DEFAULT_MAX_TOKENS", "MessagesRequest", "to_messages_request"]

# Anthropic requires max_tokens; OpenAI clients usually leave it out. 4096 is the largest output every
# Claude model accepts (Claude 3 Haiku's ceiling), so the default never makes a request fail.
DEFAULT_MAX_TOKENS = 4096

_TRANSLATED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
    "stream_options", "tools", "tool_choice", "parallel_tool_calls", "response_format", "user",
})
# Hints with no Anthropic counterpart whose absence changes no answer.
_IGNORED = frozenset({
    "store", "metadata", "seed", "service_tier", "prompt_cache_key", "safety_identifier", "prediction",
})
# No Anthropic counterpart, and any other value would change the answer: accepted only at these values.
_NEUTRAL: dict[str, Any] = {
    "n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "top_logprobs": 0,
    "logit_bias": {}, "modalities": ["text"],
}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"data:([\w/+.-]+);base64,(.*)", re.DOTALL)


@dataclass(frozen=True)
class MessagesRequest:
    """The Anthropic request, and what translating its reply back needs to know about the original."""

    body: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    answer: Answer | None = None


def to_messages_request(request: Mapping[str, Any]) -> MessagesRequest:
    """Translate; raises `InvalidRequest` (400, naming the parameter) for what Anthropic can't do."""
    given = {key: value for key, value in request.items() if value is not None}
    _refuse_untranslatable(given)
    system, turns = _conversation(given.get("messages"))
    body: dict[str, Any] = {"model": given.get("model"), "max_tokens": _max_tokens(given)}
    if system:
        body["system"] = system
    body["messages"] = turns
    body.update(_sampling(given))
    tools, answer = translate_tools(given)
    body.update(tools)
    if isinstance(given.get("user"), str):
        body["metadata"] = {"user_id": given["user"]}
    stream = given.get("stream") is True
    if stream:
        body["stream"] = True
    options = given.get("stream_options")
    include_usage = stream and isinstance(options, Mapping) and options.get("include_usage") is True
    return MessagesRequest(body, stream, include_usage, answer)


def _refuse_untranslatable(request: Mapping[str, Any]) -> None:
    for key, value in request.items():
        if key in _TRANSLATED or key in _IGNORED:
            continue
        if key == "n" and value != 1:
            raise InvalidRequest("n > 1 is not supported by Anthropic upstreams (one choice per request); "
                                 "send separate requests instead.", param="n")
        if key not in _NEUTRAL:
            raise InvalidRequest(f"The parameter {key!r} is not supported by Anthropic upstreams; remove it.",
                                 param=key)
        if value != _NEUTRAL[key]:
            raise InvalidRequest(f"{key}={orjson.dumps(value).decode()} has no equivalent in Anthropic's Messages API; "
                                 f"remove it or send {orjson.dumps(_NEUTRAL[key]).decode()}.", param=key)


def _max_tokens(request: Mapping[str, Any]) -> int:
    key = "max_completion_tokens" if "max_completion_tokens" in request else "max_tokens"
    value = request.get(key, DEFAULT_MAX_TOKENS)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{key} must be a positive integer.", param=key)
    return value


def _sampling(request: Mapping[str, Any]) -> dict[str, Any]:
    sampling: dict[str, Any] = {}
    temperature = request.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
            raise InvalidRequest("temperature must be between 0 and 1 for Anthropic models (OpenAI's goes to 2).",
                                 param="temperature")
        sampling["temperature"] = temperature
    if "top_p" in request:
        sampling["top_p"] = request["top_p"]
    stop = request.get("stop")
    if isinstance(stop, str):
        sampling["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        sampling["stop_sequences"] = stop
    return sampling


# -- messages --


def _conversation(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks, and the turns: consecutive messages of one role merge, as Anthropic wants turns to alternate."""
    if not isinstance(messages, list):
        raise InvalidRequest("messages must be an array of chat messages.", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"{where} must be an object.", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            system += _text_blocks(message.get("content"), where)
            continue
        role, blocks = _turn(role, message, where)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidRequest("messages holds no user or assistant message; Anthropic needs at least one.",
                             param="messages")
    for turn in turns:  # tool results must open their user turn
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _turn(role: Any, message: Mapping[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    if role == "user":
        return "user", _user_blocks(message.get("content"), where)
    if role == "assistant":
        return "assistant", _text_blocks(message.get("content"), where) + _tool_uses(message.get("tool_calls"), where)
    if role == "tool":
        return "user", [_tool_result(message, where)]
    raise InvalidRequest(f"{where}.role {role!r} is not supported by Anthropic upstreams; "
                         "use system, developer, user, assistant or tool.", param=f"{where}.role")


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Text content (a string or text/refusal parts) as text blocks; Anthropic refuses empty ones, so none are made."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or an array of parts.", param=f"{where}.content")
    texts = [_part_text(part, f"{where}.content[{number}]") for number, part in enumerate(content)]
    return [{"type": "text", "text": text} for text in texts if text]


def _part_text(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, Mapping) else None
    text = part.get(kind) if kind in ("text", "refusal") else None
    if not isinstance(text, str):
        raise InvalidRequest(f"{where} must be a text part here.", param=where)
    return text


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(content, where)
    blocks = []
    for number, part in enumerate(content):
        here = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "image_url":
            blocks.append(_image(part.get("image_url"), here))
        elif kind in ("input_audio", "file"):
            raise InvalidRequest(f"{here}: {kind} parts are not translated for Anthropic upstreams; "
                                 "send text and images only.", param=here)
        elif text := _part_text(part, here):
            blocks.append({"type": "text", "text": text})
    return blocks


def _image(spec: Any, where: str) -> dict[str, Any]:
    url = spec.get("url") if isinstance(spec, Mapping) else spec
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    data = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if data is None or data.group(1) not in _IMAGE_TYPES:
        raise InvalidRequest(f"{where}.image_url.url must be an http(s) URL or a base64 data URL of a JPEG, PNG, GIF "
                             "or WebP image.", param=f"{where}.image_url")
    return {"type": "image", "source": {"type": "base64", "media_type": data.group(1), "data": data.group(2)}}


def _tool_uses(calls: Any, where: str) -> list[dict[str, Any]]:
    blocks = []
    for number, call in enumerate(calls or []):
        here = f"{where}.tool_calls[{number}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(call.get("id"), str):
            raise InvalidRequest(f"{here} must be a function call with an id.", param=here)
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{here}.function.arguments must be a JSON object (Anthropic's tool input).",
                                 param=f"{here}.function.arguments")
        blocks.append({"type": "tool_use", "id": call["id"], "name": function.get("name"), "input": arguments})
    return blocks


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"{where}.tool_call_id is required for tool messages.", param=f"{where}.tool_call_id")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = _text_blocks(message.get("content"), where)
    if content:
        result["content"] = content
    return result
