"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` on a real port, with the official
anthropic SDK as the client and the scripted LLM server (OpenAI wire format) as the upstream
(endpoint ``up``): the server translates Anthropic requests to the route and answers back in
Anthropic's shape."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pydantic
import pytest

from llm_call.testing import Fault, Reply, ToolCall
from support.llm_server import Served, serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]
NO_RETRY = {"max_retries": 0}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def _client(served: Served, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.url, api_key=api_key, max_retries=0, timeout=60)


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of an SSE body."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def _post_stream(served: Served, body: dict[str, Any]) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    with httpx.stream("POST", served.url + "/v1/messages", json={"stream": True, **body}, timeout=30) as r:
        raw = r.read().decode()
    return r.status_code, _events(raw) if r.status_code == 200 else [("http", json.loads(raw))]


def test_create_translates_request_and_answer(serve_llm: Any) -> None:
    served: Served = serve_llm([Reply(text="Paris is the capital.", prompt_tokens=11, completion_tokens=5)])
    message = _client(served).messages.create(
        model="up/x",
        max_tokens=300,
        system=[{"type": "text", "text": "Answer briefly."}, {"type": "text", "text": "Be exact.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "capital of France?"}]}],
        stop_sequences=["END"],
        extra_body={"temperature": 0.3, "top_p": 0.9},  # this SDK version has no arguments for them
        metadata={"user_id": "u-1"},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Paris is the capital.")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.model == "up/x"
    assert message.usage.input_tokens == 11 and message.usage.output_tokens == 5
    assert message.model_extra is not None and message.model_extra["llm_call"]["attempts"][-1]["ok"] is True
    sent = served.upstream.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly.\n\nBe exact."},
        {"role": "user", "content": "capital of France?"},
    ]
    assert sent["max_tokens"] == 300 and sent["temperature"] == 0.3 and sent["top_p"] == 0.9
    assert sent["stop"] == ["END"]
    assert "metadata" not in sent and "user" not in sent


def test_stream_text_and_exact_event_sequence(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="one two three four", completion_tokens=4), Reply(text="alpha beta")])
    with _client(served).messages.stream(model="up/x", max_tokens=50, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "one two three four" and len(pieces) > 1
    assert final.content[0].type == "text" and final.content[0].text == "one two three four"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4

    status, events = _post_stream(served, {"model": "up/x", "max_tokens": 50, "messages": HI})
    assert status == 200
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["message"]["content"] == [] and events[0][1]["message"]["role"] == "assistant"
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "alpha beta"
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"]["output_tokens"] > 0


def test_tools_translated_and_tool_use_answered(serve_llm: Any) -> None:
    served = serve_llm([Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"}, id="call_1")])])
    message = _client(served).messages.create(
        model="up/x", max_tokens=100, tools=[WEATHER], tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.id == "call_1" and block.name == "get_weather"
    assert block.input == {"city": "Paris"}
    sent = served.upstream.requests[-1].body
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                          "parameters": WEATHER["input_schema"]}}
    ]
    assert sent["tool_choice"] == "required"


def test_tool_result_round_trip_reaches_upstream_as_tool_messages(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="It is sunny in Paris.")])
    message = _client(served).messages.create(
        model="up/x", max_tokens=100, tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": [{"type": "text", "text": "sunny, 21 C"}]},
                {"type": "text", "text": "Summarise."},
            ]},
        ],
    )
    assert message.content[0].text == "It is sunny in Paris."
    sent = served.upstream.requests[-1].body
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_9", "content": "sunny, 21 C"},
        {"role": "user", "content": "Summarise."},
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False


def test_images_reach_upstream_as_image_parts(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="A red pixel and a cat.")])
    message = _client(served).messages.create(
        model="up/x", max_tokens=50,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "What are these?"},
        ]}],
    )
    assert message.content[0].text == "A red pixel and a cat."
    (user,) = served.upstream.requests[-1].body["messages"]
    assert user["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"},
    ]


