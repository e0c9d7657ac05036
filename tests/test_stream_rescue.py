"""Stream rescue: a stream cut after its first chunk is rescued by the next retry or fallback,
announced by a ``retry`` chunk: by default the answer starts again (``rescue="restart"``; tool
calls too); ``stream_rescue="continue"`` continues the delivered text without repeating it (a cut
tool call is never spliced). The server continues only when the request opts in
(``stream_rescue: "continue"``): a client cannot take back what it was sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import llm_call
from llm_call import StreamInterrupted
from llm_call.retry import ManualClock, stop_after_attempt
from llm_call.testing import Fault, Reply, ScriptedLLMServer, ToolCall
from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

CUT = Fault.cut_stream(after_chunks=1)


@pytest.fixture
async def srv(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ScriptedLLMServer]:
    async with ScriptedLLMServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield server


async def _collect(*args: Any, **kwargs: Any) -> list[llm_call.Chunk]:
    return [c async for c in llm_call.astream(*args, **kwargs)]


def _text(chunks: list[llm_call.Chunk]) -> str:
    return "".join(c.text for c in chunks)


def _answer(chunks: list[llm_call.Chunk]) -> list[llm_call.Chunk]:
    """What a consumer keeps: the chunks after the last ``restart`` marker."""
    starts = [i for i, c in enumerate(chunks) if c.event == "retry" and (c.data or {}).get("rescue") == "restart"]
    return chunks[starts[-1] + 1:] if starts else chunks


async def test_by_default_a_cut_stream_starts_again_after_a_restart_marker(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["alpha ", "beta ", "gamma"], fault=CUT), Reply(chunks=["alpha ", "beta ", "gamma"]))
    chunks = await _collect("openai/m", "hi", retry=ManualClock().policy())
    markers = [c for c in chunks if c.event == "retry"]
    assert len(markers) == 1 and chunks.index(markers[0]) == 1  # right after the text that was cut
    data = markers[0].data or {}
    assert data["rescue"] == "restart" and data["reason"] == "StreamInterrupted" and data["model"] == "openai/m"
    assert _text(_answer(chunks)) == "alpha beta gamma" and chunks[-1].finish_reason == "stop"
    # the second call is the same request again, not a continuation
    assert srv.requests[1].messages == srv.requests[0].messages


async def test_a_cut_tool_call_stream_is_restarted_and_assembles_whole(srv: ScriptedLLMServer) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = ToolCall("get_weather", {"city": "Oslo, Norway, Europe"})
    srv.add(Reply(tool_calls=[call], fault=Fault.cut_stream(after_chunks=2)), Reply(tool_calls=[call]))
    chunks = await _collect("openai/m", "weather?", tools=tools, retry=ManualClock().policy())
    assert any((c.data or {}).get("rescue") == "restart" for c in chunks)
    answer = _answer(chunks)
    calls = llm_call.assemble_tool_calls(d for c in answer for d in c.tool_calls)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo, Norway, Europe"})]
    assert answer[-1].finish_reason == "tool_calls" and len(srv.requests) == 2


async def test_a_restarted_validated_stream_validates_only_the_new_answer(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=['{"a": ', "1}"], fault=CUT), Reply(chunks=['{"a": ', "1}"]))
    chunks = await _collect("openai/m", "json", validate=["json"], retry=ManualClock().policy())
    assert _text(_answer(chunks)) == '{"a": 1}'
    assert (chunks[-1].data or {})["passed_attempt"] == 1  # not a failed '{"a": {"a": 1}'


async def test_a_cut_stream_is_continued_on_a_retry_with_a_marker(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["alpha ", "beta ", "gamma"], fault=CUT), Reply(chunks=["beta ", "gamma"]))
    chunks = await _collect("openai/m", "hi", retry=ManualClock().policy(), stream_rescue="continue")
    assert _text(chunks) == "alpha beta gamma"
    assert chunks[-1].finish_reason == "stop"
    markers = [c for c in chunks if c.event == "retry"]
    assert len(markers) == 1 and chunks.index(markers[0]) == 1  # right after the delivered text
    data = markers[0].data or {}
    assert data["rescue"] == "continue" and data["kept_chars"] == len("alpha ")
    assert data["from_model"] == data["model"] == "openai/m" and data["reason"] == "StreamInterrupted"
    # the second request asks for the rest of the delivered text
    cont = srv.requests[1].messages
    assert cont[-2] == {"role": "assistant", "content": "alpha "}
    assert cont[-1]["role"] == "user" and "Continue" in cont[-1]["content"]


async def test_a_continuation_that_restarts_the_answer_is_not_sent_twice(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["alpha ", "beta ", "gamma"], fault=CUT), Reply(chunks=["alp", "ha ", "beta ", "gamma"]))
    chunks = await _collect("openai/m", "hi", retry=ManualClock().policy(), stream_rescue="continue")
    assert _text(chunks) == "alpha beta gamma"


async def test_the_rest_comes_from_the_fallback_when_retries_are_used_up(srv: ScriptedLLMServer) -> None:
    srv.add(
        Reply(chunks=["one ", "two ", "three"], fault=CUT, match_model="main"),
        Reply(chunks=["two ", "three"], match_model="backup"),
    )
    policy = ManualClock().policy(stop=stop_after_attempt(1))
    chunks = await _collect("openai/main", "count", fallbacks=["openai/backup"], retry=policy, stream_rescue="continue")
    assert _text(chunks) == "one two three"
    assert [r.model for r in srv.requests] == ["main", "backup"]
    marker = next(c for c in chunks if c.event == "retry")
    assert (marker.data or {})["from_model"] == "openai/main" and (marker.data or {})["model"] == "openai/backup"
    assert chunks[-1].model.endswith("backup")


async def test_retries_exhausted_still_raise_stream_interrupted(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["one ", "two ", "three"], fault=CUT, times=None))
    seen: list[str] = []
    with pytest.raises(StreamInterrupted):
        async for chunk in llm_call.astream(
            "openai/m", "count", retry=ManualClock().policy(stop=stop_after_attempt(2)), stream_rescue="continue"
        ):
            seen.append(chunk.text)
    assert len(srv.requests) == 2
    assert "".join(seen) == "one "  # the continuation repeated it and was cut: nothing sent twice


async def test_stream_rescue_off_raises_at_the_cut(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["one ", "two"], fault=CUT), Reply(chunks=["two"]))
    with pytest.raises(StreamInterrupted):
        await _collect("openai/m", "count", retry=ManualClock().policy(), stream_rescue="off")
    assert len(srv.requests) == 1
    with pytest.raises(llm_call.UsageError, match="stream_rescue"):
        await _collect("openai/m", "count", stream_rescue="sometimes")


async def test_a_tool_call_cut_midway_is_a_typed_error_not_a_spliced_call(srv: ScriptedLLMServer) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    srv.add(
        Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo, Norway, Europe"})], fault=Fault.cut_stream(after_chunks=2)),
        Reply(text="should not be asked"),
    )
    with pytest.raises(StreamInterrupted, match="inside a tool call"):
        await _collect("openai/m", "weather?", tools=tools, retry=ManualClock().policy(), stream_rescue="continue")
    assert len(srv.requests) == 1


async def test_validated_stream_is_rescued_and_validates_the_whole_answer(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=['{"a": ', "1}"], fault=CUT), Reply(chunks=["1}"]))
    chunks = await _collect("openai/m", "json", validate=["json"], retry=ManualClock().policy(), stream_rescue="continue")
    assert _text(chunks) == '{"a": 1}'
    assert (chunks[-1].data or {})["passed_attempt"] == 1


def _sse(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def _post(served: Any, body: dict[str, Any]) -> list[str]:
    with httpx.stream("POST", served.base_url + "/chat/completions", json=body) as r:
        assert r.status_code == 200
        return _sse(r.read().decode())


def test_server_continues_a_cut_stream_only_when_asked(serve_llm: Any) -> None:
    served = serve_llm(
        [Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2)), Reply(text="three four")],
        retry={"max_retries": 1, "base_delay": 0},
    )
    body = {"model": "up/x", "messages": [{"role": "user", "content": "count"}], "stream": True, "stream_rescue": "continue"}
    events = _post(served, body)
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    text = "".join(ch["delta"].get("content") or "" for p in parsed for ch in p["choices"])
    assert text == "one two three four"
    marker = [p["llm_call"] for p in parsed if "llm_call" in p]
    assert marker and marker[0]["event"] == "retry" and marker[0]["data"]["rescue"] == "continue"
    # the official SDK reads it as one answer
    served.upstream.add(Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2)), Reply(text="three four"))
    stream = served.client().chat.completions.create(
        model="up/x", messages=body["messages"], stream=True, extra_body={"stream_rescue": "continue"}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three four"
    # default: the honest error event, no [DONE], no second upstream call
    served.upstream.add(Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2)), Reply(text="three four"))
    before = len(served.upstream.requests)
    events = _post(served, {**body, "stream_rescue": None})
    assert "[DONE]" not in events and json.loads(events[-1])["error"]["code"] == "StreamInterrupted"
    assert len(served.upstream.requests) == before + 1


def test_messages_stream_continues_in_the_same_text_block_when_asked(serve_llm: Any) -> None:
    import anthropic

    served = serve_llm(
        [Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2)), Reply(text="three four")],
        retry={"max_retries": 1, "base_delay": 0},
    )
    client = anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "count"}]
    with client.messages.stream(
        model="up/x", max_tokens=50, messages=messages, extra_body={"stream_rescue": "continue"}  # type: ignore[arg-type]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three four"
    assert [b.type for b in final.content] == ["text"] and final.stop_reason == "end_turn"
    # default: the error event, no second upstream call
    served.upstream.add(Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2)), Reply(text="three four"))
    before = len(served.upstream.requests)
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model="up/x", max_tokens=50, messages=messages) as stream:  # type: ignore[arg-type]
            list(stream.text_stream)
    assert len(served.upstream.requests) == before + 1


def test_the_operator_can_make_continue_the_default_and_a_request_can_turn_it_off(serve_llm: Any) -> None:
    cut = Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2))
    served = serve_llm(
        [cut, Reply(text="three four")], server={"stream_rescue": "continue"}, retry={"max_retries": 1, "base_delay": 0}
    )
    body = {"model": "up/x", "messages": [{"role": "user", "content": "count"}], "stream": True}
    events = _post(served, body)
    assert events[-1] == "[DONE]"
    text = "".join(ch["delta"].get("content") or "" for e in events[:-1] for ch in json.loads(e)["choices"])
    assert text == "one two three four"
    served.upstream.add(Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2)))
    events = _post(served, {**body, "stream_rescue": "off"})
    assert "[DONE]" not in events and json.loads(events[-1])["error"]["code"] == "StreamInterrupted"


def _response_events(served: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = httpx.post(served.base_url + "/responses", json=body, timeout=30)
    assert r.status_code == 200
    return [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: ")]


def test_responses_stream_is_not_rescued_unless_asked_and_then_is_one_answer(serve_llm: Any) -> None:
    served = serve_llm(
        [Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2)), Reply(text="one two three four")],
        retry={"max_retries": 1, "base_delay": 0},
    )
    body = {"model": "up/x", "input": "count", "stream": True}
    events = _response_events(served, body)
    assert events[-1]["type"] == "response.failed"  # the honest end, as on chat
    assert len(served.upstream.requests) == 1
    served.upstream.add(Reply(text="one two three four", fault=Fault.cut_stream(after_chunks=2)), Reply(text="three four"))
    events = _response_events(served, {**body, "stream_rescue": "continue"})
    assert events[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "one two three four" == events[-1]["response"]["output_text"]
