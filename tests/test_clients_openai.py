"""The OpenAI-style clients people use, unmodified, against the server on a real port in front of
the scripted upstream (endpoint ``up``): langchain-openai, pydantic-ai, instructor, LiteLLM as a
client, and the OpenAI Agents SDK. Each test asserts what the client received (text, tool calls,
structured output), and what reached the upstream.

The official openai SDK itself is covered by test_server_chat.py (chat, streams, tools) and
test_server_responses_stream.py (Responses streams and tools). Heavy imports happen once, here.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from pydantic import BaseModel

from llm_call.testing import Reply, ToolCall
from support.llm_server import Served, serve_llm

__all__ = ["serve_llm"]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytestmark = [
    pytest.mark.timeout(90),
    # third-party clients' own deprecation chatter is not what these tests check
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning"),
]


class City(BaseModel):
    name: str
    country: str
    population_millions: float


PARIS = {"name": "Paris", "country": "France", "population_millions": 2.1}


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


def _tool_names(served: Served, n: int = -1) -> list[str]:
    tools = served.upstream.requests[n].body.get("tools") or []
    return [t["function"]["name"] for t in tools]


# -- langchain-openai ------------------------------------------------------------------------


def test_langchain_bind_tools_invoke_and_stream(serve_llm: Any) -> None:
    from langchain_openai import ChatOpenAI

    call = ToolCall("get_weather", {"city": "Oslo"}, id="call_lc")
    served = serve_llm([Reply(tool_calls=[call]), Reply(tool_calls=[call])])
    llm = ChatOpenAI(model="up/x", base_url=served.base_url, api_key="unused", max_retries=0, timeout=30)
    bound = llm.bind_tools([get_weather])
    message = bound.invoke("What is the weather in Oslo?")
    assert message.tool_calls == [{"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_lc", "type": "tool_call"}]
    assert _tool_names(served) == ["get_weather"]
    gathered: Any = None
    for chunk in bound.stream("What is the weather in Oslo?"):
        gathered = chunk if gathered is None else gathered + chunk
    assert gathered is not None
    assert [(c["name"], c["args"], c["id"]) for c in gathered.tool_calls] == [("get_weather", {"city": "Oslo"}, "call_lc")]
    assert served.upstream.requests[-1].body["stream"] is True


def test_langchain_openai_embeddings(serve_llm: Any) -> None:
    from langchain_openai import OpenAIEmbeddings

    from llm_call.testing import embedding_vector

    served = serve_llm(default=Reply(times=None))
    # token arrays are one tokenizer's ids: the server embeds texts (its 400 says to set this)
    emb = OpenAIEmbeddings(model="up/e5", base_url=served.base_url, api_key="unused",
                           check_embedding_ctx_length=False, dimensions=6, max_retries=0)
    assert emb.embed_documents(["first doc", "second doc"]) == [embedding_vector("first doc", 6), embedding_vector("second doc", 6)]
    assert emb.embed_query("a question") == embedding_vector("a question", 6)
    assert served.upstream.requests[-1].body == {"model": "e5", "input": ["a question"], "dimensions": 6}


# -- pydantic-ai -----------------------------------------------------------------------------


async def test_pydantic_ai_run_stream_structured_output(serve_llm: Any) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    served = serve_llm([Reply(tool_calls=[ToolCall("final_result", PARIS)])])
    model = OpenAIChatModel("up/x", provider=OpenAIProvider(base_url=served.base_url, api_key="unused"))
    agent = Agent(model, output_type=City)
    async with agent.run_stream("Describe the capital of France.") as result:
        city = await result.get_output()
    assert city == City(**PARIS)
    sent = served.upstream.requests[-1].body
    assert sent["stream"] is True
    assert _tool_names(served) == ["final_result"]


# -- instructor ------------------------------------------------------------------------------


def test_instructor_tools_mode(serve_llm: Any) -> None:
    import instructor

    served = serve_llm([Reply(tool_calls=[ToolCall("City", PARIS)])])
    client = instructor.from_openai(served.client(), mode=instructor.Mode.TOOLS)
    city = client.chat.completions.create(
        model="up/x", response_model=City, messages=[{"role": "user", "content": "Capital of France?"}], max_retries=1
    )
    assert city.model_dump() == PARIS
    sent = served.upstream.requests[-1].body
    assert _tool_names(served) == ["City"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "City"}}


def test_instructor_json_mode(serve_llm: Any) -> None:
    import instructor

    served = serve_llm([Reply(text=json.dumps(PARIS))])
    client = instructor.from_openai(served.client(), mode=instructor.Mode.JSON)
    city = client.chat.completions.create(
        model="up/x", response_model=City, messages=[{"role": "user", "content": "Capital of France?"}], max_retries=1
    )
    assert city.model_dump() == PARIS
    assert served.upstream.requests[-1].body["response_format"] == {"type": "json_object"}


# -- LiteLLM as a client ---------------------------------------------------------------------


async def test_litellm_client_with_api_base_tools_and_stream(serve_llm: Any) -> None:
    import litellm

    call = ToolCall("get_weather", {"city": "Oslo"}, id="call_ll")
    served = serve_llm([Reply(tool_calls=[call]), Reply(text="It is sunny in Oslo.")])
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    common: dict[str, Any] = {"model": "openai/up/x", "api_base": served.base_url, "api_key": "unused", "num_retries": 0}
    first = await litellm.acompletion(messages=[{"role": "user", "content": "weather in Oslo?"}], tools=tools, **common)
    got = first.choices[0].message.tool_calls
    assert got is not None and [(c.id, c.function.name, json.loads(c.function.arguments)) for c in got] == [
        ("call_ll", "get_weather", {"city": "Oslo"})
    ]
    stream = await litellm.acompletion(messages=[{"role": "user", "content": "and now?"}], stream=True, **common)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "It is sunny in Oslo."
    assert served.upstream.requests[-1].body["stream"] is True


# -- OpenAI Agents SDK -----------------------------------------------------------------------


async def test_openai_agents_sdk_runs_a_tool_through_the_responses_api(serve_llm: Any) -> None:
    import openai
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # no trace export to api.openai.com
    calls: list[str] = []

    @function_tool
    def city_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    served = serve_llm([Reply(tool_calls=[ToolCall("city_weather", {"city": "Oslo"}, id="call_ag")]), Reply(text="Oslo is sunny.")])
    client = openai.AsyncOpenAI(base_url=served.base_url, api_key="unused", max_retries=0)
    agent = Agent(name="weather", instructions="Use tools.", tools=[city_weather], model=OpenAIResponsesModel("up/x", client))
    result = await Runner.run(agent, "What is the weather in Oslo?")
    assert result.final_output == "Oslo is sunny."
    assert calls == ["Oslo"]
    second = served.upstream.requests[-1].body["messages"]
    assert second[0] == {"role": "system", "content": "Use tools."}
    assert second[-1] == {"role": "tool", "tool_call_id": "call_ag", "content": "sunny in Oslo"}
    assert _tool_names(served, 0) == ["city_weather"]


async def test_openai_agents_sdk_streamed_run(serve_llm: Any) -> None:
    import openai
    from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    served = serve_llm([Reply(text="one two three")])
    client = openai.AsyncOpenAI(base_url=served.base_url, api_key="unused", max_retries=0)
    agent = Agent(name="counter", model=OpenAIResponsesModel("up/x", client))
    result = Runner.run_streamed(agent, "count")
    deltas = [
        e.data.delta
        async for e in result.stream_events()
        if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"
    ]
    assert "".join(deltas) == "one two three" and len(deltas) == 3
    assert result.final_output == "one two three"
    assert served.upstream.requests[-1].body["stream"] is True