def test_bad_request_is_anthropic_error_shape(serve_llm: Any) -> None:
    served = serve_llm()
    client = _client(served)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="up/x", max_tokens=10, messages=[])
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "messages" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="up/x", max_tokens=10, messages=HI,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])  # type: ignore[list-item]
    assert "server tool" in info.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(model="nosuchmodel", max_tokens=10, messages=HI)
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert served.upstream.requests == []


def test_upstream_failure_is_api_error_and_stream_cut_is_error_event(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(500))], retry=NO_RETRY)
    with pytest.raises(anthropic.APIStatusError) as info:
        _client(served).messages.create(model="up/x", max_tokens=10, messages=HI)
    assert info.value.status_code == 502
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "api_error"  # type: ignore[index]

    served.upstream.add(Reply(text="one two three four five", fault=Fault.cut_stream(after_chunks=2)))
    status, events = _post_stream(served, {"model": "up/x", "max_tokens": 50, "messages": HI})
    assert status == 200
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "error"
    assert "message_stop" not in names
    assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"] == "api_error"
    with pytest.raises(anthropic.APIStatusError):
        served.upstream.add(Reply(text="one two three four five", fault=Fault.cut_stream(after_chunks=2)))
        with _client(served).messages.stream(model="up/x", max_tokens=50, messages=HI) as stream:
            list(stream.text_stream)


def test_count_tokens(serve_llm: Any) -> None:
    served = serve_llm()
    client = _client(served)
    short = client.messages.count_tokens(model="up/x", messages=HI)
    longer = client.messages.count_tokens(
        model="up/x", system="You answer questions about the weather.", tools=[WEATHER],
        messages=[{"role": "user", "content": "What is the weather like in Paris today, and tomorrow?"}],
    )
    assert 0 < short.input_tokens < longer.input_tokens
    assert 25 <= longer.input_tokens <= 150  # ~90 words and a tool schema
    assert served.upstream.requests == []  # an estimate: no model call


def test_keys_as_x_api_key_or_bearer(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="first"), Reply(text="second")], server={"api_keys": ["sekret"]})
    assert _client(served, "sekret").messages.create(model="up/x", max_tokens=10, messages=HI).content[0].text == "first"
    bearer = anthropic.Anthropic(base_url=served.url, auth_token="sekret", max_retries=0)
    assert bearer.messages.create(model="up/x", max_tokens=10, messages=HI).content[0].text == "second"
    with pytest.raises(anthropic.AuthenticationError) as info:
        _client(served, "wrong").messages.create(model="up/x", max_tokens=10, messages=HI)
    assert info.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid API key"}}


def test_claude_code_headers_and_fields_tolerated(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="fine")])
    body = {
        "model": "up/x", "max_tokens": 32000, "messages": HI, "stream": False,
        "thinking": {"type": "adaptive"}, "context_management": {"edits": []}, "output_config": {"effort": "medium"},
        "metadata": {"user_id": "{}"},
    }
    r = httpx.post(served.url + "/v1/messages?beta=true", json=body,
                   headers={"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"})
    assert r.status_code == 200, r.text
    assert r.json()["content"] == [{"type": "text", "text": "fine"}]


def test_glob_alias_maps_claude_model_names(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="from up")], aliases={"claude-*": "up/x"})
    message = _client(served).messages.create(model="claude-sonnet-4-5-20250929", max_tokens=10, messages=HI)
    assert message.content[0].text == "from up" and message.model == "up/x"
    assert served.upstream.requests[-1].body["model"] == "x"


def test_validation_extra_retries_until_valid_json(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="not json"), Reply(text='{"ok": true}'), Reply(text="nope"), Reply(text='{"n": 1}')])
    client = _client(served)
    message = client.messages.create(model="up/x", max_tokens=50, messages=HI, extra_body={"validation": ["json"], "max_attempts": 3})
    assert message.content[0].text == '{"ok": true}'
    assert len(message.model_extra["llm_call"]["attempts"]) == 2  # type: ignore[index]
    with client.messages.stream(model="up/x", max_tokens=50, messages=HI, extra_body={"validation": ["json"]}) as stream:
        assert "".join(stream.text_stream) == '{"n": 1}'  # the failed attempt's text is never streamed
    assert len(served.upstream.requests) == 4


