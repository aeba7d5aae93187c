"""The pinned client SDKs, used as an agent developer uses them, against minigate in front of the scripted upstream.

Each SDK runs its own request building, HTTP client, event parsing and agent loop (openai-agents, langchain-openai,
pydantic-ai, litellm); only the model is scripted. Every test checks what the SDK returned and what reached the
upstream, so none can pass on a path that never left the process. Nothing here may reach beyond 127.0.0.1: the
agents SDK's tracing is off, litellm reads its bundled price map and langchain's embeddings skip tiktoken (both
would download a file at run time otherwise).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai
import pytest
from pydantic import BaseModel

from tests.conftest import AGENT_KEY, gateway_config
from tests.support.servers import RunningGateway
from tests.support.upstream import Script, ScriptedUpstream

T = TypeVar("T")
EMBEDDING_ROUTE = "text-embedding-3-small"
OSLO_CALL = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
_DISTRIBUTIONS = {"agents": "openai-agents", "langchain_openai": "langchain-openai", "langchain_core": "langchain-core",
                  "pydantic_ai": "pydantic-ai-slim[openai]", "litellm": "litellm"}


def _sdk(module: str) -> Any:
    """The SDK's module; the test skips where the test extra is not installed."""
    distribution = _DISTRIBUTIONS[module.partition(".")[0]]
    return pytest.importorskip(module, reason=f"{distribution} is in the test extra (scripts/setup test)")


@pytest.fixture
def gateway(upstream: ScriptedUpstream, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """conftest's gateway with an embeddings route beside the chat routes."""
    config = gateway_config(upstream.base_url)
    config["models"]["embed"] = {"upstream": "scripted", "model": "text-embedding-3-small", "tier": "frontier"}
    config["routes"][EMBEDDING_ROUTE] = {"default": "embed"}
    return make_gateway(config)


def _stored(gateway: RunningGateway, response_id: str) -> openai.types.responses.Response:
    """The response minigate stored for a /v1/responses call: proof that the SDK called that endpoint."""
    with openai.OpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0) as client:
        return client.responses.retrieve(response_id)


def _chat_requests(upstream: ScriptedUpstream) -> list[dict[str, Any]]:
    assert {request.path for request in upstream.requests} == {"/v1/chat/completions"}
    return [request.json() for request in upstream.requests]


class Weather(BaseModel):
    city: str
    celsius: int


# -- openai-agents: its default model, OpenAIResponsesModel, speaks /v1/responses -----------------------------


@pytest.fixture
def run_agents(gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], Awaitable[T]]], T]:
    """Runs `main()` in an event loop, with minigate as the agents SDK's default client and tracing off.

    The SDK keeps both in module globals and has setters but no reset: monkeypatch records each value as
    it is now and puts it back after the test. The client is made inside the loop that uses it, so its
    connections close there.
    """
    _sdk("agents")
    from agents import set_default_openai_client, set_tracing_disabled
    from agents.models import _openai_shared
    from agents.tracing import get_trace_provider

    monkeypatch.setattr(_openai_shared, "_default_openai_client", _openai_shared.get_default_openai_client())
    provider = get_trace_provider()
    for name in ("_manual_disabled", "_disabled"):
        monkeypatch.setattr(provider, name, getattr(provider, name))
    set_tracing_disabled(True)  # traces would go to api.openai.com

    async def with_client(main: Callable[[], Awaitable[T]]) -> T:
        async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0) as client:
            set_default_openai_client(client, use_for_tracing=False)
            return await main()

    return lambda main: asyncio.run(with_client(main))


def _weather_agent(cities: list[str]) -> Any:
    """An agent on the default model class (OpenAIResponsesModel) with one function tool, which notes its calls."""
    from agents import Agent, function_tool

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"sunny in {city}"

    return Agent(name="forecaster", instructions="Answer with the weather.", model="gpt-4.1", tools=[get_weather])


def test_an_agents_sdk_run_calls_its_function_tool_and_answers(run_agents: Callable[..., Any],
                                                              gateway: RunningGateway,
                                                              upstream: ScriptedUpstream) -> None:
    from agents import Runner

    upstream.enqueue(Script(tool_call=OSLO_CALL), Script(reply="It is sunny in Oslo."))
    cities: list[str] = []
    result = run_agents(lambda: Runner.run(_weather_agent(cities), "Weather in Oslo?"))
    assert result.final_output == "It is sunny in Oslo." and cities == ["Oslo"]
    first, second = _chat_requests(upstream)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["messages"] == [{"role": "system", "content": "Answer with the weather."},
                                 {"role": "user", "content": "Weather in Oslo?"}]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    call = second["messages"][2]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert second["messages"][3] == {"role": "tool", "tool_call_id": call["id"], "content": "sunny in Oslo"}
    assert _stored(gateway, result.raw_responses[-1].response_id).output_text == "It is sunny in Oslo."


