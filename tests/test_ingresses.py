"""The OpenAI surface beyond chat, on the same routing and call log: Responses, embeddings, text completions,
`GET /v1/models/{id}`, Azure-style paths and keys as `x-api-key`; what the log keeps of each call.

Clients are the real SDKs (openai, anthropic) against a real gateway in front of the scripted upstream.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel

from minigate.logger.crypto import generate_key
from tests.conftest import ADMIN_KEY, AGENT_KEY, ANALYST_KEY, gateway_config
from tests.support.servers import RunningGateway, run_gateway, write_config
from tests.support.upstream import Script, ScriptedUpstream
from tests.support.waiting import eventually

anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is in the test extra (scripts/setup test)")


@pytest.fixture
def logged(upstream: ScriptedUpstream, tmp_path: Path) -> Any:
    """A gateway whose call log keeps payloads (encrypted), with an embeddings route; stopped after the test."""
    logging = {"store": f"sqlite:///{tmp_path}/calls.db", "encryption_key": generate_key(), "flush_interval_s": 0.05}
    config = gateway_config(upstream.base_url, logging=logging)
    config["models"]["embed"] = {"upstream": "scripted", "model": "text-embedding-3-small", "tier": "frontier"}
    config["routes"]["text-embedding-3-small"] = {"default": "embed"}
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        yield gateway


def _client(gateway: RunningGateway, key: str = AGENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def _record(gateway: RunningGateway, request_id: str) -> dict[str, Any]:
    """The call's record, payloads decrypted, once the log has written it."""

    def find() -> dict[str, Any] | None:
        rows = httpx.get(f"{gateway.v1}/minigate/calls", headers={"authorization": f"Bearer {ADMIN_KEY}"},
                         params={"payloads": "true", "limit": 100}).json()["data"]
        return next((row for row in rows if row["request_id"] == request_id), None)

    return eventually(find, what=f"call {request_id} is in the log")


# -- Responses ------------------------------------------------------------------------------------------


def test_a_responses_call_is_routed_translated_and_logged_in_chat_form(logged: RunningGateway,
                                                                       upstream: ScriptedUpstream) -> None:
    raw = _client(logged).responses.with_raw_response.create(model="cheap", input="Say hello to Ada",
                                                             instructions="Be brief.", max_output_tokens=50,
                                                             metadata={"agent": "greeter"})
    response = raw.parse()
    assert response.output_text == "Say hello to Ada"  # the scripted upstream echoes the user's text
    assert response.status == "completed" and response.metadata == {"agent": "greeter"}
    assert response.usage is not None and response.usage.input_tokens > 0
    assert raw.headers["x-minigate-model"] == "mini" and raw.headers["x-minigate-tier"] == "miniature"
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json()["messages"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Say hello to Ada"}]
    assert sent.json()["max_tokens"] == 50 and "metadata" not in sent.json()
    record = _record(logged, raw.headers["x-minigate-request-id"])
    assert response.id == f"resp_{record['request_id']}"
    assert record["status"] == 200 and record["route"] == "cheap" and record["input_tokens"] > 0
    assert record["request"]["messages"][-1]["content"] == "Say hello to Ada"
    assert record["response"]["choices"][0]["message"]["content"] == "Say hello to Ada"


def test_a_streamed_responses_call_reaches_the_sdk_as_its_events(logged: RunningGateway,
                                                                 upstream: ScriptedUpstream) -> None:
    upstream.script(reply="one two three", chunk_delay_s=0.01)
    with _client(logged).responses.stream(model="gpt-4.1", input="count") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 3 and kinds[-1] == "response.completed"
    assert final.output_text == "one two three" and final.usage is not None and final.usage.output_tokens == 3
    assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}


