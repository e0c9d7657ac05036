"""``POST /v1/chat/completions`` and ``GET /v1/models`` on a real port, with the official openai
SDK as the client and the scripted LLM server as the upstream (endpoint ``up``)."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from llm_call.testing import Fault, Reply, ToolCall
from support.llm_server import Served, serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]
NO_RETRY = {"max_retries": 0}


def _sse_events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def test_chat_completion(serve_llm: Any) -> None:
    served: Served = serve_llm([Reply(text="Paris is the capital.", prompt_tokens=7, completion_tokens=4)])
    client = served.client()
    answer = client.chat.completions.create(
        model="up/x", messages=[{"role": "user", "content": "capital of France?"}], temperature=0.2, seed=3
    )
    assert answer.choices[0].message.content == "Paris is the capital."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "up/x"
    assert answer.usage is not None and answer.usage.prompt_tokens == 7 and answer.usage.completion_tokens == 4
    extra = answer.model_extra["llm_call"]
    assert extra["model"] == "up/x"
    assert extra["attempts"] and extra["attempts"][-1]["ok"] is True
    sent = served.upstream.requests[-1].body
    assert sent["messages"] == [{"role": "user", "content": "capital of France?"}]
    assert sent["temperature"] == 0.2 and sent["seed"] == 3


def test_streaming_text_reassembled_with_usage_chunk(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="one two three four five", completion_tokens=5)])
    stream = served.client().chat.completions.create(
        model="up/x", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    parts: list[str] = []
    usage = None
    finish = None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == "one two three four five"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 5


WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def test_tool_calls_non_streamed(serve_llm: Any) -> None:
    served = serve_llm([Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"}, id="call_9")])])
    answer = served.client().chat.completions.create(
        model="up/x", messages=HI, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("call_9", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    sent = served.upstream.requests[-1].body
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False


def test_streamed_tool_calls_reach_the_client(serve_llm: Any) -> None:
    calls = [ToolCall("get_weather", {"city": "Oslo"}, id="call_1"), ToolCall("get_weather", {"city": "Rome"}, id="call_2")]
    served = serve_llm([Reply(text="Let me check.", tool_calls=calls)])
    client = served.client()
    with client.chat.completions.stream(model="up/x", messages=HI, tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "Let me check."
    assert message.tool_calls is not None
    got = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
    assert got == [("call_1", "get_weather", {"city": "Oslo"}), ("call_2", "get_weather", {"city": "Rome"})]


def test_streamed_tool_call_deltas_are_fragments_in_openai_format(serve_llm: Any) -> None:
    served = serve_llm([Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"}, id="call_1")])])
    body = {"model": "up/x", "messages": HI, "stream": True, "tools": [WEATHER]}
    with httpx.stream("POST", served.base_url + "/chat/completions", json=body) as r:
        events = _sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [d for c in chunks for ch in c["choices"] for d in ch["delta"].get("tool_calls", [])]
    assert deltas[0] == {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    assert all(set(d) == {"index", "function"} for d in deltas[1:]) and len(deltas) > 2
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"city": "Oslo"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_client_tools_on_the_claude_cli_route_are_400_saying_why(serve_llm: Any) -> None:
    served = serve_llm()
    with pytest.raises(openai.BadRequestError, match="runs its own tools"):
        served.client().chat.completions.create(model="max/sonnet", messages=HI, tools=[WEATHER])
    assert served.upstream.requests == []


def test_stream_ends_with_done_marker(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="a b c")])
    with httpx.stream("POST", served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"


def test_stream_cut_midway_gives_error_event_not_clean_end(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="one two three four five six", fault=Fault.cut_stream(after_chunks=2))], retry=NO_RETRY)
    with httpx.stream("POST", served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "stream": True}) as r:
        assert r.status_code == 200
        events = _sse_events(r.read().decode())
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["code"] == "StreamInterrupted"
    assert last["error"]["type"] == "upstream_error"
    texts = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert "".join(texts).startswith("one")


def test_stream_cut_midway_raises_in_the_sdk(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="one two three four five six", fault=Fault.cut_stream(after_chunks=2))], retry=NO_RETRY)
    stream = served.client().chat.completions.create(model="up/x", messages=HI, stream=True)
    with pytest.raises(openai.APIError, match="interrupted"):
        for _ in stream:
            pass


def test_stream_failing_before_first_chunk_gets_http_status(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(500))], retry=NO_RETRY)
    with pytest.raises(openai.InternalServerError) as info:
        served.client().chat.completions.create(model="up/x", messages=HI, stream=True)
    assert info.value.status_code == 502
    assert info.value.code == "ProviderHTTPError"


def test_unknown_model_is_not_found(serve_llm: Any) -> None:
    served = serve_llm()
    with pytest.raises(openai.NotFoundError) as info:
        served.client().chat.completions.create(model="no-such-model", messages=HI)
    assert info.value.code == "model_not_found"
    assert "no-such-model" in info.value.message


def test_upstream_404_is_not_found(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(404))], retry=NO_RETRY)
    with pytest.raises(openai.NotFoundError):
        served.client().chat.completions.create(model="up/x", messages=HI)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "up/x", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"model": "up/x", "messages": HI, "bogus_field": 1}, "bogus_field"),
        ({"model": "up/x", "messages": []}, "messages"),
        ({"model": "up/x"}, "messages"),
        ({"model": "up/x", "messages": HI, "temperature": 9}, "temperature"),
        ({"model": "up/x", "messages": HI, "max_attempts": 0}, "max_attempts"),
        ({"model": "up/x", "messages": HI, "n": 2}, "n"),
    ],
)
def test_bad_request_names_the_field(serve_llm: Any, body: dict[str, Any], param: str) -> None:
    served = serve_llm()
    r = httpx.post(served.base_url + "/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"
    assert not served.upstream.requests


def test_bad_request_raises_sdk_bad_request_error(serve_llm: Any) -> None:
    served = serve_llm()
    with pytest.raises(openai.BadRequestError) as info:
        served.client().chat.completions.create(model="up/x", messages=HI, extra_body={"validaton": ["json"]})
    assert info.value.param == "validaton"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_body_that_is_not_a_json_object_is_400(serve_llm: Any, raw: bytes) -> None:
    served = serve_llm()
    r = httpx.post(served.base_url + "/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["message"]


def test_claude_only_options_on_another_route_are_400(serve_llm: Any) -> None:
    served = serve_llm()
    with pytest.raises(openai.BadRequestError, match="allowed_tools"):
        served.client().chat.completions.create(model="up/x", messages=HI, extra_body={"allowed_tools": ["Read"]})


def test_upstream_failures_map_to_502(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(503)), Reply(fault=Fault.malformed_json()), Reply(fault=Fault.reset())], retry=NO_RETRY)
    client = served.client()
    codes = []
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="up/x", messages=HI)
        assert info.value.status_code == 502
        body = info.value.body
        assert isinstance(body, dict)
        codes.append(body["code"])
    assert codes == ["ProviderHTTPError", "MalformedResponse", "ProviderConnectionError"]


def test_upstream_unreachable_is_502(serve_llm: Any) -> None:
    served = serve_llm(retry=NO_RETRY, endpoints={"down": {"base_url": "http://127.0.0.1:9/v1"}})
    with pytest.raises(openai.APIStatusError) as info:
        served.client().chat.completions.create(model="down/x", messages=HI)
    assert info.value.status_code == 502
    assert info.value.code == "ProviderConnectionError"


def test_upstream_rate_limit_is_429_with_retry_after(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(429, {"Retry-After": "7"}))], retry=NO_RETRY)
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "RateLimited"


def test_upstream_timeout_is_504(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.hang())], retry=NO_RETRY, openai={"read_timeout": 0.3})
    with pytest.raises(openai.APIStatusError) as info:
        served.client().chat.completions.create(model="up/x", messages=HI)
    assert info.value.status_code == 504
    assert info.value.code == "ProviderTimeout"


def test_server_request_timeout_is_504(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.hang())], server={"request_timeout": 0.3})
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "request_timeout"


def test_oversized_body_is_413(serve_llm: Any) -> None:
    served = serve_llm(server={"max_body_bytes": 2000})
    big = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as info:
        served.client().chat.completions.create(model="up/x", messages=big)  # type: ignore[arg-type]
    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"
    assert not served.upstream.requests


def test_oversized_chunked_body_is_413(serve_llm: Any) -> None:
    served = serve_llm(server={"max_body_bytes": 2000})

    def pieces() -> Any:
        yield b'{"model": "up/x", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    r = httpx.post(served.base_url + "/chat/completions", content=pieces(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert not served.upstream.requests


def test_bad_validation_spec_is_422_naming_it(serve_llm: Any) -> None:
    served = serve_llm()
    with pytest.raises(openai.UnprocessableEntityError) as info:
        served.client().chat.completions.create(
            model="up/x", messages=HI, extra_body={"validation": ["json", "no_such_validator:1"]}
        )
    assert info.value.param == "validation.1"
    assert "no_such_validator" in info.value.message
    assert not served.upstream.requests


def test_an_unknown_field_near_a_known_one_names_the_field_meant(serve_llm: Any) -> None:
    served = serve_llm()
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "max_tokns": 5})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "unrecognized request argument supplied: max_tokns; did you mean 'max_tokens'?"
    assert r.json()["error"]["param"] == "max_tokns"
    r = httpx.post(served.base_url + "/tasks", json={"model": "up/x", "promt": "hi"})
    assert r.status_code == 400
    assert "did you mean 'prompt'?" in r.json()["error"]["message"]
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "zzzzzz": 1})
    assert r.json()["error"]["message"] == "unrecognized request argument supplied: zzzzzz"
    assert not served.upstream.requests


def test_validation_spec_reading_server_files_is_refused(serve_llm: Any) -> None:
    served = serve_llm()
    r = httpx.post(served.base_url + "/chat/completions",
                   json={"model": "up/x", "messages": HI, "validation": ["schema:@/etc/passwd"]})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "validation.0"


def test_validation_retries_and_reports_attempts(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="no digits here"), Reply(text="42")])
    answer = served.client().chat.completions.create(
        model="up/x", messages=HI, extra_body={"validation": [r"regex:^\d+$"], "max_attempts": 3}
    )
    assert answer.choices[0].message.content == "42"
    attempts = answer.model_extra["llm_call"]["attempts"]
    answers = [a for a in attempts if a["kind"] == "answer"]
    assert [a["ok"] for a in answers] == [False, True]
    assert len(served.upstream.requests) == 2


def test_validation_exhausted_is_502_with_attempts(serve_llm: Any) -> None:
    served = serve_llm(default=Reply(text="never a number"))
    r = httpx.post(served.base_url + "/chat/completions", json={
        "model": "up/x", "messages": HI, "validation": [r"regex:^\d+$"], "max_attempts": 2})
    assert r.status_code == 502
    body = r.json()
    assert body["error"]["code"] == "ValidationExhausted"
    assert len([a for a in body["llm_call"]["attempts"] if a["kind"] == "answer"]) == 2


def test_fallbacks_answer_when_the_first_model_fails(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(503), match_model="x"), Reply(text="from y", match_model="y")], retry=NO_RETRY)
    answer = served.client().chat.completions.create(model="up/x", messages=HI, extra_body={"fallbacks": ["up/y"]})
    assert answer.choices[0].message.content == "from y"
    assert answer.model == "up/y"


def test_concurrency_limit_per_key_is_429(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="slow", latency=2.0)], server={"max_concurrent_per_key": 1})
    results: dict[str, Any] = {}

    def slow() -> None:
        results["slow"] = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI}, timeout=30)

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 20
    while not served.upstream.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    second = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI})
    t.join(30)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert results["slow"].status_code == 200
    # the slot is free again
    assert httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI}).status_code == 200


def test_big_bodies_count_as_more_requests_in_flight(serve_llm: Any) -> None:
    """A waiting request costs tens of kilobytes, one holding a 10 MB body tens of megabytes: a
    key's requests in flight bound its memory only if a body counts once per 64 KiB."""
    served = serve_llm([Reply(text="slow", latency=2.0, match_text="slow")], server={"max_concurrent_per_key": 8})
    big = "x" * 300_000  # five 64 KiB units: counts as 5 of the key's 8

    def chat(text: str) -> httpx.Response:
        return httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": [{"role": "user", "content": text}]}, timeout=30)

    results: dict[str, Any] = {}
    t = threading.Thread(target=lambda: results.setdefault("slow", chat("slow " + big)))
    t.start()
    deadline = time.monotonic() + 20
    while not served.upstream.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    heavy = chat("another " + big)  # 5 + 5 > 8
    light = chat("hi")  # 5 + 1 <= 8
    t.join(30)
    assert heavy.status_code == 429 and heavy.json()["error"]["code"] == "concurrency_limit_exceeded", heavy.text
    assert light.status_code == 200 and results["slow"].status_code == 200
    assert chat("again " + big).status_code == 200  # alone again: admitted


