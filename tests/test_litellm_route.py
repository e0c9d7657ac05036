"""The LiteLLM route (every model string that is not max/, local/, openai/ or a configured
endpoint) against the scripted server's Anthropic ``/v1/messages``: answers, streams, and
LiteLLM's errors translated to llm_call's typed errors.

All litellm-importing tests live in this module: the import costs ~3 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import llm_call
from llm_call import (
    AuthError,
    Chunk,
    ConfigError,
    MalformedResponse,
    ModelNotFound,
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    RateLimited,
    StreamInterrupted,
    UsageError,
)
from llm_call.errors import error_to_dict
from llm_call.testing import Fault, Reply, ScriptedLLMServer, ToolCall

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("litellm")

MODEL = "anthropic/claude-x"
# LiteLLM's own pydantic models warn about TypedDict ReadOnly items on first use
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning")


@pytest.fixture
async def srv(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ScriptedLLMServer]:
    async with ScriptedLLMServer(default=Reply(text="default answer", times=None)) as server:
        monkeypatch.setenv("ANTHROPIC_API_BASE", server.anthropic_base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        yield server


async def collect(model: str = MODEL, prompt: str = "hi", **kw: Any) -> list[Chunk]:
    return [c async for c in llm_call.astream(model, prompt, **kw)]


async def test_anthropic_model_answers_through_litellm(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="Bonjour", prompt_tokens=9, completion_tokens=2))
    resp = await llm_call.acall(MODEL, "Say hello in French", system="Be polite.", max_tokens=50)
    assert resp.text == "Bonjour"
    assert resp.model == MODEL
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 2)
    assert resp.finish_reason == "stop"
    assert isinstance(resp.raw, dict)
    rec = srv.requests[0]
    assert rec.path == "/v1/messages"
    assert rec.model == "claude-x"
    assert rec.headers["x-api-key"] == "sk-ant-test"
    assert rec.system == "Be polite."
    assert rec.last_user_text == "Say hello in French"
    assert rec.body["max_tokens"] == 50


async def test_litellm_stream(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["Un ", "deux ", "trois"], completion_tokens=3))
    chunks = await collect(prompt="count")
    assert "".join(c.text for c in chunks) == "Un deux trois"
    assert [c.text for c in chunks if c.text]  # text arrived as deltas
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None and last.usage.completion_tokens == 3
    assert srv.requests[0].stream


WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


async def test_tool_calls_through_litellm_answer_and_stream(srv: ScriptedLLMServer) -> None:
    call = ToolCall("get_weather", {"city": "Oslo"}, id="toolu_1")
    srv.add(Reply(tool_calls=[call]), Reply(tool_calls=[call]))
    resp = await llm_call.acall(MODEL, "weather?", tools=[WEATHER], max_tokens=50)
    assert resp.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.parsed_arguments()) for c in resp.tool_calls] == [("toolu_1", "get_weather", {"city": "Oslo"})]
    assert srv.requests[0].tools[0]["name"] == "get_weather"  # LiteLLM sent it in Anthropic's shape
    chunks = await collect(prompt="weather?", tools=[WEATHER], max_tokens=50)
    calls = llm_call.assemble_tool_calls(d for c in chunks for d in c.tool_calls)
    assert [(c.id, c.name, c.parsed_arguments()) for c in calls] == [("toolu_1", "get_weather", {"city": "Oslo"})]
    assert chunks[-1].finish_reason == "tool_calls"


async def test_openai_compatible_provider_through_litellm_with_api_base(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="via hosted vllm"))
    resp = await llm_call.acall("hosted_vllm/tiny", "hi", api_base=srv.openai_base_url)
    assert resp.text == "via hosted vllm"
    assert srv.requests[0].path == "/v1/chat/completions"
    assert srv.requests[0].model == "tiny"


async def test_unknown_provider_prefix_is_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown route 'nosuchprovider'") as info:
        await llm_call.acall("nosuchprovider/x", "hi", retry=False)
    assert info.value.hint is not None and "llm-call models" in info.value.hint


async def test_claude_only_option_is_usage_error(srv: ScriptedLLMServer) -> None:
    with pytest.raises(UsageError, match="allowed_tools"):
        await llm_call.acall(MODEL, "hi", allowed_tools=["Read"], retry=False)
    assert srv.requests == []


async def test_missing_key_is_auth_error_naming_the_variable(srv: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(AuthError, match="ANTHROPIC_API_KEY") as info:
        await llm_call.acall(MODEL, "hi", retry=False)
    assert info.value.hint is not None and "ANTHROPIC_API_KEY" in info.value.hint


async def test_401_is_auth_error_after_one_request(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(401)))
    with pytest.raises(AuthError) as info:
        await llm_call.acall(MODEL, "hi")
    assert info.value.model == MODEL
    assert info.value.hint is not None
    assert len(srv.requests) == 1


async def test_an_upstream_echoing_the_key_gets_it_scrubbed_from_the_error(srv: ScriptedLLMServer) -> None:
    """The error reaches HTTP clients of the server and the task store: the key is ``***`` there."""
    srv.add(Reply(fault=Fault.http(401, body='{"type": "error", "error": {"type": "authentication_error", '
                                          '"message": "the key sk-ant-test is not valid"}}')))
    srv.add(Reply(fault=Fault.http(500, body="upstream crashed on a request with the key sk-ant-test")))
    for _ in range(2):
        with pytest.raises(ProviderError) as info:
            await llm_call.acall(MODEL, "hi", retry=False)
        assert "sk-ant-test" not in json.dumps(error_to_dict(info.value))
        assert "sk-ant-test" not in str(info.value) and "***" in str(info.value)


async def test_an_unreachable_base_url_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM writes 'Cannot connect to host 10.0.0.5:11434' into its errors, which reach HTTP
    clients of the server: the address of the operator's base URL variable becomes its name."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_API_BASE", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    with pytest.raises(ProviderError) as info:
        await llm_call.acall(MODEL, "hi", retry=False)
    text = json.dumps(error_to_dict(info.value))
    assert f"127.0.0.1:{port}" not in text and "$ANTHROPIC_API_BASE" in text, text


async def test_429_is_rate_limited_with_retry_after_after_one_request(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(429, headers={"Retry-After": "3"})))
    with pytest.raises(RateLimited) as info:
        await llm_call.acall(MODEL, "hi", retry=False)
    assert info.value.retry_after == 3.0
    assert len(srv.requests) == 1  # LiteLLM and the SDK under it did not retry


async def test_429_on_stream_is_rate_limited(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(429)))
    with pytest.raises(RateLimited):
        await collect(retry=False)
    assert len(srv.requests) == 1


async def test_404_is_model_not_found(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(404)))
    with pytest.raises(ModelNotFound):
        await llm_call.acall(MODEL, "hi", retry=False)


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_is_provider_http_error(srv: ScriptedLLMServer, status: int) -> None:
    srv.add(Reply(fault=Fault.http(status)))
    with pytest.raises(ProviderHTTPError) as info:
        await llm_call.acall(MODEL, "hi", retry=False)
    assert info.value.status is not None and info.value.status >= 500


@pytest.mark.parametrize("fault", [Fault.html(), Fault.truncated_json(), Fault.malformed_json()], ids=["html", "truncated", "malformed"])
async def test_unusable_body_is_malformed_response(srv: ScriptedLLMServer, fault: Fault) -> None:
    srv.add(Reply(text="an answer long enough to be cut in half", fault=fault))
    with pytest.raises(MalformedResponse):
        await llm_call.acall(MODEL, "hi", retry=False)


async def test_connection_reset_is_connection_error(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.reset()))
    with pytest.raises(ProviderConnectionError):
        await llm_call.acall(MODEL, "hi", retry=False)


async def test_cut_stream_is_stream_interrupted_with_partial(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["one ", "two ", "three"], fault=Fault.cut_stream(after_chunks=2)))
    seen: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for chunk in llm_call.astream(MODEL, "count", retry=False):
            seen.append(chunk.text)
    assert "".join(seen) == info.value.partial
    assert "three" not in (info.value.partial or "")



async def test_a_continued_stream_prefills_the_partial_answer_on_anthropic(srv: ScriptedLLMServer) -> None:
    """Anthropic continues a last assistant message, so the rescue sends the partial answer
    (without its trailing space, which Anthropic refuses) as that message and no instruction; the
    continuation's leading space is not sent twice."""
    srv.add(Reply(chunks=["one ", "two ", "three"], fault=Fault.cut_stream(after_chunks=2)))
    srv.add(Reply(chunks=[" three", " four"]))
    chunks = await collect(prompt="count", stream_rescue="continue", retry={"max_retries": 1, "base_delay": 0})
    assert "".join(c.text for c in chunks) == "one two three four"
    (marker,) = [c for c in chunks if c.event == "retry"]
    assert marker.data and marker.data["rescue"] == "continue" and marker.data["kept_chars"] == len("one two ")
    messages = srv.requests[1].body["messages"]
    assert messages[-1] == {"role": "assistant", "content": [{"type": "text", "text": "one two"}]}
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_cli_ask_through_litellm(tmp_path: Path) -> None:
    """Done-when: ``llm-call ask -m anthropic/claude-x`` with LiteLLM's Anthropic base URL
    pointed at the scripted server prints its answer."""
    llm_call_bin = str(Path(sys.executable).parent / "llm-call")
    with ScriptedLLMServer([Reply(text="answer via litellm")]).running() as server:
        env = {**os.environ, "ANTHROPIC_BASE_URL": server.anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant-cli"}
        proc = subprocess.run(
            [llm_call_bin, "ask", "-m", MODEL, "hi"], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "answer via litellm\n"
        assert server.requests[0].path == "/v1/messages"
        server.add(Reply(fault=Fault.http(401)))
        proc = subprocess.run(
            [llm_call_bin, "ask", "-m", MODEL, "hi"], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1
        assert "AuthError" in proc.stderr and MODEL in proc.stderr


async def test_a_tool_schema_that_expands_exponentially_is_refused_before_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM inlines every $ref of a Gemini tool schema without a bound: 30 levels of $defs that
    each refer twice to the one below (a few KB) took gigabytes on a thread that cannot be
    stopped. 16 levels here (65,536 nodes) show it without the cost."""
    monkeypatch.setenv("GEMINI_API_KEY", "x")
    monkeypatch.setenv("GEMINI_API_BASE", "http://127.0.0.1:9")  # never the network
    defs: dict[str, Any] = {"s0": {"type": "string"}}
    for i in range(1, 17):
        defs[f"s{i}"] = {"type": "object", "properties": {"l": {"$ref": f"#/$defs/s{i - 1}"}, "r": {"$ref": f"#/$defs/s{i - 1}"}}}
    parameters = {"type": "object", "properties": {"x": {"$ref": "#/$defs/s16"}}, "$defs": defs}
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    with pytest.raises(UsageError, match=r"tools\[0\]\.function\.parameters expands to more than"):
        await llm_call.acall("gemini/gemini-1.5-pro", "hi", tools=tools)
    recursive = {"type": "object", "properties": {"n": {"$ref": "#/$defs/node"}},
                 "$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}}
    tree = [{"type": "function", "function": {"name": "f", "parameters": recursive}}]
    with pytest.raises(ProviderConnectionError):  # a recursive (tree) schema is fine: it is sent
        await llm_call.acall("gemini/gemini-1.5-pro", "hi", tools=tree, retry=False)


@pytest.mark.parametrize("streamed", [False, True])
async def test_litellm_is_imported_off_the_event_loop(
    srv: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """Importing litellm runs ~3 s of module code: done on the event loop's thread, the first
    LiteLLM call of a server froze every other request, stream and heartbeat meanwhile."""
    import threading

    from llm_call.providers import litellm as route
    from llm_call.types import Request

    threads: list[threading.Thread] = []
    real = route.import_litellm

    def recording() -> Any:
        threads.append(threading.current_thread())
        return real()

    monkeypatch.setattr(route, "import_litellm", recording)
    provider = route.LiteLLMProvider()  # a fresh one: nothing imported through it yet
    srv.add(Reply(text="fine"))
    request = Request(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    if streamed:
        text = "".join([c.text async for c in provider.stream(request)])
    else:
        text = (await provider.complete(request)).text
    assert text == "fine"
    assert threads and all(t is not threading.main_thread() for t in threads), threads


async def test_embeddings_through_litellm_retry_a_503_and_decode_base64() -> None:
    from llm_call.testing import embedding_vector

    async with ScriptedLLMServer([Reply(fault=Fault.http(503))], default=Reply(times=None, prompt_tokens=4)) as up:
        result = await llm_call.aembed(
            "hosted_vllm/e5", ["hello world", "b"], api_base=up.openai_base_url, api_key="k",
            dimensions=6, encoding_format="base64", retry=llm_call.ManualClock().policy(),
        )
    assert result.vectors == [embedding_vector("hello world", 6), embedding_vector("b", 6)]
    assert result.model == "hosted_vllm/e5" and result.usage.prompt_tokens == 4
    assert [a.kind for a in result.attempts] == ["provider_error", "answer"]
    assert up.requests[-1].path == "/v1/embeddings"
    assert {k: up.requests[-1].body[k] for k in ("model", "input", "dimensions")} == {"model": "e5", "input": ["hello world", "b"], "dimensions": 6}
