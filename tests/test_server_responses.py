"""The Responses API with background mode, driven by the official openai SDK unmodified."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from llm_call.testing import Fault, Reply
from support.llm_server import Served, serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

NO_RETRY = {"max_retries": 0}


def _poll(client: openai.OpenAI, response_id: str, until: tuple[str, ...] = ("completed", "failed", "cancelled")) -> Any:
    deadline = time.monotonic() + 30
    while True:
        resp = client.responses.retrieve(response_id)
        if resp.status in until or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def _wait_for_upstream(served: Served, n: int = 1) -> None:
    deadline = time.monotonic() + 20
    while len(served.upstream.requests) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(served.upstream.requests) >= n


def test_background_create_poll_completed(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="A long considered answer.", latency=0.3, prompt_tokens=9, completion_tokens=5)])
    client = served.client()
    created = client.responses.create(
        model="up/x", input="Think hard.", instructions="Be thorough.", background=True, metadata={"job": "42"}
    )
    assert created.status in ("queued", "in_progress")
    assert created.id.startswith("resp_")
    assert created.metadata == {"job": "42"}
    assert created.output_text == ""
    done = _poll(client, created.id)
    assert done.status == "completed"
    assert done.output_text == "A long considered answer."
    assert done.output[0].type == "message"
    assert done.output[0].content[0].type == "output_text"
    assert done.usage is not None and done.usage.input_tokens == 9 and done.usage.output_tokens == 5
    assert done.instructions == "Be thorough."
    assert done.metadata == {"job": "42"}
    assert done.model_extra["llm_call"]["task_status"] == "succeeded"
    sent = served.upstream.requests[-1].body["messages"]
    assert sent == [{"role": "system", "content": "Be thorough."}, {"role": "user", "content": "Think hard."}]


def test_direct_create_answers_in_the_request(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="right away")])
    resp = served.client().responses.create(model="up/x", input="quick")
    assert resp.status == "completed"
    assert resp.output_text == "right away"
    assert resp.model_extra["llm_call"]["attempts"]


def test_input_as_messages_with_parts(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="seen")])
    resp = served.client().responses.create(
        model="up/x",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second"},
        ],
    )
    assert resp.output_text == "seen"
    sent = served.upstream.requests[-1].body["messages"]
    assert sent[0] == {"role": "user", "content": [{"type": "text", "text": "first"}]}
    assert sent[2] == {"role": "user", "content": "second"}


def test_cancel_running_background_response(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.hang())])
    client = served.client()
    created = client.responses.create(model="up/x", input="never ends", background=True)
    _wait_for_upstream(served)
    assert client.responses.retrieve(created.id).status == "in_progress"
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"


def test_cancel_queued_background_response(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.hang())], tasks={"route_limits": {"up/*": 1}})
    client = served.client()
    first = client.responses.create(model="up/x", input="blocks the route", background=True)
    _wait_for_upstream(served)
    second = client.responses.create(model="up/x", input="waits", background=True)
    assert client.responses.retrieve(second.id).status == "queued"
    assert client.responses.cancel(second.id).status == "cancelled"
    assert client.responses.cancel(first.id).status == "cancelled"
    assert len(served.upstream.requests) == 1


def test_failed_background_response_reports_the_error(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(500))], retry=NO_RETRY)
    client = served.client()
    created = client.responses.create(model="up/x", input="fails", background=True)
    done = _poll(client, created.id)
    assert done.status == "failed"
    assert done.error is not None and done.error.code == "server_error"
    assert "ProviderHTTPError" in done.error.message
    assert done.model_extra["llm_call"]["error"]["type"] == "ProviderHTTPError"
    assert done.output_text == ""


def test_unknown_response_id_is_not_found(serve_llm: Any) -> None:
    served = serve_llm()
    with pytest.raises(openai.NotFoundError):
        served.client().responses.retrieve("resp_tk_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        served.client().responses.cancel("resp_tk_doesnotexist")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "up/x", "input": "hi", "background": True, "validation": ["bogus_check"]}, 422, "validation.0"),
        ({"model": "no-such", "input": "hi", "background": True}, 404, "model"),
        ({"model": "up/x", "input": ""}, 400, "input"),
        ({"model": "up/x", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, "input.0.content.0.type"),
        ({"model": "up/x"}, 400, "input"),
        ({"model": "up/x", "input": "hi", "reasoning_level": 3}, 400, "reasoning_level"),
    ],
)
def test_bad_responses_requests(serve_llm: Any, body: dict[str, Any], status: int, param: str) -> None:
    served = serve_llm()
    r = httpx.post(served.base_url + "/responses", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert not served.upstream.requests


def test_background_validation_runs_in_the_task(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="not json"), Reply(text='{"ok": true}')])
    client = served.client()
    created = client.responses.create(
        model="up/x", input="give json", background=True, extra_body={"validation": ["json"], "max_attempts": 2}
    )
    done = _poll(client, created.id)
    assert done.status == "completed"
    assert done.output_text == '{"ok": true}'
    answers = [a for a in done.model_extra["llm_call"]["attempts"] if a["kind"] == "answer"]
    assert [a["ok"] for a in answers] == [False, True]


def test_client_giving_up_on_a_direct_response_cancels_the_call(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.hang())])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.base_url + "/responses", json={"model": "up/x", "input": "hi"}, timeout=1.0)
    _wait_for_upstream(served)
    deadline = time.monotonic() + 20
    while served.upstream.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.upstream.in_flight == 0, "the upstream call was left running"
    assert httpx.get(served.url + "/health").status_code == 200
