"""Chat completions replies as Responses API `response` objects. Pure.

The chat message becomes output items in OpenAI's order: one assistant `message` item (its text as an
`output_text` part, a `refusal` part beside it when the chat message carries one), then one `function_call`
item per tool call, whose `call_id` is the chat tool call's id. `finish_reason` "length" or
"content_filter" makes the response `incomplete`, with the reason, and its last item with it. Usage is
renamed (`prompt_tokens` -> `input_tokens`, ...). The request's parameters are echoed with OpenAI's
defaults, as OpenAI does. Item ids derive from the response id, so the same reply has the same ids.

>>> completion = {"model": "m", "choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}]}
>>> reply = to_response(completion, {"input": "Hello"}, response_id="resp_1", created_at=0)
>>> reply["status"], reply["output"][0]["id"], reply["output"][0]["content"][0]["text"]
('completed', 'msg_1_0', 'Hi')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["finish_status", "item_id", "new_response", "output_logprobs", "response_usage", "text_part", "to_response"]


def to_response(
    completion: Mapping[str, Any], request: Mapping[str, Any], *, response_id: str, created_at: int
) -> dict[str, Any]:
    """A parsed `chat.completion` body as a Responses `response` object answering `request`."""
    choices = completion.get("choices")
    choice = _mapping(choices[0] if isinstance(choices, list) and choices else None)
    message = _mapping(choice.get("message"))
    output = _output(message, output_logprobs(choice.get("logprobs")), response_id)
    status, details = finish_status(choice.get("finish_reason"))
    if status == "incomplete":
        output[-1]["status"] = "incomplete"
    model = completion.get("model") or request.get("model")
    response = new_response(request, response_id=response_id, created_at=created_at, model=model)
    usage = response_usage(completion.get("usage"))
    response.update(status=status, incomplete_details=details, output=output, usage=usage)
    return response


def new_response(request: Mapping[str, Any], *, response_id: str, created_at: int, model: Any) -> dict[str, Any]:
    """The response object before any output: status `in_progress`, the request's parameters echoed."""
    text, reasoning = _mapping(request.get("text")), _mapping(request.get("reasoning"))

    def given(key: str, default: Any) -> Any:
        value = request.get(key)
        return default if value is None else value

    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"), "max_tool_calls": request.get("max_tool_calls"),
        "model": model, "output": [], "parallel_tool_calls": given("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.get("safety_identifier"), "service_tier": "default",
        "store": given("store", True), "temperature": given("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": given("tool_choice", "auto"), "tools": [_echo_tool(tool) for tool in given("tools", [])],
        "top_logprobs": given("top_logprobs", 0), "top_p": given("top_p", 1.0),
        "truncation": given("truncation", "disabled"), "usage": None, "user": request.get("user"),
        "metadata": given("metadata", {}),
    }


def item_id(response_id: str, prefix: str, output_index: int) -> str:
    """The id of the output item at `output_index`: `msg_…` for messages, `fc_…` for function calls.

    >>> item_id("resp_abc", "fc", 2)
    'fc_abc_2'
    """
    return f"{prefix}_{response_id.removeprefix('resp_')}_{output_index}"


def finish_status(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """The response's status and `incomplete_details` for a chat `finish_reason`."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Responses usage from chat usage.

    >>> response_usage({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})["input_tokens_details"]
    {'cached_tokens': 0, 'cache_write_tokens': 0}
    """
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    total = usage.get("total_tokens")
    prompt_details, completion_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    return {
        "input_tokens": prompt,
        # cache_write_tokens: the openai SDK (2.5x) requires it; chat upstreams rarely report it.
        "input_tokens_details": {"cached_tokens": _count(prompt_details, "cached_tokens"),
                                 "cache_write_tokens": _count(prompt_details, "cache_write_tokens")},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _count(completion_details, "reasoning_tokens")},
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }


def output_logprobs(logprobs: Any) -> list[dict[str, Any]]:
    """A chat choice's `logprobs` (`{"content": [...]}`) as the logprobs of an `output_text` part."""
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        return []
    entries = [entry for entry in content if isinstance(entry, Mapping)]
    return [{**_token(entry), "top_logprobs": [_token(top) for top in entry.get("top_logprobs") or []]}
            for entry in entries]


def text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    """An `output_text` content part."""
    return {"type": "output_text", "annotations": [], "logprobs": logprobs, "text": text}


def _output(message: Mapping[str, Any], logprobs: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """Output items; always at least one (an empty message when the chat reply said nothing)."""
    content, refusal = message.get("content"), message.get("refusal")
    calls = [call for call in message.get("tool_calls") or [] if isinstance(call, Mapping)]
    text = content if isinstance(content, str) else ""
    parts = [text_part(text, logprobs)] if text or not (calls or refusal) else []
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    items: list[dict[str, Any]] = []
    if parts:
        items.append({"id": item_id(response_id, "msg", 0), "type": "message", "status": "completed",
                      "content": parts, "role": "assistant"})
    for call in calls:
        function = _mapping(call.get("function"))
        index = len(items)
        items.append({"id": item_id(response_id, "fc", index), "type": "function_call", "status": "completed",
                      "arguments": function.get("arguments") or "",
                      "call_id": call.get("id") or item_id(response_id, "call", index),
                      "name": function.get("name") or ""})
    return items


def _echo_tool(tool: Any) -> Any:
    if not isinstance(tool, Mapping):
        return tool
    return {"type": "function", "description": None, "parameters": None, "strict": None, **tool}


def _token(entry: Mapping[str, Any]) -> dict[str, Any]:
    token = entry["token"] if isinstance(entry.get("token"), str) else ""
    raw = entry.get("bytes")
    return {"token": token, "bytes": raw if isinstance(raw, list) else list(token.encode()),
            "logprob": entry.get("logprob")}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(counts: Any, name: str) -> int:
    value = counts.get(name) if isinstance(counts, Mapping) else None
    return value if isinstance(value, int) else 0
