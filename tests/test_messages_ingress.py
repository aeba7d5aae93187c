"""`POST /v1/messages`: the anthropic SDK, repointed at minigate, served by an OpenAI-protocol upstream.

The call takes the chat path (routing, the call log) and comes back in Anthropic's shapes: messages,
stream events, tool_use blocks and errors.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import AGENT_KEY
from tests.support.anthropic_upstream import AnthropicScript, ScriptedAnthropic
from tests.test_anthropic import claude_config
from tests.support.servers import RunningGateway
from tests.support.upstream import Script, ScriptedUpstream

anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is in the test extra (scripts/setup test)")

WEATHER: Any = {"name": "get_weather", "description": "Weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _client(gateway: RunningGateway, key: str = AGENT_KEY) -> Any:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0)


def test_a_message_is_answered_through_the_chat_path(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    raw = _client(gateway).messages.with_raw_response.create(
        model="cheap", max_tokens=64, system="Be brief.", stop_sequences=["END"],
        messages=[{"role": "user", "content": "Say hello to Ada"}])
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == "Say hello to Ada"
    assert message.stop_reason == "end_turn" and message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-minigate-model"] == "mini"
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == "Bearer sk-upstream"
    assert sent.json()["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent.json()["stop"] == ["END"] and sent.json()["max_tokens"] == 64


def test_a_streamed_message_arrives_as_anthropic_events(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    upstream.script(reply="one two three", chunk_delay_s=0.01)
    with _client(gateway).messages.stream(model="gpt-4.1", max_tokens=64,
                                          messages=[{"role": "user", "content": "count"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three" and final.content[0].text == "one two three"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3


def test_tool_use_and_tool_result_round_trip(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    client = _client(gateway)
    upstream.enqueue(Script(tool_call={"name": "get_weather", "arguments": '{"city": "Oslo"}'}))
    question = {"role": "user", "content": "Weather in Oslo?"}
    first = client.messages.create(model="gpt-4.1", max_tokens=64, tools=[WEATHER], messages=[question])
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use" and use.name == "get_weather" and use.input == {"city": "Oslo"}

    upstream.enqueue(Script(reply="Sunny."))
    second = client.messages.create(model="gpt-4.1", max_tokens=64, tools=[WEATHER], messages=[
        question, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert second.content[0].text == "Sunny."
    messages = upstream.requests[-1].json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == use.id and messages[2]["tool_call_id"] == use.id


def test_errors_come_in_anthropic_shape(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        _client(gateway, "sk-wrong").messages.create(model="gpt-4.1", max_tokens=8,
                                                     messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.NotFoundError) as missing:
        _client(gateway).messages.create(model="claude-nope", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4.1" in str(missing.value)  # the message lists the routes there are
    refused = httpx.post(f"{gateway.v1}/messages", headers={"x-api-key": AGENT_KEY, "anthropic-version": "2023-06-01"},
                         json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 400
    assert refused.json()["type"] == "error" and "max_tokens" in refused.json()["error"]["message"]
    upstream.enqueue(Script(status=500))
    with pytest.raises(anthropic.APIStatusError) as failed:
        _client(gateway).messages.create(model="gpt-4.1", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502 and failed.value.body["type"] == "error"  # type: ignore[index]
    upstream.enqueue(Script(body=b'{"not": "a chat completion"}'))
    with pytest.raises(anthropic.APIStatusError) as unreadable:
        _client(gateway).messages.create(model="gpt-4.1", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert unreadable.value.status_code == 502 and "not a chat completion" in str(unreadable.value)


def test_messages_reach_an_anthropic_upstream_through_both_translations(make_gateway: Any, tmp_path: Any) -> None:
    """Anthropic in, chat inside (routing, the log), Anthropic out to the upstream and back: the round trip
    keeps the system prompt, the stop sequences, the tools and a tool call whole."""
    with ScriptedAnthropic() as claude:
        gateway = make_gateway(claude_config(claude))
        claude.enqueue(AnthropicScript(tool_uses=[{"name": "get_weather", "input": {"city": "Oslo"}}]))
        message = _client(gateway).messages.create(
            model="claude", max_tokens=64, system="Be brief.", stop_sequences=["END"], tools=[WEATHER],
            messages=[{"role": "user", "content": "Weather in Oslo?"}])
        [use] = [block for block in message.content if block.type == "tool_use"]
        assert message.stop_reason == "tool_use" and use.name == "get_weather" and use.input == {"city": "Oslo"}
        sent = claude.requests[-1].json()
        assert sent["model"] == "claude-sonnet-4-5" and sent["stop_sequences"] == ["END"]
        assert sent["system"] == [{"type": "text", "text": "Be brief."}] and sent["max_tokens"] == 64
        assert sent["tools"][0]["name"] == "get_weather"
        with _client(gateway).messages.stream(model="claude", max_tokens=64,
                                              messages=[{"role": "user", "content": "echo me"}]) as stream:
            assert "".join(stream.text_stream) == "echo me"
