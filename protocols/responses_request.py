"""A Responses API request (`POST /v1/responses`) as a chat completions request: pure translation, no I/O.

What maps: `input` items become chat messages (message items by role, `developer` as `system`;
`function_call` items an assistant message's `tool_calls`; `function_call_output` items tool messages;
`reasoning` items are dropped, as a chat upstream can't take them back); `instructions` becomes the first
system message; function `tools`, `tool_choice`, `parallel_tool_calls`, `text.format` (`response_format`),
`max_output_tokens` (`max_tokens`), sampling, `top_logprobs` and `reasoning.effort` have direct equivalents.

Fields the gateway handles itself (storage, history, the echo in the reply) are not sent upstream
(`_NOT_SENT`). Refused with a 400 that names the field: OpenAI's built-in tools (they run inside OpenAI's
hosted API, not in a model), items and parts that point into OpenAI's stores (`item_reference`, file ids,
`input_file`), audio, background runs, conversations, prompt templates, and any field this module
doesn't know, rather than answering something other than what the client asked for.

>>> to_chat_body({"model": "m", "input": "Hi", "instructions": "Be brief."})["messages"]
[{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from minigate.errors import InvalidRequest

__all__ = ["input_items", "to_chat_body"]

_TRANSLATED = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "max_output_tokens",
    "temperature", "top_p", "user", "stream", "top_logprobs", "reasoning", "include",
})
# The gateway's business (history, storage, the reply's echo), or hints that change no answer from a chat
# upstream (`max_tool_calls` counts built-in tool calls only, which are refused anyway).
_NOT_SENT = frozenset({
    "metadata", "store", "previous_response_id", "truncation", "service_tier", "prompt_cache_key",
    "safety_identifier", "background", "stream_options", "max_tool_calls", "prompt_cache_retention",
    "prompt_cache_options",
})
_REFUSED = {
    "conversation": "'conversation' is not supported: conversations live in OpenAI's hosted store. Send the earlier "
                    "turns in 'input', or continue a stored response with 'previous_response_id'.",
    "prompt": "'prompt' is not supported: prompt templates live in OpenAI's dashboard. Send the prompt's text as "
              "'instructions' and 'input' instead.",
}
_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "model": (str, "a string"), "instructions": (str, "a string"), "tools": (list, "an array of tools"),
    "parallel_tool_calls": (bool, "a boolean"), "text": (Mapping, "an object"),
    "max_output_tokens": (int, "an integer"), "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"), "user": (str, "a string"), "stream": (bool, "a boolean"),
    "top_logprobs": (int, "an integer"), "reasoning": (Mapping, "an object"), "include": (list, "an array of strings"),
    "metadata": (Mapping, "an object"), "store": (bool, "a boolean"), "previous_response_id": (str, "a string"),
    "background": (bool, "a boolean"), "truncation": (str, "a string"),
}
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}  # part type -> its text field
_MEDIA_HINTS = {
    "input_file": "send the file's content as input_text instead (file ids point into OpenAI's file store)",
    "input_audio": "send a transcript as input_text instead",
}
_LOGPROBS_INCLUDE = "message.output_text.logprobs"


def to_chat_body(body: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A Responses request body as a chat completions request body.

    `history`: input items of earlier turns (from `previous_response_id`: the earlier inputs and outputs,
    as Responses items) that come before `body['input']`. Raises `InvalidRequest` naming the field.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object.")
    given = {key: value for key, value in body.items() if value is not None}
    _refuse_unsupported(given)
    _check_types(given)
    if "model" not in given:
        raise InvalidRequest("'model' is required.", param="model")
    chat: dict[str, Any] = {"model": given["model"], "messages": _messages(given, history)}
    chat.update(_tools(given))
    chat.update(_output_format(given))
    chat.update(_sampling(given))
    return chat


def input_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`body['input']` as a list of items; a string input is one user message item.

    >>> input_items({"input": "Hi"})
    [{'type': 'message', 'role': 'user', 'content': [{'type': 'input_text', 'text': 'Hi'}]}]
    """
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise InvalidRequest("'input' must be a string or an array of items.", param="input")
    return [_item(item, f"input[{index}]") for index, item in enumerate(value)]


def _refuse_unsupported(given: Mapping[str, Any]) -> None:
    for key in given:
        if key in _REFUSED:
            raise InvalidRequest(_REFUSED[key], param=key)
        if key not in _TRANSLATED and key not in _NOT_SENT:
            raise InvalidRequest(f"'{key}' is not supported on translated Responses calls (minigate answers "
                                 "/v1/responses with a chat completions upstream); remove it.", param=key)
    if given.get("background") is True:
        raise InvalidRequest("'background': true is not supported: minigate answers a Responses call while its "
                             "request is open. Leave 'background' out, or send false.", param="background")


