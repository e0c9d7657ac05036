"""The native OpenAI-compatible route (``openai/*``, bare OpenAI names, configured endpoints)
against the scripted LLM server on real sockets: answers, streams, and every failure mode as a
typed error.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

import llm_call
from llm_call import (
    AuthError,
    Chunk,
    MalformedResponse,
    ModelNotFound,
    ProviderConnectionError,
    ProviderHTTPError,
    ProviderTimeout,
    RateLimited,
    StreamInterrupted,
    UsageError,
)
from llm_call.providers.openai_compat import parse_retry_after
from llm_call.testing import Fault, Reply, ScriptedLLMServer, ToolCall


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    """Poll ``predicate`` (bounded); the bound only guards against a hang, it is not a timing test."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.01)


async def collect(model: str, prompt: str | None = "hi", **kw: Any) -> list[Chunk]:
    return [c async for c in llm_call.astream(model, prompt, **kw)]


# -- answers ---------------------------------------------------------------------------------


async def test_acall_returns_text_model_usage_and_raw(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="Paris is the capital.", prompt_tokens=11, completion_tokens=4))
    resp = await llm_call.acall("openai/gpt-test", "Capital of France?")
    assert resp.text == "Paris is the capital."
    assert resp.model == "openai/gpt-test"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (11, 4)
    assert resp.finish_reason == "stop"
    assert resp.raw["choices"][0]["message"]["content"] == "Paris is the capital."
    assert resp.latency_s > 0
    assert len(srv.requests) == 1
    rec = srv.requests[0]
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["authorization"] == "Bearer sk-test-123"
    assert rec.body == {"model": "gpt-test", "messages": [{"role": "user", "content": "Capital of France?"}]}


async def test_model_is_the_one_that_answered(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="hi", model="gpt-test-2024-08-06"))
    resp = await llm_call.acall("openai/gpt-test", "hi")
    assert resp.model == "openai/gpt-test-2024-08-06"


async def test_bare_openai_name_goes_to_openai_route(srv: ScriptedLLMServer) -> None:
    resp = await llm_call.acall("gpt-4o-mini", "hi")
    assert resp.text == "default answer"
    assert srv.requests[0].model == "gpt-4o-mini"


async def test_parameters_and_provider_options_reach_the_server(srv: ScriptedLLMServer) -> None:
    await llm_call.acall(
        "openai/m",
        "hi",
        system="Be terse.",
        temperature=0.25,
        max_tokens=17,
        stop=["\n"],
        seed=3,
        extra_body={"top_k": 5},
    )
    body = srv.requests[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
    ]
    assert body["temperature"] == 0.25
    assert body["max_tokens"] == 17
    assert body["stop"] == ["\n"]
    assert body["seed"] == 3
    assert body["top_k"] == 5
    assert "extra_body" not in body


async def test_image_content_parts_pass_through_unchanged(srv: ScriptedLLMServer) -> None:
    messages = [
        {"role": "system", "content": "Describe images."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ],
        },
    ]
    resp = await llm_call.acall("openai/vision", messages=messages)
    assert resp.text == "default answer"
    assert srv.requests[0].body["messages"] == messages
    assert srv.requests[0].last_user_text == "What is in this picture?"