def test_function_tools_round_trip_through_previous_response_id(logged: RunningGateway,
                                                                upstream: ScriptedUpstream) -> None:
    client = _client(logged)
    tools: Any = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                  "required": ["city"]}}]
    upstream.enqueue(Script(tool_call={"name": "get_weather", "arguments": '{"city": "Oslo"}'}))
    first = client.responses.create(model="gpt-4.1", input="Weather in Oslo?", tools=tools)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city": "Oslo"}'
    assert upstream.requests[-1].json()["tools"][0]["function"]["name"] == "get_weather"

    upstream.enqueue(Script(reply="It is sunny in Oslo."))
    second = client.responses.create(model="gpt-4.1", previous_response_id=first.id, tools=tools,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": '{"sky": "sunny"}'}])
    assert second.output_text == "It is sunny in Oslo." and second.previous_response_id == first.id
    messages = upstream.requests[-1].json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id and messages[2]["tool_call_id"] == call.call_id

    assert client.responses.retrieve(second.id).output_text == "It is sunny in Oslo."
    with pytest.raises(openai.NotFoundError):  # stored responses are the key's own
        _client(logged, ADMIN_KEY).responses.retrieve(second.id)
    unstored = client.responses.create(model="gpt-4.1", input="Forget this", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError, match="previous_response_id|Previous response"):
        client.responses.create(model="gpt-4.1", input="more", previous_response_id=unstored.id)


class Weather(BaseModel):
    city: str
    celsius: int


def test_parse_with_a_pydantic_model_sends_a_json_schema(logged: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.enqueue(Script(reply='{"city": "Oslo", "celsius": 4}'))
    parsed = _client(logged).responses.parse(model="gpt-4.1", input="Weather in Oslo as JSON", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Oslo", celsius=4)
    response_format = upstream.requests[-1].json()["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["name"] == "Weather"


def test_built_in_tools_are_refused_with_a_400_that_says_why(logged: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _client(logged).responses.create(model="gpt-4.1", input="news?", tools=[{"type": "web_search"}])
    assert "web_search" in str(refused.value) and "function" in str(refused.value)


# -- embeddings, text completions, models, Azure, x-api-key ---------------------------------------------------


def test_embeddings_are_routed_relayed_metered_and_logged_without_vectors(logged: RunningGateway,
                                                                         upstream: ScriptedUpstream) -> None:
    raw = _client(logged).embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                              input=["first text", "second text"])
    embeddings = raw.parse()  # the SDK asks for base64 and decodes it
    assert len(embeddings.data) == 2 and all(len(item.embedding) > 0 for item in embeddings.data)
    assert upstream.requests[-1].path == "/v1/embeddings"
    assert upstream.requests[-1].json()["model"] == "text-embedding-3-small"
    record = _record(logged, raw.headers["x-minigate-request-id"])
    assert record["model"] == "embed" and record["status"] == 200
    assert record["input_tokens"] == embeddings.usage.prompt_tokens and record["output_tokens"] == 0
    assert record["cost_usd"] is not None and record["cost_usd"] > 0
    vectors = [item["embedding"] for item in record["response"]["data"]]
    assert all(isinstance(v, str) and v.endswith("base64>") for v in vectors), vectors
    assert record["request"]["input"] == ["first text", "second text"]


def test_text_completions_are_relayed(logged: RunningGateway, upstream: ScriptedUpstream) -> None:
    completion = _client(logged).completions.create(model="gpt-4.1", prompt="Once upon a time")
    assert completion.choices[0].text
    assert upstream.requests[-1].path == "/v1/completions"


def test_a_model_is_retrieved_by_its_route_name(logged: RunningGateway) -> None:
    client = _client(logged)
    assert client.models.retrieve("cheap").id == "cheap"
    with pytest.raises(openai.NotFoundError, match="gpt-4.1"):  # the error lists the routes there are
        client.models.retrieve("no-such-route")


def test_the_azure_client_names_the_route_as_its_deployment(logged: RunningGateway,
                                                            upstream: ScriptedUpstream) -> None:
    client = openai.AzureOpenAI(azure_endpoint=logged.base_url, api_key=AGENT_KEY, api_version="2024-10-21",
                                max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="cheap",
                                                           messages=[{"role": "user", "content": "hi azure"}])
    assert raw.parse().choices[0].message.content == "hi azure"
    assert raw.headers["x-minigate-model"] == "mini"
    assert upstream.requests[-1].json()["model"] == "mini-lora"


def test_keys_are_accepted_as_x_api_key_on_every_endpoint(logged: RunningGateway) -> None:
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{logged.v1}/chat/completions", json=body, headers={"x-api-key": AGENT_KEY}).status_code == 200
    assert httpx.get(f"{logged.v1}/minigate/calls", headers={"x-api-key": ANALYST_KEY}).status_code == 200
    refused = httpx.post(f"{logged.v1}/chat/completions", json=body, headers={"x-api-key": "sk-wrong"})
    assert refused.status_code == 401 and refused.json()["error"]["message"].startswith("Incorrect API key")


# -- what the log keeps ------------------------------------------------------------------------------


def test_a_stream_the_client_abandons_is_logged_with_what_was_generated(logged: RunningGateway,
                                                                       upstream: ScriptedUpstream) -> None:
    upstream.script(reply=" ".join(["word"] * 200), chunk_delay_s=0.02)
    body = {"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "write a long text"}]}
    with httpx.stream("POST", f"{logged.v1}/chat/completions", json=body,
                      headers={"authorization": f"Bearer {AGENT_KEY}"}) as response:
        request_id = response.headers["x-minigate-request-id"]
        received = 0
        for chunk in response.iter_bytes():
            received += chunk.count(b"word")
            if received >= 20:
                break
    record = _record(logged, request_id)
    assert record["status"] == 499
    assert record["input_tokens"] and record["output_tokens"] >= 20  # estimated: the usage chunk never came
    assert record["cost_usd"] is not None and record["cost_usd"] > 0


def test_a_call_whose_client_left_before_the_reply_is_logged_client_closed(logged: RunningGateway,
                                                                          upstream: ScriptedUpstream) -> None:
    upstream.script(latency_s=1.0)
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "slow"}]}
    started = time.time()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{logged.v1}/chat/completions", json=body, headers={"authorization": f"Bearer {AGENT_KEY}"},
                   timeout=httpx.Timeout(5, read=0.3))

    def recorded() -> dict[str, Any] | None:
        rows = httpx.get(f"{logged.v1}/minigate/calls", headers={"authorization": f"Bearer {ADMIN_KEY}"},
                         params={"since": started - 1}).json()["data"]
        return rows[0] if rows else None

    assert eventually(recorded, what="the abandoned call is logged")["status"] == 499


def test_the_log_keeps_logprobs_and_an_upstream_error_as_sent(logged: RunningGateway,
                                                              upstream: ScriptedUpstream) -> None:
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}
    completion = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "logprobs": logprobs,
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    upstream.enqueue(Script(body=orjson.dumps(completion)))
    raw = _client(logged).chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert raw.parse().choices[0].logprobs is not None
    record = _record(logged, raw.headers["x-minigate-request-id"])
    assert record["response"]["choices"][0]["logprobs"] == logprobs

    upstream.enqueue(Script(status=500))
    failed = httpx.post(f"{logged.v1}/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"},
                        json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "fail"}]})
    assert failed.status_code == 502
    record = _record(logged, failed.headers["x-minigate-request-id"])
    assert record["response"] == failed.json()  # the error as the client got it, not wrapped in `choices`