def _check_types(given: Mapping[str, Any]) -> None:
    for key, (kinds, noun) in _TYPES.items():
        value = given.get(key)
        is_bool_as_number = isinstance(value, bool) and kinds is not bool
        if value is not None and (not isinstance(value, kinds) or is_bool_as_number):
            raise InvalidRequest(f"'{key}' must be {noun}.", param=key)
    if given.get("max_output_tokens", 1) < 1:
        raise InvalidRequest("'max_output_tokens' must be a positive integer.", param="max_output_tokens")
    if not 0 <= given.get("top_logprobs", 0) <= 20:
        raise InvalidRequest("'top_logprobs' must be between 0 and 20.", param="top_logprobs")
    if not all(isinstance(value, str) for value in given.get("include", [])):
        raise InvalidRequest("'include' must be an array of strings.", param="include")


# -- input --


def _messages(given: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if given.get("instructions"):
        messages.append({"role": "system", "content": given["instructions"]})
    for item in history:
        _add_item(messages, _item(item, "previous_response_id"), "previous_response_id")
    for index, item in enumerate(input_items(given)):
        _add_item(messages, item, f"input[{index}]")
    if not messages:
        raise InvalidRequest("'input' holds no message; send at least one.", param="input")
    return messages


def _item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise InvalidRequest(f"{where} must be an object (an input item).", param=where)
    return dict(item)


def _add_item(messages: list[dict[str, Any]], item: Mapping[str, Any], where: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        messages.append(_message(item, where))
    elif kind == "function_call":
        _add_call(messages, _tool_call(item, where))
    elif kind == "function_call_output":
        messages.append(_tool_output(item, where))
    elif kind != "reasoning":  # reasoning items: the chat upstream has nowhere to take them
        raise InvalidRequest(_unsupported_item(kind, where), param=f"{where}.type")


def _unsupported_item(kind: Any, where: str) -> str:
    if kind == "item_reference":
        return (f"{where}: item_reference items are not supported on translated Responses calls; send the "
                "referenced item itself, or 'previous_response_id' to continue a stored response.")
    if kind in _MEDIA_HINTS:
        return f"{where}: {kind} is not supported on translated Responses calls; {_MEDIA_HINTS[kind]}."
    if isinstance(kind, str) and (kind.endswith(("_call", "_call_output")) or kind.startswith("mcp_")):
        return (f"{where}.type {kind!r} belongs to a built-in tool of OpenAI's hosted Responses API; minigate "
                "serves function tools only (function_call and function_call_output items).")
    return (f"{where}.type {kind!r} is not supported; send message, function_call, function_call_output "
            "or reasoning items.")


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequest(f"{where}.role must be one of user, assistant, system, developer.", param=f"{where}.role")
    # Chat upstreams other than OpenAI's (vLLM, llama.cpp) know no developer role; OpenAI treats both alike.
    chat_role = "system" if role == "developer" else role
    return {"role": chat_role, "content": _content(item.get("content"), f"{where}.content", role == "user")}


def _content(content: Any, where: str, may_hold_images: bool) -> Any:
    """A string stays one; parts become chat parts, a lone text part a plain string (what every upstream takes)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or an array of content parts.", param=where)
    parts = [_part(part, f"{where}[{number}]", may_hold_images) for number, part in enumerate(content)]
    if not parts:
        return ""
    return parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts


def _part(part: Any, where: str, may_hold_images: bool) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind in _TEXT_PARTS:
        field = f"{where}.{_TEXT_PARTS[kind]}"
        text = part.get(_TEXT_PARTS[kind])
        if not isinstance(text, str):
            raise InvalidRequest(f"{field} must be a string.", param=field)
        return {"type": "text", "text": text}
    if kind == "input_image" and may_hold_images:
        return _image(part, where)
    if kind == "input_image":
        raise InvalidRequest(f"{where}: only user messages may carry images on a chat upstream.", param=where)
    if kind in _MEDIA_HINTS:
        raise InvalidRequest(f"{where}: {kind} parts are not supported on translated Responses calls; "
                             f"{_MEDIA_HINTS[kind]}.", param=f"{where}.type")
    raise InvalidRequest(f"{where} must be a content part of type input_text, input_image, output_text or refusal.",
                         param=f"{where}.type")


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str):
        store = " (a file_id points into OpenAI's file store)" if "file_id" in part else ""
        raise InvalidRequest(f"{where}.image_url is required: an http(s) URL or a base64 data URL{store}.",
                             param=f"{where}.image_url")
    image = {"url": url}
    if part.get("detail") in ("low", "high", "auto"):  # chat knows no "original": the upstream's default then
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _tool_call(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise InvalidRequest(f"{where}.{key} must be a string.", param=f"{where}.{key}")
    function = {"name": item["name"], "arguments": item["arguments"]}
    return {"id": item["call_id"], "type": "function", "function": function}


def _add_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """Consecutive calls, and the assistant message right before them, are one chat assistant message."""
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tool_output(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(item.get("call_id"), str):
        raise InvalidRequest(f"{where}.call_id must be a string.", param=f"{where}.call_id")
    content = _content(item.get("output"), f"{where}.output", False)
    return {"role": "tool", "tool_call_id": item["call_id"], "content": content}


# -- tools --


def _tools(given: Mapping[str, Any]) -> dict[str, Any]:
    """Chat tools; tool_choice and parallel_tool_calls only beside tools, where OpenAI's chat API accepts them."""
    tools = [_tool(tool, f"tools[{number}]") for number, tool in enumerate(given.get("tools", []))]
    choice = _tool_choice(given["tool_choice"]) if "tool_choice" in given else None
    if not tools:
        return {}
    chat: dict[str, Any] = {"tools": tools}
    if choice is not None:
        chat["tool_choice"] = choice
    if "parallel_tool_calls" in given:
        chat["parallel_tool_calls"] = given["parallel_tool_calls"]
    return chat


def _tool(tool: Any, where: str) -> dict[str, Any]:
    kind = tool.get("type") if isinstance(tool, Mapping) else None
    if kind != "function":
        raise InvalidRequest(_built_in(f"{where}.type", kind), param=f"{where}.type")
    if not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"{where}.name must be a string.", param=f"{where}.name")
    function = {"name": tool["name"]}
    function.update({key: tool[key] for key in ("description", "parameters", "strict") if tool.get(key) is not None})
    return {"type": "function", "function": function}


def _built_in(where: str, kind: Any) -> str:
    if not isinstance(kind, str):
        return f"{where} is required: minigate serves function tools ({{'type': 'function', 'name': ...}})."
    return (f"{where} {kind!r} is a built-in tool of OpenAI's hosted Responses API, which runs it on OpenAI's "
            "servers; minigate serves function tools only (type 'function'), which your code runs.")


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools":
        raise InvalidRequest("tool_choice 'allowed_tools' is not supported on translated Responses calls; send only "
                             "the allowed tools in 'tools', with tool_choice 'auto' or 'required'.",
                             param="tool_choice")
    if isinstance(kind, str) and kind != "function":
        raise InvalidRequest(_built_in("tool_choice.type", kind), param="tool_choice")
    raise InvalidRequest("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}.",
                         param="tool_choice")


# -- output and sampling --


def _output_format(given: Mapping[str, Any]) -> dict[str, Any]:
    text = given.get("text", {})
    chat: dict[str, Any] = {}
    if text.get("format") is not None:
        chat.update(_response_format(text["format"]))
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    return chat


def _response_format(spec: Any) -> dict[str, Any]:
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise InvalidRequest("text.format.type must be text, json_object or json_schema.", param="text.format.type")
    if not isinstance(spec.get("name"), str):
        raise InvalidRequest("text.format.name is required for a json_schema format.", param="text.format.name")
    if not isinstance(spec.get("schema"), Mapping):
        raise InvalidRequest("text.format.schema must be a JSON schema object.", param="text.format.schema")
    schema = {"name": spec["name"], "schema": spec["schema"]}
    schema.update({key: spec[key] for key in ("strict", "description") if spec.get(key) is not None})
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _sampling(given: Mapping[str, Any]) -> dict[str, Any]:
    chat: dict[str, Any] = {}
    if "max_output_tokens" in given:
        chat["max_tokens"] = given["max_output_tokens"]
    chat.update({key: given[key] for key in ("temperature", "top_p", "user") if key in given})
    if given.get("top_logprobs", 0) > 0:
        chat.update(logprobs=True, top_logprobs=given["top_logprobs"])
    elif _LOGPROBS_INCLUDE in given.get("include", []):
        chat["logprobs"] = True
    effort = given.get("reasoning", {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    if given.get("stream") is True:  # the closing response.completed carries usage, so ask for it
        chat.update(stream=True, stream_options={"include_usage": True})
    return chat