async def test_tool_calls_are_returned(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"}, id="call_1")]))
    resp = await llm_call.acall("openai/m", "weather?", tools=[{"type": "function", "function": {"name": "get_weather"}}])
    assert resp.finish_reason == "tool_calls"
    assert resp.tool_calls == [llm_call.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')]
    assert srv.requests[0].tools[0]["function"]["name"] == "get_weather"


async def test_streamed_tool_calls_arrive_as_deltas_and_assemble(srv: ScriptedLLMServer) -> None:
    srv.add(
        Reply(
            tool_calls=[
                ToolCall("get_weather", {"city": "Oslo"}, id="call_1"),
                ToolCall("get_time", {"tz": "Europe/Oslo"}, id="call_2"),
            ]
        )
    )
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    chunks = [c async for c in llm_call.astream("openai/m", "weather?", tools=tools, tool_choice="auto")]
    deltas = [d for c in chunks for d in c.tool_calls]
    assert len(deltas) > 2  # fragments, as the upstream streamed them
    assert chunks[-1].finish_reason == "tool_calls"
    assert llm_call.assemble_tool_calls(deltas) == [
        llm_call.ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),
        llm_call.ToolCall("call_2", "get_time", '{"tz": "Europe/Oslo"}'),
    ]
    body = srv.requests[0].body
    assert body["tools"] == tools and body["tool_choice"] == "auto"


async def test_tool_results_are_sent_back_in_openai_format(srv: ScriptedLLMServer) -> None:
    call = llm_call.ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    resp = await llm_call.acall("openai/m", messages=messages, parallel_tool_calls=False)
    assert resp.text == "default answer" and resp.tool_calls == []
    assert srv.requests[0].body["messages"] == messages
    assert srv.requests[0].body["parallel_tool_calls"] is False


async def test_claude_only_option_is_a_usage_error(srv: ScriptedLLMServer) -> None:
    with pytest.raises(UsageError, match="mcp_config"):
        await llm_call.acall("openai/m", "hi", mcp_config={"mcpServers": {}}, retry=False)
    assert srv.requests == []


async def test_one_connection_is_reused_across_calls(srv: ScriptedLLMServer) -> None:
    for _ in range(5):
        await llm_call.acall("openai/m", "hi")
    assert len(srv.requests) == 5
    assert srv.active_connections == 1


async def test_concurrent_calls_all_answer(srv: ScriptedLLMServer) -> None:
    for i in range(30):
        srv.add(Reply(text=f"answer {i}", match_text=f"question {i}"))
    answers = await asyncio.gather(*(llm_call.acall("openai/m", f"question {i}") for i in range(30)))
    assert [a.text for a in answers] == [f"answer {i}" for i in range(30)]


# -- streaming -------------------------------------------------------------------------------


async def test_stream_yields_deltas_then_finish_with_usage(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["The ", "quick ", "fox"], prompt_tokens=5, completion_tokens=3))
    chunks = await collect("openai/m", "go")
    assert [c.text for c in chunks[:-1]] == ["The ", "quick ", "fox"]
    last = chunks[-1]
    assert last.text == ""
    assert last.finish_reason == "stop"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 3)
    assert all(c.model == "openai/m" for c in chunks)
    body = srv.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_stream_with_chunk_delay(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["a", "b", "c"], chunk_delay=0.01))
    chunks = await collect("openai/m")
    assert "".join(c.text for c in chunks) == "abc"
    assert chunks[-1].finish_reason == "stop"


async def test_stream_cut_midway_raises_stream_interrupted_with_partial(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["one ", "two ", "three ", "four"], fault=Fault.cut_stream(after_chunks=2)))
    seen: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for chunk in llm_call.astream("openai/m", "count", retry=False):
            seen.append(chunk.text)
    assert seen == ["one ", "two "]
    assert info.value.partial == "one two "
    assert info.value.model == "m"
    assert info.value.provider == "openai"


async def test_stream_cut_before_any_chunk(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="never sent", fault=Fault.cut_stream(after_chunks=0)))
    with pytest.raises(StreamInterrupted):
        await collect("openai/m", retry=False)


async def test_stream_cut_with_delays_raises(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["a", "b", "c"], chunk_delay=0.01, fault=Fault.cut_stream(after_chunks=1)))
    with pytest.raises(StreamInterrupted) as info:
        await collect("openai/m", retry=False)
    assert info.value.partial == "a"


def _sse(body: str) -> Reply:
    return Reply(fault=Fault.http(200, headers={"Content-Type": "text/event-stream"}, body=body))


async def test_stream_without_done_but_with_finish_reason_is_complete(srv: ScriptedLLMServer) -> None:
    srv.add(
        _sse(
            'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
            'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
        )
    )
    chunks = await collect("openai/m")
    assert [c.text for c in chunks] == ["hi", ""]
    assert chunks[-1].finish_reason == "length"


async def test_stream_ending_cleanly_without_end_marker_is_interrupted(srv: ScriptedLLMServer) -> None:
    srv.add(_sse('data: {"choices":[{"index":0,"delta":{"content":"partial"},"finish_reason":null}]}\n\n'))
    with pytest.raises(StreamInterrupted) as info:
        await collect("openai/m", retry=False)
    assert info.value.partial == "partial"


