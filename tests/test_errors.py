"""Every error a client sees has OpenAI's shape and says what to fix."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import RunningGateway
from tests.support.upstream import ScriptedUpstream

AUTH = {"authorization": f"Bearer {AGENT_KEY}"}
HELLO = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}


def post(gateway: RunningGateway, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", headers=AUTH, timeout=30, **kwargs)  # type: ignore[arg-type]


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert response.headers["x-minigate-request-id"]
    return body["error"]


def test_malformed_json_names_the_position(gateway: RunningGateway) -> None:
    response = post(gateway, content=b'{"model": "gpt-4.1", "messages": [}')
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_json" and "char 34" in str(error["message"])


@pytest.mark.parametrize(
    ("body", "param"),
    [({"messages": [{"role": "user", "content": "x"}]}, "model"), ({"model": "gpt-4.1"}, "messages"),
     ({"model": "gpt-4.1", "messages": []}, "messages")],
)
def test_missing_required_fields(gateway: RunningGateway, body: dict[str, object], param: str) -> None:
    response = post(gateway, json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and param in str(error["message"])


def test_not_an_object(gateway: RunningGateway) -> None:
    assert post(gateway, json=[1, 2]).status_code == 400


def test_unknown_model_lists_routes(gateway: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0).chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"
    assert "'gpt-5'" in caught.value.message and "cheap, gpt-4.1" in caught.value.message


def test_body_over_limit(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    gateway = make_gateway(gateway_config(upstream.base_url, server={"max_body_bytes": 2048}))
    big = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * 4096}]}
    response = post(gateway, json=big)
    assert response.status_code == 413
    assert "max_body_bytes" in str(error_of(response)["message"])
    assert upstream.requests == []


def test_upstream_4xx_passes_through_with_its_body(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    body = b'{"error":{"message":"max_tokens is too large","type":"invalid_request_error","param":"max_tokens","code":null}}'
    upstream.script(status=400, body=body)
    response = post(gateway, json=HELLO)
    assert response.status_code == 400 and response.content == body
    assert response.headers["x-minigate-model"] == "gpt-4.1"


def test_upstream_5xx_is_502_naming_the_upstream(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(status=503)
    response = post(gateway, json=HELLO)
    assert response.status_code == 502
    assert "'scripted'" in str(error_of(response)["message"])
    assert gateway.metric("minigate_upstream_errors_total", {"upstream": "scripted", "kind": "status_503"}) == 1


def test_connect_failure_is_502(make_gateway: Callable[..., RunningGateway]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = make_gateway(gateway_config(f"http://127.0.0.1:{port}/v1"))
    response = post(gateway, json=HELLO)
    assert response.status_code == 502
    error = error_of(response)
    assert "cannot reach upstream 'scripted'" in str(error["message"])
    assert gateway.metric("minigate_upstream_errors_total", {"upstream": "scripted", "kind": "connect_error"}) == 1


def test_timeout_is_504(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    config = gateway_config(upstream.base_url)
    config["upstreams"]["scripted"]["timeouts"] = {"read_s": 0.3}
    gateway = make_gateway(config)
    upstream.script(latency_s=2.0)
    response = post(gateway, json=HELLO)
    assert response.status_code == 504
    assert error_of(response)["code"] == "upstream_timeout"


def test_stream_cut_ends_with_an_error_event(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply="one two three four five six", cut_after_chunks=3)
    stream = openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0).chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert received, "the chunks before the cut are relayed"
    assert "ended the stream early" in caught.value.message
    assert gateway.metric("minigate_upstream_errors_total", {"upstream": "scripted", "kind": "stream_cut"}) == 1


def test_unknown_path_has_openai_shape(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.v1}/nothing-here")
    assert response.status_code == 404
    assert error_of(response)["type"] == "invalid_request_error"


def test_total_timeout_bounds_a_slow_stream(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> None:
    config = gateway_config(upstream.base_url)
    config["upstreams"]["scripted"]["timeouts"] = {"read_s": 5, "total_s": 0.5}
    gateway = make_gateway(config)
    upstream.script(reply=" ".join(["slow"] * 40), chunk_delay_s=0.1)
    with httpx.stream("POST", f"{gateway.v1}/chat/completions", headers=AUTH, timeout=30,
                      json={**HELLO, "stream": True}) as response:
        body = b"".join(response.iter_bytes())
    assert b'"code":"upstream_stream_cut"' in body and b"[DONE]" not in body
    assert gateway.metric("minigate_upstream_errors_total", {"upstream": "scripted", "kind": "timeout"}) == 1


def test_method_not_allowed_names_the_allowed_ones(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.v1}/chat/completions", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_of(response)["code"] == "http_405"


def test_schema_documents_the_chat_body_and_every_error_it_answers(gateway: RunningGateway) -> None:
    schema = httpx.get(f"{gateway.base_url}/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "messages"] and body["additionalProperties"] is True
    assert {"stream", "stream_options", "tools", "tool_choice", "response_format", "max_tokens"} <= set(body["properties"])
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    errors = {"400", "401", "403", "404", "408", "413", "429", "500", "502", "503", "504"}
    assert errors <= set(chat["responses"]) and "499" not in chat["responses"]
    calls = schema["paths"]["/v1/minigate/calls"]["get"]["responses"]
    assert "400" in calls and "422" not in calls, "validation errors are answered 400, not FastAPI's 422"
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status[0] not in "45":
                    continue
                documented = response["content"]["application/json"]["schema"]
                if path != "/v1/messages" or status == "500":
                    assert documented == {"$ref": "#/components/schemas/ErrorResponse"}
                elif status == "503":  # the connection cap answers before the endpoint does
                    assert {"$ref": "#/components/schemas/ErrorResponse"} in documented["anyOf"]
                else:  # Anthropic's endpoint answers in Anthropic's shape
                    assert documented["title"] == "AnthropicError"
    assert schema["components"]["schemas"]["ErrorDetail"]["required"] == ["message", "type", "param", "code"]
