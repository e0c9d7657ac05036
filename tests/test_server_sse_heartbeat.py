"""Keep-alives on quiet SSE streams (``server.sse_heartbeat``).

A stream that sends nothing for a while is closed by reverse proxies and client read timeouts
although the call is fine (a ``max/*`` call running its tools, a task waiting for a slot). Every
SSE route now sends ``: keep-alive`` comments (``ping`` events on ``/v1/messages``) during
silences, and the clients people use still read the whole answer. The upstream here pauses
between chunks (``chunk_delay``) or before answering (``latency``) for several heartbeats.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx
import pytest

from llm_call.server._heartbeat import COMMENT, with_heartbeat
from llm_call.testing import Reply
from support.llm_server import Served, serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(90)

HI = [{"role": "user", "content": "hi"}]
BEAT = {"sse_heartbeat": 0.1}
SLOW = Reply(chunks=["one ", "two ", "three"], chunk_delay=0.6)


def _raw(served: Served, path: str, body: dict[str, Any]) -> bytes:
    with httpx.stream("POST", served.url + path, json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        return r.read()


def test_chat_stream_gets_comments_while_the_upstream_pauses(serve_llm: Any) -> None:
    served = serve_llm([SLOW, SLOW], server=BEAT)
    raw = _raw(served, "/v1/chat/completions", {"model": "up/x", "messages": HI, "stream": True})
    assert raw.count(COMMENT) >= 2, raw
    assert raw.index(b"data: ") < raw.index(COMMENT)  # never before the first event
    assert raw.rstrip().endswith(b"data: [DONE]")
    # the official client skips the comments and reads the whole answer
    stream = served.client().chat.completions.create(model="up/x", messages=HI, stream=True)  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three"


def test_messages_stream_gets_ping_events_and_the_sdk_reads_it_all(serve_llm: Any) -> None:
    served = serve_llm([SLOW, SLOW], server=BEAT)
    raw = _raw(served, "/v1/messages", {"model": "up/x", "max_tokens": 50, "messages": HI, "stream": True})
    events = [line for line in raw.decode().splitlines() if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"
    assert events.count("event: ping") >= 3, events  # the one after message_start, and keep-alives
    assert COMMENT not in raw  # Anthropic's own keep-alive, not a comment
    client = anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0, timeout=60)
    with client.messages.stream(model="up/x", max_tokens=50, messages=HI) as stream:  # type: ignore[arg-type]
        assert stream.get_final_text() == "one two three"


def test_responses_stream_and_task_follow_get_comments(serve_llm: Any) -> None:
    served = serve_llm([SLOW, Reply(text="done late", latency=1.0)], server=BEAT)
    raw = _raw(served, "/v1/responses", {"model": "up/x", "input": "hi", "stream": True})
    assert raw.count(COMMENT) >= 2 and b"response.completed" in raw
    task = httpx.post(served.base_url + "/tasks", json={"model": "up/x", "prompt": "hi"}, timeout=30).json()
    with httpx.stream("GET", f"{served.base_url}/tasks/{task['id']}/events", timeout=30) as r:
        followed = r.read()
    assert followed.count(COMMENT) >= 2, followed
    assert b"succeeded" in followed or b"finished" in followed


def test_zero_turns_the_keep_alives_off(serve_llm: Any) -> None:
    served = serve_llm([SLOW], server={"sse_heartbeat": 0})
    raw = _raw(served, "/v1/chat/completions", {"model": "up/x", "messages": HI, "stream": True})
    assert COMMENT not in raw and raw.rstrip().endswith(b"data: [DONE]")


def test_a_client_that_goes_away_closes_the_body_and_a_slow_one_holds_it_back() -> None:
    """The body runs in a producer task: it must stay at most a few events ahead of a slow client
    (a slow client still slows the upstream), and closing the stream must close the body."""
    produced: list[int] = []
    closed = asyncio.Event()

    async def body() -> Any:
        try:
            for i in range(1000):
                produced.append(i)
                yield json.dumps(i).encode()
        finally:
            closed.set()

    async def main() -> None:
        stream = with_heartbeat(body(), 5.0)
        got = [await anext(stream) for _ in range(3)]
        assert got == [b"0", b"1", b"2"]
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(produced) < 100, len(produced)  # bounded read-ahead, not the whole body
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(closed.wait(), 5)

    asyncio.run(main())


def test_a_body_failure_reaches_the_response() -> None:
    async def body() -> Any:
        yield b"first"
        raise RuntimeError("boom")

    async def main() -> list[bytes]:
        return [item async for item in with_heartbeat(body(), 5.0)]

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(main())