async def test_stream_event_that_is_not_json_is_malformed(srv: ScriptedLLMServer) -> None:
    srv.add(_sse("data: {not json\n\n"))
    with pytest.raises(MalformedResponse):
        await collect("openai/m", retry=False)


@pytest.mark.parametrize(
    "event",
    [
        "123",
        '["a"]',
        '{"choices": 5}',
        '{"choices": [7]}',
        '{"choices": [{"delta": {"content": 5}}]}',
        '{"choices": [{"delta": "x"}]}',
        '{"usage": {"prompt_tokens": "many"}, "choices": []}',
    ],
)
async def test_stream_event_with_wrong_shape_is_malformed(srv: ScriptedLLMServer, event: str) -> None:
    srv.add(_sse(f"data: {event}\n\ndata: [DONE]\n\n"))
    with pytest.raises(MalformedResponse):
        await collect("openai/m", retry=False)


async def test_error_event_inside_stream_is_a_typed_error(srv: ScriptedLLMServer) -> None:
    srv.add(_sse('data: {"error": {"message": "overloaded, try later"}}\n\n'))
    with pytest.raises(ProviderHTTPError, match="overloaded, try later"):
        await collect("openai/m", retry=False)


async def test_stream_request_answered_with_json_is_accepted_whole(srv: ScriptedLLMServer) -> None:
    body = '{"model": "m", "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}'
    srv.add(Reply(fault=Fault.http(200, body=body)))
    chunks = await collect("openai/m")
    assert [c.text for c in chunks] == ["whole", ""]
    assert chunks[-1].finish_reason == "stop"


async def test_stream_request_answered_with_html_is_malformed(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.html()))
    with pytest.raises(MalformedResponse, match="HTML"):
        await collect("openai/m", retry=False)


async def test_stream_http_error_before_first_chunk(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(503)))
    with pytest.raises(ProviderHTTPError) as info:
        await collect("openai/m", retry=False)
    assert info.value.status == 503


async def test_breaking_out_of_a_stream_closes_its_connection(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=[f"{i} " for i in range(50)], chunk_delay=0.02))
    agen = llm_call.astream("openai/m", "count")
    first = await agen.__anext__()
    assert first.text == "0 "
    await agen.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: srv.in_flight == 0, "server handler to see the client leave")
    await wait_until(lambda: srv.active_connections == 0, "the connection to close")


# -- failures --------------------------------------------------------------------------------


async def test_missing_api_key_names_the_env_var(srv: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(AuthError) as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    assert "OPENAI_API_KEY" in str(info.value)
    assert info.value.hint is not None and "OPENAI_API_KEY" in info.value.hint
    assert srv.requests == []
    with pytest.raises(AuthError, match="OPENAI_API_KEY"):
        await collect("openai/m", retry=False)


async def test_401_is_auth_error_with_hint_after_one_request(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(401)))
    with pytest.raises(AuthError) as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    assert info.value.hint is not None and "OPENAI_API_KEY" in info.value.hint
    assert "401" in info.value.message
    assert info.value.model == "m"
    assert len(srv.requests) == 1


async def test_403_is_auth_error(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(403)))
    with pytest.raises(AuthError):
        await llm_call.acall("openai/m", "hi", retry=False)


async def test_404_is_model_not_found(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(404, body='{"error": {"message": "The model `m` does not exist"}}')))
    with pytest.raises(ModelNotFound, match="does not exist") as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    assert info.value.hint is not None


async def test_429_retry_after_seconds(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(429, headers={"Retry-After": "7"})))
    with pytest.raises(RateLimited) as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    assert info.value.retry_after == 7.0
    assert len(srv.requests) == 1


async def test_429_retry_after_http_date(srv: ScriptedLLMServer) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    srv.add(Reply(fault=Fault.http(429, headers={"Retry-After": when})))
    with pytest.raises(RateLimited) as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    assert info.value.retry_after is not None
    assert 60 < info.value.retry_after <= 121


