"""What a demanding user of the openai and anthropic SDKs sends through the server to an
OpenAI-compatible upstream (the scripted server, endpoint ``up``): every field either reaches the
upstream as sent, comes back in the answer, or is a 400 naming it; nothing that changes the
answer's shape is dropped on the way."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from llm_call.testing import Fault, Reply
from support.llm_server import Served, serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]


def _anthropic(served: Served) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0, timeout=60)


def _completion(choice: dict[str, Any]) -> Reply:
    """An upstream answer given as the raw chat completion JSON."""
    body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "x", "choices": [{"index": 0, **choice}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    return Reply(fault=Fault.http(200, {"content-type": "application/json"}, json.dumps(body)))


# -- /v1/chat/completions ------------------------------------------------------------------

STRICT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
    },
}
STRICT_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "city", "strict": True, "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": False}},
}


def test_chat_options_reach_the_upstream_as_sent(serve_llm: Any) -> None:
    served: Served = serve_llm()
    served.client().chat.completions.create(
        model="up/x", messages=HI, tools=[STRICT_TOOL], response_format=STRICT_FORMAT, seed=7, top_p=0.5,
        presence_penalty=0.25, frequency_penalty=0.5, reasoning_effort="low", stop=["END"], logit_bias={"50256": -100},
    )
    sent = served.upstream.requests[-1].body
    assert sent["tools"] == [STRICT_TOOL] and sent["response_format"] == STRICT_FORMAT
    assert (sent["seed"], sent["top_p"], sent["presence_penalty"], sent["frequency_penalty"]) == (7, 0.5, 0.25, 0.5)
    assert sent["reasoning_effort"] == "low" and sent["stop"] == ["END"] and sent["logit_bias"] == {"50256": -100}


LOGPROBS = {"content": [{"token": "ok", "logprob": -0.01, "bytes": [111, 107], "top_logprobs": [{"token": "ok", "logprob": -0.01, "bytes": [111, 107]}]}], "refusal": None}


def test_logprobs_of_the_upstream_reach_the_client(serve_llm: Any) -> None:
    served = serve_llm([_completion({"message": {"role": "assistant", "content": "ok"}, "logprobs": LOGPROBS, "finish_reason": "stop"})])
    answer = served.client().chat.completions.create(model="up/x", messages=HI, logprobs=True, top_logprobs=1)
    sent = served.upstream.requests[-1].body
    assert sent["logprobs"] is True and sent["top_logprobs"] == 1
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [(t.token, t.logprob) for t in logprobs.content] == [("ok", -0.01)]
    assert logprobs.content[0].top_logprobs[0].token == "ok"


def test_streamed_logprobs_are_a_400_naming_the_field_not_a_stream_without_them(serve_llm: Any) -> None:
    served = serve_llm()
    with pytest.raises(openai.BadRequestError, match="logprobs") as caught:
        served.client().chat.completions.create(model="up/x", messages=HI, logprobs=True, stream=True)
    assert caught.value.param == "logprobs"
    assert served.upstream.requests == []


def test_n_above_one_is_a_400_naming_it(serve_llm: Any) -> None:
    served = serve_llm()
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(model="up/x", messages=HI, n=2)
    assert caught.value.param == "n"
    assert served.upstream.requests == []


def test_the_end_user_id_reaches_the_upstream(serve_llm: Any) -> None:
    served = serve_llm()
    served.client().chat.completions.create(model="up/x", messages=HI, user="end-user-42")
    assert served.upstream.requests[-1].body["user"] == "end-user-42"


def test_the_local_route_ignores_the_end_user_id() -> None:
    # ``user`` now reaches every route; one that has no use for it must not refuse the request
    from llm_call.config import Settings
    from llm_call.providers.local import LocalProvider
    from llm_call.types import Request

    params = LocalProvider(Settings().local)._params(Request(model="local/x", messages=list(HI), options={"user": "u", "seed": 1}))
    assert params.seed == 1


# -- /v1/messages --------------------------------------------------------------------------


def test_a_strict_tool_stays_strict_on_the_way_upstream(serve_llm: Any) -> None:
    served = serve_llm()
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": schema, "strict": True}]
    _anthropic(served).messages.create(model="up/x", max_tokens=50, messages=HI, tools=tools)
    (tool,) = served.upstream.requests[-1].body["tools"]
    assert tool == {"type": "function", "function": {"name": "get_weather", "parameters": schema, "description": "Weather", "strict": True}}


PREFILLED = [{"role": "user", "content": "Give me the city as JSON"}, {"role": "assistant", "content": '{"city": "'}]


def test_a_prefill_on_a_route_that_answers_anew_is_a_400_naming_the_route(serve_llm: Any) -> None:
    # an OpenAI-compatible upstream answers the conversation anew: the client would join its
    # prefill and a fresh answer ('{"city": "' + '{"city": "Oslo"}')
    served = serve_llm()
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.1: .*prefill.*'up/x' \(an OpenAI-compatible endpoint") as caught:
        _anthropic(served).messages.create(model="up/x", max_tokens=50, messages=PREFILLED)
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert served.upstream.requests == []


@pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning")  # LiteLLM's own models
def test_a_prefill_is_checked_against_fallbacks_too(serve_llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("litellm")
    served = serve_llm()
    monkeypatch.setenv("ANTHROPIC_API_BASE", served.upstream.anthropic_base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    with pytest.raises(anthropic.BadRequestError, match=r"fallbacks\.0 'up/y'"):
        _anthropic(served).messages.create(model="anthropic/claude-x", max_tokens=50, messages=PREFILLED, extra_body={"fallbacks": ["up/y"]})
    assert served.upstream.requests == []
    served.upstream.add(Reply(text='Oslo"}'))
    message = _anthropic(served).messages.create(model="anthropic/claude-x", max_tokens=50, messages=PREFILLED)
    assert [b.text for b in message.content if b.type == "text"] == ['Oslo"}']
    assert served.upstream.requests[-1].path == "/v1/messages"
    assert served.upstream.requests[-1].messages[-1]["role"] == "assistant"


def _vllm_stream(text: str, matched: str | None) -> Reply:
    """A streamed upstream answer ending as vLLM ends one cut by a stop string."""
    def event(choice: dict[str, Any]) -> str:
        return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "x", "choices": [{"index": 0, **choice}]}) + "\n\n"

    body = event({"delta": {"role": "assistant", "content": text}, "finish_reason": None})
    body += event({"delta": {}, "finish_reason": "stop", "stop_reason": matched}) + "data: [DONE]\n\n"
    return Reply(fault=Fault.http(200, {"content-type": "text/event-stream"}, body))


def test_the_stop_sequence_an_upstream_names_is_the_stop_reason(serve_llm: Any) -> None:
    # vLLM says which stop string ended the answer (stop_reason), SGLang too (matched_stop)
    served = serve_llm([
        _completion({"message": {"role": "assistant", "content": "Oslo"}, "finish_reason": "stop", "stop_reason": "END"}),
        _completion({"message": {"role": "assistant", "content": "Oslo"}, "finish_reason": "stop", "matched_stop": "STOP"}),
        _vllm_stream("Oslo", "END"),
    ])
    client = _anthropic(served)
    message = client.messages.create(model="up/x", max_tokens=50, messages=HI, stop_sequences=["END"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    assert served.upstream.requests[-1].body["stop"] == ["END"]
    message = client.messages.create(model="up/x", max_tokens=50, messages=HI, stop_sequences=["STOP"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")
    with client.messages.stream(model="up/x", max_tokens=50, messages=HI, stop_sequences=["END"]) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "Oslo"
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")


def test_an_upstream_that_does_not_name_a_stop_sequence_ends_the_turn(serve_llm: Any) -> None:
    # OpenAI strips the stop string and says "stop" whether it met one or ended by itself
    served = serve_llm([Reply(text="Oslo"), _vllm_stream("Oslo", None)])
    client = _anthropic(served)
    message = client.messages.create(model="up/x", max_tokens=50, messages=HI, stop_sequences=["END"])
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    with client.messages.stream(model="up/x", max_tokens=50, messages=HI, stop_sequences=["END"]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("end_turn", None)


REFUSED = {"message": {"role": "assistant", "content": None, "refusal": "I can't help with that."}, "finish_reason": "stop"}


def test_a_refusal_reaches_the_client_as_a_refusal(serve_llm: Any) -> None:
    # OpenAI's structured outputs: content null and the reason in message.refusal; an empty
    # content instead made the SDK's parse() fail on "" rather than report the refusal
    served = serve_llm([_completion(REFUSED), _completion(REFUSED)])
    answer = served.client().chat.completions.create(model="up/x", messages=HI, response_format=STRICT_FORMAT)
    assert (answer.choices[0].message.content, answer.choices[0].message.refusal) == (None, "I can't help with that.")
    message = _anthropic(served).messages.create(model="up/x", max_tokens=50, messages=HI)
    assert message.stop_reason == "refusal"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "I can't help with that.")]


def test_a_reasoning_model_gets_its_token_limit_under_the_name_it_takes(serve_llm: Any) -> None:
    # OpenAI's o-series and gpt-5 refuse max_tokens ("use max_completion_tokens"); the client
    # sent max_completion_tokens, and got a 400 about a parameter it never sent
    served = serve_llm()
    client = served.client()
    client.chat.completions.create(model="up/o3-mini", messages=HI, max_completion_tokens=300)
    sent = served.upstream.requests[-1].body
    assert sent["max_completion_tokens"] == 300 and "max_tokens" not in sent
    client.chat.completions.create(model="up/gpt-5-mini", messages=HI, max_tokens=200)
    assert served.upstream.requests[-1].body["max_completion_tokens"] == 200
    client.chat.completions.create(model="up/qwen3", messages=HI, max_completion_tokens=100)  # older servers know max_tokens only
    sent = served.upstream.requests[-1].body
    assert sent["max_tokens"] == 100 and "max_completion_tokens" not in sent


def test_a_streamed_refusal_reaches_the_client_as_a_refusal(serve_llm: Any) -> None:
    def event(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "x", "choices": [choice]}) + "\n\n"

    body = event({"role": "assistant", "content": None, "refusal": ""}) + event({"refusal": "I can't "}) + event({"refusal": "help."})
    body += event({}, "stop") + "data: [DONE]\n\n"
    refused = Reply(fault=Fault.http(200, {"content-type": "text/event-stream"}, body))
    served = serve_llm([refused, refused])
    with served.client().chat.completions.stream(model="up/x", messages=HI, response_format=STRICT_FORMAT) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.refusal == "I can't help."
    assert not final.choices[0].message.content
    with _anthropic(served).messages.stream(model="up/x", max_tokens=50, messages=HI) as astream:
        message = astream.get_final_message()
    assert message.stop_reason == "refusal"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "I can't help.")]