def test_an_agents_sdk_streamed_run_delivers_text_deltas(run_agents: Callable[..., Any],
                                                        upstream: ScriptedUpstream) -> None:
    from agents import Runner
    from openai.types.responses import ResponseTextDeltaEvent

    upstream.enqueue(Script(tool_call=OSLO_CALL, chunk_delay_s=0.01),
                     Script(reply="It is sunny in Oslo.", chunk_delay_s=0.01))
    cities: list[str] = []

    async def main() -> tuple[list[str], list[str], Any]:
        result = Runner.run_streamed(_weather_agent(cities), "Weather in Oslo?")
        deltas: list[str] = []
        items: list[str] = []
        async for event in result.stream_events():
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
                deltas.append(event.data.delta)
            elif event.type == "run_item_stream_event":
                items.append(event.name)
        return deltas, items, result.final_output

    deltas, items, final_output = run_agents(main)
    assert deltas == ["It", " is", " sunny", " in", " Oslo."] and final_output == "It is sunny in Oslo."
    assert items == ["tool_called", "tool_output", "message_output_created"] and cities == ["Oslo"]
    first, second = _chat_requests(upstream)
    assert first["stream"] is True and second["stream"] is True
    assert second["messages"][-1]["role"] == "tool" and second["messages"][-1]["content"] == "sunny in Oslo"


# -- langchain-openai ---------------------------------------------------------------------------------


def _chat_model(gateway: RunningGateway) -> Any:
    langchain_openai = _sdk("langchain_openai")
    return langchain_openai.ChatOpenAI(model="gpt-4.1", base_url=gateway.v1, api_key=AGENT_KEY, max_retries=0,
                                       use_responses_api=True)


def test_langchain_chat_openai_invokes_and_streams_on_the_responses_api(gateway: RunningGateway,
                                                                       upstream: ScriptedUpstream) -> None:
    model = _chat_model(gateway)
    answer = model.invoke([("system", "Be brief."), ("human", "Say hello to Ada")])
    assert answer.text == "Say hello to Ada"
    assert _stored(gateway, answer.response_metadata["id"]).output_text == "Say hello to Ada"
    upstream.enqueue(Script(reply="one two three"))
    assert [chunk.text for chunk in model.stream("Count to three.") if chunk.text] == ["one", " two", " three"]
    invoked, streamed = _chat_requests(upstream)
    assert invoked["messages"] == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Say hello to Ada"}]
    assert streamed["stream"] is True and streamed["messages"] == [{"role": "user", "content": "Count to three."}]


def test_langchain_bind_tools_returns_the_models_tool_calls(gateway: RunningGateway,
                                                           upstream: ScriptedUpstream) -> None:
    _sdk("langchain_core")
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    upstream.enqueue(Script(tool_call=OSLO_CALL))
    answer = _chat_model(gateway).bind_tools([get_weather]).invoke("Weather in Oslo?")
    [call] = answer.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Oslo"}
    [sent] = _chat_requests(upstream)
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}


def test_langchain_openai_embeddings_embed_documents_and_queries(gateway: RunningGateway,
                                                                upstream: ScriptedUpstream) -> None:
    langchain_openai = _sdk("langchain_openai")
    # check_embedding_ctx_length would count tokens with tiktoken, which downloads its BPE file.
    embeddings = langchain_openai.OpenAIEmbeddings(model=EMBEDDING_ROUTE, base_url=gateway.v1, api_key=AGENT_KEY,
                                                   check_embedding_ctx_length=False, max_retries=0)
    documents = embeddings.embed_documents(["first text", "second text"])
    query = embeddings.embed_query("first text")
    assert len(documents) == 2 and all(len(vector) == 16 for vector in documents)
    assert query == pytest.approx(documents[0]) and documents[0] != documents[1]  # the upstream's vectors
    assert [request.path for request in upstream.requests] == ["/v1/embeddings"] * 2
    sent = [request.json() for request in upstream.requests]
    assert sent[0]["input"] == ["first text", "second text"] and sent[1]["input"] == ["first text"]
    assert sent[0]["model"] == "text-embedding-3-small"


# -- pydantic-ai ---------------------------------------------------------------------------------------


def _pydantic_ai_model(gateway: RunningGateway) -> Any:
    models = _sdk("pydantic_ai.models.openai")
    providers = _sdk("pydantic_ai.providers.openai")
    return models.OpenAIResponsesModel("gpt-4.1", provider=providers.OpenAIProvider(base_url=gateway.v1,
                                                                                     api_key=AGENT_KEY))


