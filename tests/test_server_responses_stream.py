"""Streamed Responses (``stream: true``), function tools on /v1/responses, and following a
background response as events with resume, driven by the official openai SDK unmodified."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from llm_call.testing import Fault, Reply, ToolCall
from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

NO_RETRY = {"max_retries": 0}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _events(text: str) -> list[dict[str, Any]]:
    """The ``data:`` payloads of an SSE body, checking each ``event:`` line names its type."""
    out: list[dict[str, Any]] = []
    kind = None
    for line in text.splitlines():
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
            assert data["type"] == kind
            out.append(data)
    return out


def test_sdk_streams_text_with_the_documented_events(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="one two three four", prompt_tokens=6, completion_tokens=4)])
    deltas: list[str] = []
    kinds: list[str] = []
    seqs: list[int] = []
    with served.client().responses.stream(model="up/x", input="count", instructions="Be brief.") as stream:
        for event in stream:
            kinds.append(event.type)
            seqs.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == "one two three four" and len(deltas) == 4
    assert final.output_text == "one two three four" and final.status == "completed"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (6, 4)
    assert seqs == list(range(len(seqs)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    sent = served.upstream.requests[-1].body
    assert sent["stream"] is True and sent["messages"][0] == {"role": "system", "content": "Be brief."}


def test_streamed_function_calls_become_function_call_items(serve_llm: Any) -> None:
    calls = [ToolCall("get_weather", {"city": "Oslo"}, id="call_a"), ToolCall("get_weather", {"city": "Rome"}, id="call_b")]
    served = serve_llm([Reply(tool_calls=calls)])
    client = served.client()
    arg_deltas: list[str] = []
    with client.responses.stream(model="up/x", input="weather?", tools=[WEATHER], tool_choice="auto") as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arg_deltas.append(event.delta)
        final = stream.get_final_response()
    items = [(o.type, o.call_id, o.name, json.loads(o.arguments)) for o in final.output if o.type == "function_call"]
    assert items == [("function_call", "call_a", "get_weather", {"city": "Oslo"}), ("function_call", "call_b", "get_weather", {"city": "Rome"})]
    assert len(arg_deltas) > 2  # fragments, as the upstream streamed them
    sent = served.upstream.requests[-1].body
    assert sent["tools"] == [
        {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}
    ]
    assert sent["tool_choice"] == "auto"


def test_function_call_outputs_are_sent_back_as_tool_messages(serve_llm: Any) -> None:
    served = serve_llm([Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"}, id="call_a")]), Reply(text="Sunny in Oslo.")])
    client = served.client()
    first = client.responses.create(model="up/x", input="weather in Oslo?", tools=[WEATHER])
    call = next(o for o in first.output if o.type == "function_call")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    second = client.responses.create(
        model="up/x",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "weather in Oslo?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
    )
    assert second.output_text == "Sunny in Oslo."
    sent = served.upstream.requests[-1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 21 C"}


def test_background_stream_follows_the_task_and_resumes_after_a_sequence_number(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="A considered answer.", latency=0.3)])
    client = served.client()
    with client.responses.create(model="up/x", input="think", background=True, stream=True) as stream:
        events = list(stream)
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "A considered answer."
    response_id = events[0].response.id
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # resume: the same events, numbered the same, after the one given
    r = httpx.get(f"{served.base_url}/responses/{response_id}", params={"stream": "true", "starting_after": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    resumed = _events(r.text)
    assert [e["sequence_number"] for e in resumed] == list(range(4, len(events)))
    assert [e["type"] for e in resumed] == [e.type for e in events[4:]]
    assert resumed[-1]["response"]["output_text"] == "A considered answer."
    # the SDK's own retrieve(stream=True) follows it as well
    with client.responses.retrieve(response_id, stream=True) as again:
        texts = [e.delta for e in again if e.type == "response.output_text.delta"]
    assert "".join(texts) == "A considered answer."


def test_background_stream_of_a_failed_task_ends_with_response_failed(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(500))], retry=NO_RETRY)
    body = {"model": "up/x", "input": "fails", "background": True, "stream": True}
    r = httpx.post(served.base_url + "/responses", json=body, timeout=30)
    events = _events(r.text)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert "ProviderHTTPError" in events[-1]["response"]["error"]["message"]


def test_upstream_failure_before_the_first_event_is_an_http_status(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(401))], retry=NO_RETRY)
    with pytest.raises(openai.APIStatusError) as info:
        with served.client().responses.stream(model="up/x", input="hi") as stream:
            list(stream)
    assert info.value.status_code in (401, 502)


def test_a_stream_cut_midway_ends_with_response_failed_not_completed(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="one two three four five", fault=Fault.cut_stream(after_chunks=2))], retry=NO_RETRY)
    r = httpx.post(served.base_url + "/responses", json={"model": "up/x", "input": "hi", "stream": True}, timeout=30)
    events = _events(r.text)
    kinds = [e["type"] for e in events]
    assert "response.completed" not in kinds
    assert kinds[-1] == "response.failed"
    assert events[-1]["response"]["error"]["message"]


def test_validated_stream_sends_only_the_answer_that_passed(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="not json"), Reply(text='{"ok": true}')])
    deltas: list[str] = []
    with served.client().responses.stream(
        model="up/x", input="json please", extra_body={"validation": ["json"], "max_attempts": 2}
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert deltas == ['{"ok": true}']
    assert final.output_text == '{"ok": true}'
    assert len(served.upstream.requests) == 2


def test_background_response_with_tools_keeps_its_function_calls(serve_llm: Any) -> None:
    served = serve_llm([Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"}, id="call_bg")], latency=0.2)])
    client = served.client()
    with client.responses.create(model="up/x", input="weather?", tools=[WEATHER], background=True, stream=True) as stream:
        events = list(stream)
    done = events[-1]
    assert done.type == "response.completed"
    calls = [(o.call_id, o.name, json.loads(o.arguments)) for o in done.response.output if o.type == "function_call"]
    assert calls == [("call_bg", "get_weather", {"city": "Oslo"})]
    assert [t.name for t in done.response.tools] == ["get_weather"]  # the request's tools, echoed
    again = client.responses.retrieve(done.response.id)  # read back from the task store
    assert [(o.type, getattr(o, "call_id", None)) for o in again.output] == [("function_call", "call_bg")]


def test_text_and_function_calls_of_one_turn_go_upstream_as_one_assistant_message(serve_llm: Any) -> None:
    calls = [ToolCall("get_weather", {"city": "Oslo"}, id="call_a"), ToolCall("get_weather", {"city": "Rome"}, id="call_b")]
    served = serve_llm([Reply(text="Let me check both.", tool_calls=calls), Reply(text="Sunny in both.")])
    client = served.client()
    first = client.responses.create(model="up/x", input="weather in Oslo and Rome?", tools=[WEATHER])
    assert [o.type for o in first.output] == ["message", "function_call", "function_call"]
    outputs = [{"type": "function_call_output", "call_id": c.id, "output": "sunny"} for c in calls]
    history = [o.model_dump(exclude_none=True) for o in first.output]
    second = client.responses.create(model="up/x", tools=[WEATHER],
                                     input=[{"role": "user", "content": "weather in Oslo and Rome?"}, *history, *outputs])
    assert second.output_text == "Sunny in both."
    sent = served.upstream.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]  # no two assistant turns in a row
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_a", "call_b"]
    assert sent[1]["content"] == [{"type": "text", "text": "Let me check both."}]


def _truncated(stream: bool) -> Reply:
    """An upstream answer cut by max_tokens (``finish_reason: "length"``), as JSON or as SSE."""
    if not stream:
        body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Once upon a"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
        return Reply(fault=Fault.http(200, {"content-type": "application/json"}, json.dumps(body)))
    chunks = [{"delta": {"role": "assistant", "content": "Once upon a"}, "finish_reason": None},
              {"delta": {}, "finish_reason": "length"}]
    events = "".join(f"data: {json.dumps({'id': 'c1', 'object': 'chat.completion.chunk', 'created': 0, 'model': 'x', 'choices': [{'index': 0, **c}]})}\n\n" for c in chunks)
    return Reply(fault=Fault.http(200, {"content-type": "text/event-stream"}, events + "data: [DONE]\n\n"))


def test_an_answer_cut_by_max_output_tokens_is_incomplete_not_completed(serve_llm: Any) -> None:
    served = serve_llm([_truncated(False), _truncated(True), _truncated(False)])
    client = served.client()
    direct = client.responses.create(model="up/x", input="tell a story", max_output_tokens=4)
    assert direct.output_text == "Once upon a"
    assert direct.status == "incomplete" and direct.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]

    with client.responses.create(model="up/x", input="tell a story", max_output_tokens=4, stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete" and "response.completed" not in [e.type for e in events]
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert events[-1].response.output_text == "Once upon a"

    background = client.responses.create(model="up/x", input="tell a story", max_output_tokens=4, background=True)
    with client.responses.retrieve(background.id, stream=True) as followed:
        last = list(followed)[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    polled = client.responses.retrieve(background.id)
    assert polled.status == "incomplete" and polled.output_text == "Once upon a"


def test_streamed_output_items_finish_one_after_another_as_openai_sends_them(serve_llm: Any) -> None:
    calls = [ToolCall("get_weather", {"city": "Oslo"}, id="call_a"), ToolCall("get_weather", {"city": "Rome"}, id="call_b")]
    served = serve_llm([Reply(text="Checking both.", tool_calls=calls)])
    r = httpx.post(served.base_url + "/responses", json={"model": "up/x", "input": "weather?", "tools": [WEATHER], "stream": True})
    events = [e for e in _events(r.text) if "output_index" in e]
    order = [(e["type"], e["output_index"]) for e in events]
    added = [i for kind, i in order if kind == "response.output_item.added"]
    assert added == [0, 1, 2]
    for index in added:  # every event of an item comes after the previous item's output_item.done
        first = order.index(("response.output_item.added", index))
        done = order.index(("response.output_item.done", index))
        assert all(i == index for _, i in order[first:done + 1]), order
    finished = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [(i["type"], i.get("call_id")) for i in finished] == [("message", None), ("function_call", "call_a"), ("function_call", "call_b")]


def test_a_stream_going_back_to_an_earlier_tool_call_is_interrupted_not_reordered() -> None:
    from llm_call.errors import StreamInterrupted
    from llm_call.server._responses_stream import EventWriter, OutputEvents
    from llm_call.types import ToolCallDelta

    out = OutputEvents(EventWriter(), "r1")
    list(out.tool_delta(ToolCallDelta(0, "call_a", "f", '{"a": ')))
    list(out.tool_delta(ToolCallDelta(1, "call_b", "g", "{}")))  # call 0 is finished here
    with pytest.raises(StreamInterrupted, match="went back to tool call 0"):
        list(out.tool_delta(ToolCallDelta(0, None, None, "1}")))
