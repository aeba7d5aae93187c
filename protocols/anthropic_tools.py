"""OpenAI tools, tool_choice and JSON response formats as Anthropic tools. Pure.

Function tools map one to one (`parameters` becomes `input_schema`; `strict` has no counterpart and
is dropped). A JSON `response_format` has no Anthropic equivalent, so it becomes an *answer tool*
whose `input_schema` is the schema, forced with `tool_choice`: the model "calls" it with the answer
as its input, and the reply's translation returns that input as the message content. This works on
every Claude model, unlike Anthropic's newer native structured outputs.

>>> translate_tools({"response_format": {"type": "json_object"}})[0]["tool_choice"]
{'type': 'tool', 'name': 'json_answer'}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from minigate.errors import InvalidRequest

__all__ = ["Answer", "translate_tools"]

_ANSWER_TOOL = "json_answer"  # the answer tool's name when the response_format names none
_ANSWER_DESCRIPTION = "Give your final answer by calling this tool: its input is your answer, in the required shape."
_WRAPPED = "value"  # the property holding an answer whose schema is not an object (tool inputs must be objects)


@dataclass(frozen=True)
class Answer:
    """The forced tool that carries a JSON `response_format`: its input is the reply's content.

    `key`: set when the schema is not an object: tool inputs must be objects, so the tool takes
    `{key: <answer>}` and the reply unwraps it.
    """

    tool: str
    key: str | None = None


def translate_tools(request: Mapping[str, Any]) -> tuple[dict[str, Any], Answer | None]:
    """Anthropic's `tools` and `tool_choice` (none without tools), and the answer tool when there is one."""
    tools = [_tool(tool, f"tools[{number}]") for number, tool in enumerate(request.get("tools") or [])]
    choice = _tool_choice(request.get("tool_choice"), has_tools=bool(tools)) or {"type": "auto"}
    answer = None
    found = _answer_tool(request.get("response_format"))
    # With `required` or a named tool the reply is a tool call: there is no content for the format to shape.
    if found is not None and choice["type"] in ("auto", "none"):
        answer, answer_tool = found
        if any(tool["name"] == answer.tool for tool in tools):
            raise InvalidRequest(f"response_format.json_schema.name {answer.tool!r} is also a tool's name; rename one.",
                                 param="response_format")
        # Beside the client's tools (`auto`), the model must either call one of them or answer through this one.
        choice = {"type": "any"} if tools and choice["type"] == "auto" else {"type": "tool", "name": answer.tool}
        tools.append(answer_tool)
    if not tools:
        return {}, answer
    if request.get("parallel_tool_calls") is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    return {"tools": tools, "tool_choice": choice}, answer


def _tool(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) and tool.get("type") == "function" else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{where}: only function tools with a name are supported by Anthropic upstreams.",
                             param=where)
    translated: dict[str, Any] = {"name": function["name"]}
    if isinstance(function.get("description"), str):
        translated["description"] = function["description"]
    translated["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return translated


def _tool_choice(choice: Any, *, has_tools: bool) -> dict[str, Any] | None:
    if choice is None or (not has_tools and choice in ("auto", "none")):
        return None
    if not has_tools:
        raise InvalidRequest("tool_choice asks for a tool call but no tools are given.", param="tool_choice")
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    function = choice.get("function") if isinstance(choice, Mapping) else None
    if isinstance(function, Mapping) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise InvalidRequest("tool_choice must be auto, none, required or {type: function, function: {name}}.",
                         param="tool_choice")


def _answer_tool(response_format: Any) -> tuple[Answer, dict[str, Any]] | None:
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if response_format is None or kind == "text":
        return None
    if kind == "json_object":
        return Answer(_ANSWER_TOOL), {"name": _ANSWER_TOOL, "description": _ANSWER_DESCRIPTION,
                                      "input_schema": {"type": "object"}}
    spec = response_format.get("json_schema") if kind == "json_schema" else None
    if not isinstance(spec, Mapping):
        raise InvalidRequest("response_format must be {type: text}, {type: json_object} or "
                             "{type: json_schema, json_schema: {name, schema}}.", param="response_format")
    name, schema, description = spec.get("name"), spec.get("schema"), spec.get("description")
    tool: dict[str, Any] = {
        "name": name if isinstance(name, str) else _ANSWER_TOOL,
        "description": description if isinstance(description, str) else _ANSWER_DESCRIPTION,
        "input_schema": schema if isinstance(schema, Mapping) else {"type": "object"},
    }
    key = None if tool["input_schema"].get("type") == "object" else _WRAPPED
    if key is not None:
        tool["input_schema"] = {"type": "object", "properties": {key: tool["input_schema"]}, "required": [key]}
    return Answer(tool["name"], key), tool