def test_unknown_anthropic_fields_refused(serve_llm: Any) -> None:
    served = serve_llm()
    r = httpx.post(served.url + "/v1/messages", json={"model": "up/x", "max_tokens": 5, "messages": HI,
                                                      "mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and "mcp_servers" in r.json()["error"]["message"]


def test_streamed_tool_use_reassembled_by_sdk(serve_llm: Any) -> None:
    call = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="call_7")
    served = serve_llm([Reply(text="Checking.", tool_calls=[call]), Reply(tool_calls=[call])])
    with _client(served).messages.stream(model="up/x", max_tokens=100, tools=[WEATHER], messages=HI) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Checking."  # type: ignore[union-attr]
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.id == "call_7" and tool.name == "get_weather"
    assert tool.input == {"city": "Paris", "unit": "celsius"}

    status, events = _post_stream(served, {"model": "up/x", "max_tokens": 100, "tools": [WEATHER], "messages": HI})
    assert status == 200
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts == [{"type": "tool_use", "id": "call_7", "name": "get_weather", "input": {}}]
    fragments = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert len(fragments) > 1 and json.loads("".join(fragments)) == {"city": "Paris", "unit": "celsius"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_structured_output_format_reaches_upstream_as_response_format(serve_llm: Any) -> None:
    class City(pydantic.BaseModel):
        name: str
        population: int

    served = serve_llm([Reply(text='{"name": "Paris", "population": 2100000}'), Reply(text="fine")])
    client = _client(served)
    message = client.messages.parse(model="up/x", max_tokens=100, output_format=City, messages=HI)
    assert message.parsed_output == City(name="Paris", population=2100000)
    fmt = served.upstream.requests[-1].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "output"
    assert fmt["json_schema"]["schema"]["properties"].keys() == {"name", "population"}

    client.messages.create(model="up/x", max_tokens=10, messages=HI, output_config={"effort": "low"})
    assert "response_format" not in served.upstream.requests[-1].body  # effort alone asks for no format

    r = httpx.post(served.url + "/v1/messages", json={"model": "up/x", "max_tokens": 5, "messages": HI,
                                                      "output_config": {"format": {"type": "xml"}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "output_config.format" in r.json()["error"]["message"]
    assert len(served.upstream.requests) == 2


def test_count_tokens_counts_an_image_as_an_image_not_as_its_base64_text(serve_llm: Any) -> None:
    served = serve_llm()
    client = _client(served)
    photo = "A" * 400_000  # the base64 of a ~300 KB photo
    question = {"type": "text", "text": "What is in this picture?"}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": photo}}
    text_only = client.messages.count_tokens(model="up/x", messages=[{"role": "user", "content": [question]}])
    with_image = client.messages.count_tokens(model="up/x", messages=[{"role": "user", "content": [image, question]}])
    assert 1000 <= with_image.input_tokens - text_only.input_tokens <= 2000  # Anthropic: at most ~1,600 an image
    in_result = client.messages.count_tokens(model="up/x", messages=[
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "a.jpg"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [image]}]},
    ])
    assert in_result.input_tokens <= 2000


def test_a_tool_call_cut_by_max_tokens_is_a_max_tokens_answer_not_an_upstream_error(serve_llm: Any) -> None:
    cut = {"id": "c1", "object": "chat.completion", "created": 0, "model": "x",
           "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "cel'}}]}}],
           "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}
    served = serve_llm([Reply(fault=Fault.http(200, {"content-type": "application/json"}, json.dumps(cut)))])
    message = _client(served).messages.create(model="up/x", max_tokens=12, tools=[WEATHER], messages=HI)
    assert message.stop_reason == "max_tokens"  # Anthropic's answer: the client retries with more max_tokens
    (block,) = message.content
    assert block.type == "tool_use" and block.id == "call_1" and block.name == "get_weather"
    assert block.input == {"city": "Paris"}  # what was complete, as the SDK's stream parser keeps it


def test_parallel_tool_calls_without_upstream_ids_get_distinct_tool_use_ids(serve_llm: Any) -> None:
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}} for c in ("Oslo", "Rome")]
    body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "x",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": calls}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}
    served = serve_llm([Reply(fault=Fault.http(200, {"content-type": "application/json"}, json.dumps(body)))])
    message = _client(served).messages.create(model="up/x", max_tokens=100, tools=[WEATHER], messages=HI)
    ids = [b.id for b in message.content if b.type == "tool_use"]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(ids)  # each tool_result must name one call