async def test_429_without_retry_after(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(429)))
    with pytest.raises(RateLimited) as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    assert info.value.retry_after is None


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("inf") is None


async def test_500_is_provider_http_error_with_status_and_body(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(500)))
    with pytest.raises(ProviderHTTPError) as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    assert info.value.status == 500
    assert info.value.body is not None and "scripted fault" in info.value.body
    assert "500" in str(info.value)


async def test_html_answer_is_malformed(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.html()))
    with pytest.raises(MalformedResponse, match="HTML") as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    assert info.value.hint is not None and "base URL" in info.value.hint


async def test_truncated_json_is_malformed(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="a long answer that gets cut", fault=Fault.truncated_json()))
    with pytest.raises(MalformedResponse):
        await llm_call.acall("openai/m", "hi", retry=False)


async def test_malformed_json_is_malformed(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.malformed_json()))
    with pytest.raises(MalformedResponse):
        await llm_call.acall("openai/m", "hi", retry=False)


@pytest.mark.parametrize(
    "body",
    [
        '{"object": "chat.completion"}',
        '{"choices": []}',
        '{"choices": [{"message": "text"}]}',
        '{"choices": [{"message": {"content": 42}}]}',
        '{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "lots"}}',
        "[1, 2]",
        '"just a string"',
    ],
)
async def test_json_that_is_not_a_completion_is_malformed(srv: ScriptedLLMServer, body: str) -> None:
    srv.add(Reply(fault=Fault.http(200, body=body)))
    with pytest.raises(MalformedResponse):
        await llm_call.acall("openai/m", "hi", retry=False)


async def test_connection_refused_is_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    with pytest.raises(ProviderConnectionError) as info:
        await llm_call.acall("openai/m", "hi", retry=False)
    # named by the setting that holds the URL: the text reaches HTTP clients of llm-call serve
    assert "cannot reach OPENAI_BASE_URL" in str(info.value) and "Connection refused" in str(info.value)
    assert f"127.0.0.1:{port}" not in str(info.value)
    assert info.value.hint is not None
    with pytest.raises(ProviderConnectionError):
        await collect("openai/m", retry=False)


async def test_connection_reset_is_connection_error(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.reset()))
    with pytest.raises(ProviderConnectionError):
        await llm_call.acall("openai/m", "hi", retry=False)
    # the session recovers: the next call works
    assert (await llm_call.acall("openai/m", "hi")).text == "default answer"


async def test_reset_during_stream_is_a_typed_error(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.reset()))
    with pytest.raises(ProviderConnectionError):
        await collect("openai/m", retry=False)


async def test_hang_with_timeout_is_provider_timeout_and_disconnects(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.hang()))
    with pytest.raises(ProviderTimeout) as info:
        await llm_call.acall("openai/m", "hi", timeout=0.3, retry=False)
    assert info.value.model == "m"
    await wait_until(lambda: srv.in_flight == 0, "the hanging handler to be cancelled")


async def test_stream_hang_with_timeout_is_provider_timeout(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.hang()))
    with pytest.raises(ProviderTimeout):
        await collect("openai/m", timeout=0.3, retry=False)


async def test_configured_read_timeout_applies(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(openai={"read_timeout": 0.3})
    srv.add(Reply(fault=Fault.hang()))
    with pytest.raises(ProviderTimeout):
        await llm_call.acall("openai/m", "hi", retry=False)


async def test_cancelling_a_call_closes_its_connection(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.hang()))
    task = asyncio.create_task(llm_call.acall("openai/m", "hi"))
    await wait_until(lambda: srv.in_flight == 1, "the request to arrive")
    assert srv.active_connections == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: srv.in_flight == 0, "the server to see the client disconnect")
    await wait_until(lambda: srv.active_connections == 0, "the connection to close")
    assert (await llm_call.acall("openai/m", "hi")).text == "default answer"


async def test_cancelling_a_stream_closes_its_connection(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=[f"{i} " for i in range(100)], chunk_delay=0.05))
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in llm_call.astream("openai/m", "count"):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: srv.in_flight == 0, "the server to see the client disconnect")
    await wait_until(lambda: srv.active_connections == 0, "the connection to close")