def test_a_pydantic_ai_agent_answers_in_text(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    agent = _sdk("pydantic_ai").Agent(_pydantic_ai_model(gateway), instructions="Be brief.")
    result = agent.run_sync("Say hello to Ada")
    assert result.output == "Say hello to Ada"
    assert _stored(gateway, result.response.provider_response_id).output_text == "Say hello to Ada"
    [sent] = _chat_requests(upstream)
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Say hello to Ada"}]


def test_a_pydantic_ai_agent_calls_a_tool_and_returns_structured_output(gateway: RunningGateway,
                                                                        upstream: ScriptedUpstream) -> None:
    _sdk("pydantic_ai")
    from pydantic_ai import Agent

    agent = Agent(_pydantic_ai_model(gateway), output_type=Weather)
    cities: list[str] = []

    @agent.tool_plain
    def get_temperature(city: str) -> int:
        """The temperature in a city, in degrees Celsius."""
        cities.append(city)
        return 4

    # pydantic-ai's default structured output is a `final_result` tool whose arguments are the output.
    upstream.enqueue(Script(tool_call={"name": "get_temperature", "arguments": '{"city": "Oslo"}'}),
                     Script(tool_call={"name": "final_result", "arguments": '{"city": "Oslo", "celsius": 4}'}))
    result = agent.run_sync("How warm is Oslo?")
    assert result.output == Weather(city="Oslo", celsius=4) and cities == ["Oslo"]
    first, second = _chat_requests(upstream)
    assert {tool["function"]["name"] for tool in first["tools"]} == {"get_temperature", "final_result"}
    call_id = second["messages"][-2]["tool_calls"][0]["id"]
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": call_id, "content": "4"}


def test_a_pydantic_ai_agent_with_native_output_sends_a_json_schema(gateway: RunningGateway,
                                                                    upstream: ScriptedUpstream) -> None:
    pydantic_ai = _sdk("pydantic_ai")
    agent = pydantic_ai.Agent(_pydantic_ai_model(gateway), output_type=pydantic_ai.NativeOutput(Weather))
    upstream.enqueue(Script(reply='{"city": "Oslo", "celsius": 4}'))
    assert agent.run_sync("Weather in Oslo as JSON").output == Weather(city="Oslo", celsius=4)
    [sent] = _chat_requests(upstream)
    schema = sent["response_format"]["json_schema"]
    assert sent["response_format"]["type"] == "json_schema" and schema["name"] == "Weather"
    assert set(schema["schema"]["properties"]) == {"city", "celsius"}


# -- litellm -----------------------------------------------------------------------------------------


def _litellm() -> Any:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # read at import: else litellm downloads its price map
    return _sdk("litellm")


# litellm's own TypedDicts use ReadOnly, which pydantic warns about when it first builds their schema.
@pytest.mark.filterwarnings("ignore:Item 'summary' on TypedDict class 'ChatCompletionReasoningItem':UserWarning")
def test_litellm_responses_calls_the_responses_endpoint(gateway: RunningGateway, upstream: ScriptedUpstream) -> None:
    litellm = _litellm()
    response = litellm.responses(model="openai/gpt-4.1", input="Say hello to Ada", instructions="Be brief.",
                                 api_base=gateway.v1, api_key=AGENT_KEY)
    assert response.output[0].content[0].text == "Say hello to Ada"
    # Only a /v1/responses call is stored (litellm wraps the id in its own; get_responses unwraps it).
    stored = litellm.get_responses(response.id, api_base=gateway.v1, api_key=AGENT_KEY)
    assert stored.output[0].content[0].text == "Say hello to Ada"
    [sent] = _chat_requests(upstream)
    assert sent["model"] == "gpt-4.1" and sent["messages"] == [{"role": "system", "content": "Be brief."},
                                                              {"role": "user", "content": "Say hello to Ada"}]


def test_litellm_embedding_reaches_the_embeddings_route(gateway: RunningGateway,
                                                        upstream: ScriptedUpstream) -> None:
    result = _litellm().embedding(model=f"openai/{EMBEDDING_ROUTE}", input=["first text", "second text"],
                                  api_base=gateway.v1, api_key=AGENT_KEY)
    vectors = [item["embedding"] for item in result.data]
    assert len(vectors) == 2 and all(len(vector) == 16 for vector in vectors) and vectors[0] != vectors[1]
    assert result.usage.prompt_tokens == 4
    [sent] = upstream.requests
    assert sent.path == "/v1/embeddings" and sent.json()["input"] == ["first text", "second text"]
    assert sent.json()["model"] == "text-embedding-3-small"