def test_models_in_anthropic_shape_for_the_anthropic_sdk(serve_llm: Any) -> None:
    """The anthropic SDK (and Claude Code) list models with ``anthropic-version``: they got the
    OpenAI list (no ``type``, ``display_name``, ``created_at``). A concrete model of a route
    (``up/x`` of ``up/*``) can be retrieved by both SDKs; it was a 404 though it answers."""
    served: Served = serve_llm(server={"allowed_models": ["up/*"]})
    listed = list(_client(served).models.list())
    assert listed and {m.type for m in listed} == {"model"}
    assert "up/*" in {m.id for m in listed} and all(m.display_name and m.created_at for m in listed)
    one = _client(served).models.retrieve("up/x")
    assert one.id == "up/x" and one.type == "model"
    assert served.client().models.retrieve("up/x").id == "up/x"  # the openai SDK, OpenAI shape
    for outside in ("max/opus", "up/*x", "nothing/y"):
        with pytest.raises(anthropic.NotFoundError):
            _client(served).models.retrieve(outside)
    # retrieval answers with the same check as a call: a path is no model a request may use
    open_server: Served = serve_llm()
    r = httpx.get(open_server.base_url + "/models/local//etc/passwd", timeout=30)
    assert r.status_code == 404, r.text
    assert httpx.get(open_server.base_url + "/models/up/x", timeout=30).json()["id"] == "up/x"


def test_a_valid_key_in_either_header_is_enough_when_both_are_sent(serve_llm: Any) -> None:
    """A client with both an auth token and an API key in its environment (ANTHROPIC_AUTH_TOKEN
    left over from another gateway, say) sends both headers: a valid x-api-key was refused with
    401 because the Authorization header was looked at alone. Two wrong keys are still a 401."""
    served = serve_llm([Reply(text="both", times=None)], server={"api_keys": ["sekret"]})
    body = {"model": "up/x", "max_tokens": 10, "messages": HI}
    for bearer, key, status in (("stale-token", "sekret", 200), ("sekret", "stale", 200), ("no", "nope", 401)):
        r = httpx.post(served.url + "/v1/messages", json=body, timeout=30,
                       headers={"authorization": f"Bearer {bearer}", "x-api-key": key, "anthropic-version": "2023-06-01"})
        assert r.status_code == status, (bearer, key, r.text)


def test_a_refused_host_is_an_error_in_anthropic_shape_on_messages(serve_llm: Any) -> None:
    """The Host check (DNS rebinding) answered /v1/messages in OpenAI's error shape, which the
    anthropic SDK reports without its message; every refusal on that path is Anthropic's shape."""
    served: Served = serve_llm()
    r = httpx.post(served.url + "/v1/messages", json={"model": "up/x", "max_tokens": 5, "messages": HI},
                   headers={"host": "evil.example"}, timeout=30)
    assert r.status_code == 421
    body = r.json()
    assert body["type"] == "error" and "server.allowed_hosts" in body["error"]["message"], body
    chat = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI},
                      headers={"host": "evil.example"}, timeout=30)
    assert chat.status_code == 421 and chat.json()["error"]["code"] == "host_not_allowed"
