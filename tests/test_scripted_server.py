"""The scripted LLM server over real sockets: wire formats, faults, script semantics, modes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llm_call.testing import Fault, RecordedRequest, Reply, ScriptedLLMServer, ToolCall

pytestmark = pytest.mark.timeout(30)

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10)
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        yield session


def chat(model: str = "gpt-test", text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def anthropic_body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def sse_data(raw: str) -> list[str]:
    return [line[6:] for line in raw.splitlines() if line.startswith("data: ")]


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def read_until_cut(resp: aiohttp.ClientResponse) -> str:
    """Read a stream that the server cuts; return what arrived."""
    got = []
    try:
        async for line in resp.content:
            got.append(line.decode())
    except aiohttp.ClientPayloadError:
        pass
    return "".join(got)


# -- OpenAI ------------------------------------------------------------------------------


async def test_openai_json(http: aiohttp.ClientSession) -> None:
    async with ScriptedLLMServer([Reply(text="Hi there friend")]) as srv:
        async with http.post(f"{srv.openai_base_url}/chat/completions", json=chat()) as resp:
            assert resp.status == 200
            data = await resp.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-test"
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hi there friend", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_openai_stream_with_usage(http: aiohttp.ClientSession) -> None:
    reply = Reply(text="one two three", model="reported", prompt_tokens=7, completion_tokens=9)
    async with ScriptedLLMServer([reply]) as srv:
        body = chat(stream=True, stream_options={"include_usage": True})
        async with http.post(f"{srv.openai_base_url}/chat/completions", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = await resp.text()
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "reported" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) == 3
    assert "".join(p or "" for p in pieces) == "one two three"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}


async def test_openai_stream_without_usage_and_explicit_chunks(
    http: aiohttp.ClientSession,
) -> None:
    async with ScriptedLLMServer([Reply(chunks=["ab", "cd", "e"])]) as srv:
        async with http.post(f"{srv.url}/v1/chat/completions", json=chat(stream=True)) as resp:
            data = sse_data(await resp.text())
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["choices"] for c in chunks)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["ab", "cd", "e"]


async def test_openai_tool_calls(http: aiohttp.ClientSession) -> None:
    args = {"path": "a.txt", "content": "x y z"}
    tool = ToolCall("write_file", args)
    async with ScriptedLLMServer([Reply(tool_calls=[tool], times=2)]) as srv:
        url = f"{srv.openai_base_url}/chat/completions"
        async with http.post(url, json=chat()) as resp:
            data = await resp.json()
        async with http.post(url, json=chat(stream=True)) as resp:
            chunks = [json.loads(d) for d in sse_data(await resp.text())[:-1]]
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "write_file"
    assert json.loads(call["function"]["arguments"]) == args
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["function"]["name"] == "write_file" and deltas[0]["id"]
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == args
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_models_endpoint(http: aiohttp.ClientSession) -> None:
    async with ScriptedLLMServer([Reply(text="x", match_model="gpt-a")]) as srv:
        async with http.get(f"{srv.openai_base_url}/models") as resp:
            data = await resp.json()
        headers = {"anthropic-version": "2023-06-01"}
        async with http.get(f"{srv.url}/v1/models", headers=headers) as resp:
            adata = await resp.json()
    assert data["object"] == "list" and data["data"][0]["id"] == "gpt-a"
    assert adata["data"][0] == {
        "type": "model",
        "id": "gpt-a",
        "display_name": "gpt-a",
        "created_at": "2025-01-01T00:00:00Z",
    }


# -- Anthropic ---------------------------------------------------------------------------


async def test_anthropic_json(http: aiohttp.ClientSession) -> None:
    tool = ToolCall("lookup", {"q": "x"}, id="toolu_given")
    script = [Reply(text="Hello you"), Reply(text="Checking", tool_calls=[tool])]
    async with ScriptedLLMServer(script) as srv:
        url = f"{srv.anthropic_base_url}/v1/messages?beta=true"
        async with http.post(url, json=anthropic_body()) as resp:
            first = await resp.json()
        async with http.post(url, json=anthropic_body()) as resp:
            second = await resp.json()
    assert first["type"] == "message" and first["role"] == "assistant"
    assert first["model"] == "claude-test"
    assert first["content"] == [{"type": "text", "text": "Hello you"}]
    assert first["stop_reason"] == "end_turn"
    assert first["usage"]["input_tokens"] == 2 and first["usage"]["output_tokens"] == 2
    assert second["stop_reason"] == "tool_use"
    assert second["content"][1] == {
        "type": "tool_use",
        "id": "toolu_given",
        "name": "lookup",
        "input": {"q": "x"},
    }
    assert srv.requests[0].query == {"beta": "true"}


async def test_anthropic_stream_event_order(http: aiohttp.ClientSession) -> None:
    args = {"path": "/tmp/x", "content": "some text here"}
    reply = Reply(text="Let me write it", tool_calls=[ToolCall("mcp__files__write_file", args)])
    async with ScriptedLLMServer([reply]) as srv:
        url = f"{srv.url}/v1/messages?beta=true"
        async with http.post(url, json=anthropic_body(stream=True)) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = sse_events(await resp.text())
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start"
    assert names[1] == "content_block_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] == 2
    # blocks: start, deltas, stop, strictly in order and by index
    blocks: dict[int, dict[str, Any]] = {}
    open_index = None
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None
            open_index = data["index"]
            blocks[open_index] = {"block": data["content_block"], "deltas": []}
        elif name == "content_block_delta":
            assert data["index"] == open_index
            blocks[open_index]["deltas"].append(data["delta"])
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None and sorted(blocks) == [0, 1]
    text_deltas = blocks[0]["deltas"]
    assert all(d["type"] == "text_delta" for d in text_deltas) and len(text_deltas) >= 2
    assert "".join(d["text"] for d in text_deltas) == "Let me write it"
    tool = blocks[1]
    assert tool["block"]["type"] == "tool_use" and tool["block"]["input"] == {}
    assert tool["block"]["name"] == "mcp__files__write_file"
    assert tool["block"]["id"].startswith("toolu_")
    assert all(d["type"] == "input_json_delta" for d in tool["deltas"])
    assert len(tool["deltas"]) >= 2
    assert json.loads("".join(d["partial_json"] for d in tool["deltas"])) == args
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] >= 1


async def test_count_tokens_and_other_paths(http: aiohttp.ClientSession) -> None:
    async with ScriptedLLMServer() as srv:
        body = anthropic_body("one two three four")
        async with http.post(f"{srv.url}/v1/messages/count_tokens?beta=true", json=body) as resp:
            assert await resp.json() == {"input_tokens": 4}
        async with http.get(f"{srv.url}/api/unknown") as resp:
            assert resp.status == 404
            assert "not found" in (await resp.json())["error"]["message"]
        async with http.head(f"{srv.url}/") as resp:
            assert resp.status == 200
    assert [(r.method, r.path, r.api) for r in srv.requests] == [
        ("POST", "/v1/messages/count_tokens", "anthropic"),
        ("GET", "/api/unknown", "other"),
        ("HEAD", "/", "other"),
    ]


# -- faults ------------------------------------------------------------------------------


async def test_status_fault_with_retry_after(http: aiohttp.ClientSession) -> None:
    fault = Fault.http(429, {"Retry-After": "1"})
    async with ScriptedLLMServer([Reply(fault=fault), Reply(fault=fault)]) as srv:
        async with http.post(f"{srv.openai_base_url}/chat/completions", json=chat()) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            err = (await resp.json())["error"]
            assert err["code"] == "rate_limit_exceeded" and err["message"]
        async with http.post(f"{srv.url}/v1/messages", json=anthropic_body()) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            data = await resp.json()
            assert data["type"] == "error" and data["error"]["type"] == "rate_limit_error"


async def test_status_fault_shapes_and_verbatim_body(http: aiohttp.ClientSession) -> None:
    script: list[Any] = [
        {"fault": {"kind": "status", "status": 529}},
        {"fault": {"kind": "status", "status": 500}},
        Reply(fault=Fault.http(502, body="Bad gateway")),
    ]
    async with ScriptedLLMServer(script) as srv:
        url = f"{srv.url}/v1/messages"
        async with http.post(url, json=anthropic_body()) as resp:
            assert resp.status == 529
            assert (await resp.json())["error"]["type"] == "overloaded_error"
        async with http.post(url, json=anthropic_body()) as resp:
            assert resp.status == 500
            assert (await resp.json())["error"]["type"] == "api_error"
        async with http.post(url, json=anthropic_body()) as resp:
            assert resp.status == 502
            assert resp.content_type == "text/plain"
            assert await resp.text() == "Bad gateway"


async def test_reset_fault(http: aiohttp.ClientSession) -> None:
    async with ScriptedLLMServer([Reply(fault=Fault.reset()), Reply(text="ok")]) as srv:
        url = f"{srv.openai_base_url}/chat/completions"
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.post(url, json=chat()) as resp:
                await resp.read()
        async with http.post(url, json=chat()) as resp:  # the server keeps serving
            assert (await resp.json())["choices"][0]["message"]["content"] == "ok"


async def test_body_faults(http: aiohttp.ClientSession) -> None:
    script = [
        Reply(fault=Fault.malformed_json()),
        Reply(fault=Fault.html()),
        Reply(text="a reasonably long answer", fault=Fault.truncated_json()),
        Reply(text="cut me", fault=Fault.cut_stream()),  # non-stream: truncated JSON
    ]
    async with ScriptedLLMServer(script) as srv:
        url = f"{srv.openai_base_url}/chat/completions"
        async with http.post(url, json=chat()) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            with pytest.raises(ValueError):
                json.loads(await resp.text())
        async with http.post(url, json=chat()) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert (await resp.text()).startswith("<html>")
        for _ in range(2):
            async with http.post(url, json=chat()) as resp:
                assert resp.status == 200 and resp.content_type == "application/json"
                text = await resp.text()
                assert text.startswith('{"id": "chatcmpl-')
                with pytest.raises(ValueError):
                    json.loads(text)


async def test_cut_stream_openai(http: aiohttp.ClientSession) -> None:
    reply = Reply(text="one two three four five", fault=Fault.cut_stream(after_chunks=2))
    async with ScriptedLLMServer([reply]) as srv:
        url = f"{srv.openai_base_url}/chat/completions"
        async with http.post(url, json=chat(stream=True)) as resp:
            assert resp.status == 200
            raw = await read_until_cut(resp)
    data = sse_data(raw)
    assert "[DONE]" not in data
    chunks = [json.loads(d) for d in data]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "one ", "two "]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


async def test_cut_stream_anthropic(http: aiohttp.ClientSession) -> None:
    reply = Reply(text="one two three", fault=Fault.cut_stream(after_chunks=1), chunk_delay=0.01)
    async with ScriptedLLMServer([reply]) as srv:
        async with http.post(f"{srv.url}/v1/messages", json=anthropic_body(stream=True)) as resp:
            raw = await read_until_cut(resp)
    names = [name for name, _ in sse_events(raw)]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta"]


async def test_hang_times_out_and_stop_is_fast() -> None:
    srv = ScriptedLLMServer([Reply(fault=Fault.hang(), times=None)])
    await srv.start()
    url = f"{srv.openai_base_url}/chat/completions"
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(url, json=chat()) as resp:
                await resp.read()
        assert time.monotonic() - started < 2
        # a second client still waiting while the server stops
        long_wait = aiohttp.ClientTimeout(total=5)
        waiting = asyncio.create_task(session.post(url, json=chat(), timeout=long_wait))
        while len(srv.requests) < 2:
            await asyncio.sleep(0.01)
        assert srv.in_flight >= 1
        started = time.monotonic()
        await srv.stop()
        assert time.monotonic() - started < 1
        with pytest.raises(aiohttp.ClientError):
            await waiting
    assert len(srv.requests) == 2


async def test_client_disconnect_ends_hanging_handler() -> None:
    async with ScriptedLLMServer([Reply(fault=Fault.hang())]) as srv:
        timeout = aiohttp.ClientTimeout(total=0.2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.post(f"{srv.openai_base_url}/chat/completions", json=chat())
        for _ in range(100):
            if srv.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert srv.in_flight == 0


async def test_stop_is_fast_with_slow_stream_in_flight() -> None:
    srv = ScriptedLLMServer([Reply(text="a b c d e f g h", chunk_delay=1.0)])
    await srv.start()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        url = f"{srv.openai_base_url}/chat/completions"
        async with session.post(url, json=chat(stream=True)) as resp:
            await resp.content.readline()
            started = time.monotonic()
            await srv.stop()
            assert time.monotonic() - started < 1
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


async def test_latency_and_chunk_delay(http: aiohttp.ClientSession) -> None:
    script = [Reply(text="x", latency=0.2), Reply(text="a b c", chunk_delay=0.1)]
    async with ScriptedLLMServer(script) as srv:
        url = f"{srv.openai_base_url}/chat/completions"
        started = time.monotonic()
        async with http.post(url, json=chat()) as resp:
            await resp.read()
        assert time.monotonic() - started >= 0.19
        arrivals = []
        async with http.post(url, json=chat(stream=True)) as resp:
            async for line in resp.content:
                if line.startswith(b"data: "):
                    arrivals.append(time.monotonic())
    assert arrivals[-1] - arrivals[0] >= 0.19


# -- script semantics --------------------------------------------------------------------


async def post_text(http: aiohttp.ClientSession, srv: ScriptedLLMServer, **kw: Any) -> Any:
    async with http.post(f"{srv.openai_base_url}/chat/completions", json=chat(**kw)) as resp:
        data = await resp.json()
        if resp.status != 200:
            return resp.status, data["error"]["message"]
        return data["choices"][0]["message"]["content"]


async def test_matching_times_and_default(http: aiohttp.ClientSession) -> None:
    script = [
        Reply(text="big", match_model="gpt-4*"),
        Reply(text="weather", match_text="weather", times=2),
        Reply(text="any"),
    ]
    async with ScriptedLLMServer(script, default={"text": "fallback"}) as srv:
        assert await post_text(http, srv, model="small", text="the weather?") == "weather"
        assert await post_text(http, srv, model="gpt-4o", text="the weather?") == "big"
        assert await post_text(http, srv, model="gpt-4o", text="hi") == "any"
        assert await post_text(http, srv, model="gpt-4o", text="weather") == "weather"
        assert await post_text(http, srv, model="gpt-4o", text="weather") == "fallback"
        srv.add(Reply(text="added", times=None))
        assert await post_text(http, srv) == "added"
        assert await post_text(http, srv) == "added"


async def test_match_uses_last_user_message(http: aiohttp.ClientSession) -> None:
    messages = [
        {"role": "user", "content": "first question about cats"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "now about dogs"}]},
    ]
    script = [Reply(text="cats", match_text="cats"), Reply(text="dogs", match_text="dogs")]
    async with ScriptedLLMServer(script) as srv:
        body = {"model": "m", "messages": messages}
        async with http.post(f"{srv.openai_base_url}/chat/completions", json=body) as resp:
            assert (await resp.json())["choices"][0]["message"]["content"] == "dogs"
        assert srv.requests[0].last_user_text == "now about dogs"


async def test_script_exhausted(http: aiohttp.ClientSession) -> None:
    async with ScriptedLLMServer([Reply(text="only once")]) as srv:
        assert await post_text(http, srv) == "only once"
        status, message = await post_text(http, srv, model="m1", text="again")
        assert status == 500
        assert message == "script exhausted: no reply for model=m1 text='again'"
        async with http.post(f"{srv.url}/v1/messages", json=anthropic_body()) as resp:
            assert resp.status == 500
            data = await resp.json()
            assert data["type"] == "error" and data["error"]["type"] == "api_error"
            assert data["error"]["message"].startswith("script exhausted")


def test_reply_dict_round_trip() -> None:
    d = {
        "text": "hi",
        "tool_calls": [{"name": "f", "arguments": {"a": 1}}],
        "fault": {"kind": "status", "status": 429, "headers": {"Retry-After": "1"}},
        "times": None,
        "match_model": "gpt-*",
    }
    reply = Reply.from_dict(d)
    assert reply.tool_calls == [ToolCall("f", {"a": 1})]
    assert reply.fault == Fault.http(429, {"Retry-After": "1"})
    assert reply.to_dict() == d
    assert Reply.from_dict(reply.to_dict()) == reply
    assert Reply().to_dict() == {}
    with pytest.raises(ValueError, match="unknown reply keys"):
        Reply.from_dict({"txt": "typo"})
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")


# -- recording ---------------------------------------------------------------------------


async def test_recording(http: aiohttp.ClientSession) -> None:
    async with ScriptedLLMServer(default=Reply(text="ok")) as srv:
        body = {
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "q1"},
            ],
        }
        headers = {"Authorization": "Bearer k", "X-Custom": "1"}
        url = f"{srv.openai_base_url}/chat/completions"
        async with http.post(url, json=body, headers=headers) as resp:
            await resp.read()
        system = [{"type": "text", "text": "You are Claude Code.", "cache_control": {}}]
        abody = anthropic_body("q2", system=system, stream=True)
        async with http.post(f"{srv.url}/v1/messages?beta=true", json=abody) as resp:
            await resp.read()
        first, second = srv.requests
        assert isinstance(first, RecordedRequest)
        assert (first.method, first.path, first.api, first.model) == (
            "POST",
            "/v1/chat/completions",
            "openai",
            "gpt-x",
        )
        assert first.system == "be brief" and first.messages == body["messages"]
        assert first.last_user_text == "q1" and first.stream is False
        assert first.headers["authorization"] == "Bearer k" and first.headers["x-custom"] == "1"
        assert json.loads(first.raw) == body == first.body
        assert first.at <= second.at <= time.time()
        assert second.api == "anthropic" and second.system == "You are Claude Code."
        assert second.stream is True and second.query == {"beta": "true"}
        assert second.last_user_text == "q2"
        srv.clear_requests()
        assert srv.requests == []


# -- thread mode and CLI -----------------------------------------------------------------


def sync_post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_thread_mode() -> None:
    with ScriptedLLMServer([Reply(text="from a thread")]).running() as srv:
        status, data = sync_post(f"{srv.openai_base_url}/chat/completions", chat())
        assert status == 200 and data["choices"][0]["message"]["content"] == "from a thread"
        srv.add({"text": "added later"})
        status, data = sync_post(f"{srv.url}/v1/messages", anthropic_body())
        assert data["content"][0]["text"] == "added later"
        status, data = sync_post(f"{srv.url}/v1/messages", anthropic_body())
        assert status == 500
        assert len(srv.requests) == 3
    started = time.monotonic()
    hanging = ScriptedLLMServer([Reply(fault=Fault.hang())]).start_in_thread()
    with pytest.raises(OSError):
        urllib.request.urlopen(hanging.url + "/v1/chat/completions", b"{}", timeout=0.2)
    hanging.stop_thread()
    assert time.monotonic() - started < 3


def test_cli_subprocess(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"script": [{"text": "from the CLI"}], "default": {"text": "d"}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_call.testing", "--port", "0", "--script", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        status, data = sync_post(f"{url}/v1/chat/completions", chat())
        assert data["choices"][0]["message"]["content"] == "from the CLI"
        status, data = sync_post(f"{url}/v1/chat/completions", chat())
        assert status == 200 and data["choices"][0]["message"]["content"] == "d"
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


# -- official SDKs as clients ------------------------------------------------------------


async def test_openai_sdk() -> None:
    openai = pytest.importorskip("openai")
    tool = ToolCall("get_weather", {"city": "Paris"})
    script = [
        Reply(text="Hello from the script"),
        Reply(text="streamed answer here", prompt_tokens=3, completion_tokens=4),
        Reply(tool_calls=[tool]),
    ]
    async with ScriptedLLMServer(script) as srv:
        client = openai.AsyncOpenAI(base_url=srv.openai_base_url, api_key="x", max_retries=0)
        async with client:
            answer = await client.chat.completions.create(model="gpt-4o", messages=USER)
            assert answer.choices[0].message.content == "Hello from the script"
            assert answer.usage.total_tokens == answer.usage.prompt_tokens + 4
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
            texts, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    texts.append(chunk.choices[0].delta.content or "")
                if chunk.usage:
                    usage = chunk.usage
            assert "".join(texts) == "streamed answer here"
            assert usage is not None and usage.total_tokens == 7
            answer = await client.chat.completions.create(model="gpt-4o", messages=USER)
            call = answer.choices[0].message.tool_calls[0]
            assert call.function.name == "get_weather"
            assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_embeddings_with_the_openai_sdk_float_base64_and_faults() -> None:
    openai = pytest.importorskip("openai")
    from llm_call.testing import embedding_vector

    script = [
        Reply(fault=Fault.http(503), match_text="second"),
        Reply(model="emb-shown", prompt_tokens=9, match_text="tagged"),
    ]
    async with ScriptedLLMServer(script, default=Reply(times=None)) as srv:
        async with openai.AsyncOpenAI(base_url=srv.openai_base_url, api_key="x", max_retries=0) as client:
            floats = await client.embeddings.create(
                model="emb", input=["first", "two words"], dimensions=5, encoding_format="float"
            )
            assert [d.embedding for d in floats.data] == [embedding_vector("first", 5), embedding_vector("two words", 5)]
            assert [d.index for d in floats.data] == [0, 1]
            assert floats.usage.prompt_tokens == 3 and floats.model == "emb"
            # the SDK asks for base64 when no format is given, and decodes it itself
            packed = await client.embeddings.create(model="emb", input="tagged")
            assert srv.requests[-1].body["encoding_format"] == "base64"
            assert packed.data[0].embedding == embedding_vector("tagged")
            assert packed.model == "emb-shown" and packed.usage.prompt_tokens == 9
            with pytest.raises(openai.InternalServerError) as failed:
                await client.embeddings.create(model="emb", input=["first", "second"])
            assert failed.value.status_code == 503
            with pytest.raises(openai.BadRequestError, match="input must be"):
                await client.embeddings.create(model="emb", input=[{"not": "text"}])  # type: ignore[list-item]
    assert srv.requests[0].path == "/v1/embeddings" and srv.requests[0].api == "openai"
    assert srv.requests[0].last_user_text == "first\ntwo words"


async def test_anthropic_sdk() -> None:
    anthropic = pytest.importorskip("anthropic")
    tool = ToolCall("get_weather", {"city": "Paris", "days": 3})
    script = [
        Reply(text="Hello from the script"),
        Reply(text="streamed answer here"),
        Reply(text="Let me check", tool_calls=[tool]),
        Reply(fault=Fault.http(529)),
    ]
    async with ScriptedLLMServer(script) as srv:
        client = anthropic.AsyncAnthropic(
            base_url=srv.anthropic_base_url, api_key="x", max_retries=0
        )
        async with client:
            message = await client.messages.create(model="claude-x", max_tokens=100, messages=USER)
            assert message.content[0].text == "Hello from the script"
            assert message.stop_reason == "end_turn"
            async with client.messages.stream(
                model="claude-x", max_tokens=100, messages=USER
            ) as stream:
                texts = [t async for t in stream.text_stream]
                final = await stream.get_final_message()
            assert "".join(texts) == "streamed answer here" and len(texts) == 3
            assert final.content[0].text == "streamed answer here"
            assert final.usage.output_tokens == 3
            async with client.messages.stream(
                model="claude-x", max_tokens=100, messages=USER
            ) as stream:
                final = await stream.get_final_message()
            assert final.stop_reason == "tool_use"
            assert final.content[0].text == "Let me check"
            assert final.content[1].name == "get_weather"
            assert final.content[1].input == {"city": "Paris", "days": 3}
            with pytest.raises(anthropic.APIStatusError) as info:
                await client.messages.create(model="claude-x", max_tokens=10, messages=USER)
            assert info.value.status_code == 529


def claude_cli() -> Path | None:
    try:
        import claude_agent_sdk
    except ImportError:
        return None
    path = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return path if path.exists() else None


@pytest.mark.skipif(claude_cli() is None, reason="the bundled Claude Code CLI is not installed")
def test_claude_code_cli_with_tool_use(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write = ToolCall("Write", {"file_path": str(target), "content": "written by the CLI\n"})
    script = [Reply(text="I'll write it", tool_calls=[write]), Reply(text="Wrote the file")]
    with ScriptedLLMServer(script, default=Reply(text="extra", times=None)).running() as srv:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "ANTHROPIC_BASE_URL": srv.anthropic_base_url,
            "ANTHROPIC_API_KEY": "sk-test",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
        args = ["-p", "write the file", "--output-format", "json", "--model", "claude-sonnet-4-5"]
        proc = subprocess.run(
            [str(claude_cli()), *args, "--permission-mode", "acceptEdits"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"] == "Wrote the file" and result["is_error"] is False
    assert target.read_text() == "written by the CLI\n"
    calls = [r for r in srv.requests if r.path == "/v1/messages"]
    assert calls[0].stream and calls[0].query == {"beta": "true"}
    assert "write the file" in calls[0].last_user_text
    assert "File created successfully" in calls[1].last_user_text