def test_models_lists_usable_routes(serve_llm: Any) -> None:
    served = serve_llm(aliases={"fast": {"model": "up/x", "description": "quick"}})
    models = served.client().models.list()
    ids = {m.id for m in models.data}
    assert {"up/*", "fast"} <= ids
    assert all(m.model_extra["llm_call"]["available"] for m in models.data)
    one = served.client().models.retrieve("fast")
    assert one.model_extra["llm_call"]["kind"] == "alias"
    with pytest.raises(openai.NotFoundError):
        served.client().models.retrieve("nothing-like-this")


def test_unknown_path_and_method_use_the_error_shape(serve_llm: Any) -> None:
    served = serve_llm()
    r = httpx.get(served.base_url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(served.base_url + "/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_request_id_is_echoed(serve_llm: Any) -> None:
    served = serve_llm()
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI},
                   headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["id"] == "chatcmpl-abc-123"
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI},
                   headers={"x-request-id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "llm_call.server.access"]


def _chat_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [ln for ln in _access_lines(caplog) if ln["route"] == "/v1/chat/completions"]


def test_one_structured_log_line_per_request_without_prompt(serve_llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_call.server.access")
    served = serve_llm(server={"api_keys": ["sekret-key-123"]})
    client = served.client(api_key="sekret-key-123")
    client.chat.completions.create(model="up/x", messages=[{"role": "user", "content": "PROMPT-TEXT-XYZ"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)
    # the access line is written once the response is sent: the client can be faster than that
    assert _wait_until(lambda: len(_chat_lines(caplog)) == 2)
    chat = _chat_lines(caplog)
    ok, missing = chat
    assert ok["status"] == 200 and ok["model"] == "up/x" and ok["attempts"] == 1 and ok["key"] == "key1"
    assert isinstance(ok["latency_ms"], float) and ok["id"]
    assert missing["status"] == 404 and missing["error"] == "ConfigError"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "PROMPT-TEXT-XYZ" not in text
    assert "sekret-key-123" not in text


def test_debug_logs_include_the_prompt(serve_llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_call.server.access")
    served = serve_llm(server={"debug": True})
    served.client().chat.completions.create(model="up/x", messages=[{"role": "user", "content": "PROMPT-TEXT-XYZ"}])
    assert _wait_until(lambda: len(_chat_lines(caplog)) == 1)
    (line,) = _chat_lines(caplog)
    assert line["prompt"] == [{"role": "user", "content": "PROMPT-TEXT-XYZ"}]


def test_health_and_metrics(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="ok", prompt_tokens=3, completion_tokens=2)])
    served.client().chat.completions.create(model="up/x", messages=HI)
    with pytest.raises(openai.NotFoundError):
        served.client().chat.completions.create(model="nope", messages=HI)
    health = httpx.get(served.url + "/health")
    assert health.status_code == 200
    assert health.json()["ready"] is True and health.json()["checks"]["store"]["ok"] is True
    text = httpx.get(served.url + "/metrics").text
    assert 'llm_call_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'llm_call_http_requests_total{method="POST",route="/v1/chat/completions",status="404"} 1.0' in text
    assert 'llm_call_http_request_duration_seconds_bucket{le="600.0",method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'llm_call_tokens_total{key="anonymous",model="up/*",type="prompt"} 3.0' in text
    assert 'llm_call_tokens_total{key="anonymous",model="up/*",type="completion"} 2.0' in text
    assert 'llm_call_tasks{status="queued"} 0.0' in text
    assert "llm_call_task_queue_depth 0.0" in text
    assert 'llm_call_upstream_errors_total{type="ConfigError"} 1.0' in text
    assert 'llm_call_circuit_breaker_state{route="endpoint:up"} 0.0' in text


def test_tokens_and_cost_are_counted_per_key(serve_llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An operator sharing one upstream account (a Claude subscription above all) sees which key
    used what: on /metrics and on each request's log line, for whole and streamed answers of the
    three APIs."""
    caplog.set_level(logging.INFO, logger="llm_call.server.access")
    served = serve_llm([Reply(text="ok", prompt_tokens=3, completion_tokens=2, times=None)],
                       server={"api_keys": ["key-a-123", "key-b-456"]})
    served.client(api_key="key-a-123").chat.completions.create(model="up/x", messages=HI)
    b = {"authorization": "Bearer key-b-456"}
    streams = [
        ("/v1/chat/completions", {"model": "up/x", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/messages", {"model": "up/x", "max_tokens": 50, "messages": HI, "stream": True}),
        ("/v1/responses", {"model": "up/x", "input": "hi", "stream": True}),
    ]
    for path, body in streams:
        with httpx.stream("POST", served.url + path, json=body, headers=b, timeout=30) as r:
            assert r.status_code == 200, r.read()
            r.read()
    text = httpx.get(served.url + "/metrics", headers=b).text
    assert 'llm_call_tokens_total{key="key1",model="up/*",type="prompt"} 3.0' in text
    assert 'llm_call_tokens_total{key="key2",model="up/*",type="prompt"} 9.0' in text  # all three streams
    assert 'llm_call_tokens_total{key="key2",model="up/*",type="completion"} 6.0' in text
    assert _wait_until(lambda: len([ln for ln in _access_lines(caplog) if "tokens" in ln]) == 4)
    logged = [(ln["key"], ln["route"], ln["tokens"]) for ln in _access_lines(caplog) if "tokens" in ln]
    assert sorted(logged) == sorted(
        [("key1", "/v1/chat/completions", {"prompt": 3, "completion": 2})]
        + [("key2", path, {"prompt": 3, "completion": 2}) for path, _ in streams]
    )


def test_metrics_count_retries_and_validation_failures(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="abc"), Reply(text="7")])
    served.client().chat.completions.create(model="up/x", messages=HI, extra_body={"validation": [r"regex:^\d+$"]})
    text = httpx.get(served.url + "/metrics").text
    assert 'llm_call_retries_total{model="up/*"} 1.0' in text
    assert 'llm_call_validation_failures_total{model="up/*"} 1.0' in text


def _wait_until(predicate: Any, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_client_giving_up_cancels_the_upstream_call(serve_llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_call.server.access")
    served = serve_llm([Reply(fault=Fault.hang())])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI}, timeout=1.0)
    assert served.upstream.requests
    assert _wait_until(lambda: served.upstream.in_flight == 0), "the upstream call was left running"
    assert _wait_until(lambda: any(ln.get("error") == "client_disconnected" for ln in _access_lines(caplog)))


def test_client_leaving_a_stream_cancels_the_upstream_stream(serve_llm: Any) -> None:
    served = serve_llm([Reply(text=" ".join(["word"] * 50), chunk_delay=0.2)])
    with httpx.stream("POST", served.base_url + "/chat/completions",
                      json={"model": "up/x", "messages": HI, "stream": True}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    assert _wait_until(lambda: served.upstream.in_flight == 0), "the upstream stream was left running"


def test_client_giving_up_before_the_first_chunk_cancels_the_call(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.hang())])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "stream": True},
                   timeout=1.0)
    assert _wait_until(lambda: served.upstream.in_flight == 0), "the upstream call was left running"



def test_a_deadline_the_caller_set_is_a_400_budget_error_not_a_gateway_timeout(serve_llm: Any) -> None:
    """deadline_s is the caller's own budget: running out of it is not an upstream failure (504)."""
    served = serve_llm([], default=Reply(text="late", latency=2.0), retry=NO_RETRY)
    r = httpx.post(
        served.base_url + "/chat/completions",
        json={"model": "up/x", "messages": HI, "deadline_s": 0.2},
        timeout=30,
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "BudgetExceeded"
    assert "deadline_s=0.2" in error["message"]
