"""Whether a miniature's reply must be escalated: the checks behind `escalate_on`.

A pure function over the request and the reply body. The gateway runs it on a miniature's reply
before any byte reaches the client; a reason means the client gets the frontier model's answer
instead, and never sees the miniature's failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

__all__ = ["ESCALATION_REASONS", "EscalationReason", "check_reply"]

EscalationReason = Literal["error", "timeout", "invalid_json", "invalid_tool_call", "empty"]
ESCALATION_REASONS: tuple[EscalationReason, ...] = ("error", "timeout", "invalid_json", "invalid_tool_call", "empty")


def check_reply(request: Mapping[str, Any], reply: bytes, policy: frozenset[str]) -> EscalationReason | None:
    """The first failed check among those the policy names, or None when the reply may be relayed."""
    try:
        body = orjson.loads(reply)
        message = body["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return "error" if "error" in policy else None
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if "empty" in policy and not (isinstance(content, str) and content.strip()) and not calls:
        return "empty"
    if "invalid_tool_call" in policy and calls and not _valid_calls(calls, request.get("tools")):
        return "invalid_tool_call"
    if "invalid_json" in policy and not calls and not _valid_json(content, request.get("response_format")):
        return "invalid_json"
    return None


def _valid_json(content: Any, response_format: Any) -> bool:
    if not isinstance(response_format, Mapping) or response_format.get("type") not in ("json_object", "json_schema"):
        return True
    try:
        value = orjson.loads(content) if isinstance(content, str) else None
    except orjson.JSONDecodeError:
        return False
    if response_format.get("type") == "json_object":
        return isinstance(value, dict)
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return value is not None and _conforms(value, schema)


def _valid_calls(calls: list[Any], tools: Any) -> bool:
    offered = {
        tool["function"]["name"]: tool["function"].get("parameters")
        for tool in tools or []
        if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping) and "name" in tool["function"]
    }
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or function.get("name") not in offered:
            return False
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            return False
        if not _conforms(arguments, offered[function["name"]]):
            return False
    return True


def _conforms(value: Any, schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return True  # nothing to check against
    try:
        return Draft202012Validator(dict(schema)).is_valid(value)
    except SchemaError:
        return True  # a schema the client got wrong is not the miniature's failure