def test_an_upstream_that_serves_responses_itself_gets_the_call_as_sent(upstream: ScriptedUpstream,
                                                                        tmp_path: Path) -> None:
    logging = {"store": f"sqlite:///{tmp_path}/calls.db", "encryption_key": generate_key(), "flush_interval_s": 0.05}
    config = gateway_config(upstream.base_url, logging=logging)
    config["upstreams"]["scripted"]["responses"] = "native"
    with run_gateway(write_config(tmp_path / "minigate.yaml", config)) as gateway:
        client = _client(gateway)
        raw = client.responses.with_raw_response.create(model="cheap", input="Hello there", reasoning={"effort": "low"})
        first = raw.parse()
        sent = upstream.requests[-1]
        assert sent.path == "/v1/responses" and sent.json()["model"] == "mini-lora"
        assert sent.json()["reasoning"] == {"effort": "low"} and sent.json()["input"] == "Hello there"
        assert first.output_text == "Hello there" and raw.headers["x-minigate-model"] == "mini"

        upstream.enqueue(Script(reply="Again"))
        with client.responses.stream(model="cheap", input="Once more", previous_response_id=first.id) as stream:
            second = stream.get_final_response()
        assert second.output_text == "Again"
        sent = upstream.requests[-1].json()
        assert "previous_response_id" not in sent  # minigate's stored items, spelled out for the upstream
        assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]
        assert client.responses.retrieve(second.id).output_text == "Again"

        record = _record(gateway, raw.headers["x-minigate-request-id"])
        assert record["input_tokens"] == first.usage.input_tokens and record["output_tokens"] > 0  # type: ignore[union-attr]
        assert record["response"]["output"][0]["content"][0]["text"] == "Hello there"
