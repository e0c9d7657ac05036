"""``max/*`` through the server end to end: the openai SDK → ``llm-call serve`` → the bundled
Claude Code CLI → the scripted Anthropic server. Includes background Responses polling of a
``max/*`` call (the case the background mode exists for)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from llm_call.testing import Reply
from support.claude_env import ClaudeEnv, claude_env
from support.llm_server import Served, serve_llm

__all__ = ["claude_env", "serve_llm"]

pytestmark = pytest.mark.timeout(120)


def _serve_claude(claude_env: ClaudeEnv, serve_llm: Any, script: list[Reply]) -> Served:
    served: Served = serve_llm(script, claude={"use_api_key": True})
    claude_env.use_server(served.upstream)
    return served


def _messages_requests(served: Served) -> list[Any]:
    return [r for r in served.upstream.requests if r.path == "/v1/messages"]


def test_max_chat_completion(claude_env: ClaudeEnv, serve_llm: Any) -> None:
    served = _serve_claude(claude_env, serve_llm, [Reply(text="Bonjour from Claude.")])
    answer = served.client().chat.completions.create(
        model="max/sonnet", messages=[{"role": "user", "content": "Say hello in French."}]
    )
    assert answer.choices[0].message.content == "Bonjour from Claude."
    assert answer.model == "max/sonnet"
    assert answer.model_extra["llm_call"]["attempts"][-1]["ok"] is True
    (req,) = _messages_requests(served)
    assert req.last_user_text == "Say hello in French."


def test_max_streaming(claude_env: ClaudeEnv, serve_llm: Any) -> None:
    served = _serve_claude(claude_env, serve_llm, [Reply(text="one two three four")])
    stream = served.client().chat.completions.create(
        model="max/sonnet", messages=[{"role": "user", "content": "Count."}], stream=True,
        stream_options={"include_usage": True},
    )
    parts = []
    usage = None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == "one two three four"
    assert usage is not None and usage.completion_tokens > 0


def test_max_background_response_polled_to_completion(claude_env: ClaudeEnv, serve_llm: Any) -> None:
    served = _serve_claude(claude_env, serve_llm, [Reply(text="A haiku, slowly made.", latency=0.5)])
    client = served.client()
    created = client.responses.create(model="max/sonnet", input="Write a haiku.", background=True)
    assert created.status in ("queued", "in_progress")
    deadline = time.monotonic() + 90
    seen = {created.status}
    resp = created
    while resp.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.1)
        resp = client.responses.retrieve(created.id)
        seen.add(resp.status)
    assert resp.status == "completed", resp
    assert resp.output_text == "A haiku, slowly made."
    assert "in_progress" in seen
    assert resp.model_extra["llm_call"]["task_status"] == "succeeded"
    assert len(_messages_requests(served)) == 1


def test_pool_state_over_http_and_in_metrics(claude_env: ClaudeEnv, serve_llm: Any) -> None:
    import base64
    import struct
    import zlib

    import httpx

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
    data = base64.b64encode(png).decode()
    served: Served = serve_llm(
        [], default=Reply(text="seen", times=None), claude={"use_api_key": True, "pool_size": 2},
        server={"api_keys": ["k-1"]},
    )
    claude_env.use_server(served.upstream)
    client = served.client(api_key="k-1")
    for content in (
        "plain",
        [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}],
    ):
        answer = client.chat.completions.create(model="max/sonnet", messages=[{"role": "user", "content": content}])
        assert answer.choices[0].message.content == "seen"
    image_request = _messages_requests(served)[-1]
    blocks = [b for m in image_request.messages if isinstance(m.get("content"), list) for b in m["content"]]
    assert {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}} in blocks

    assert httpx.get(f"{served.url}/v1/claude/pool").status_code == 401
    pool = httpx.get(f"{served.url}/v1/claude/pool", headers={"Authorization": "Bearer k-1"}).json()
    assert pool["enabled"] is True and pool["size_limit"] == 2
    assert pool["started"] == 1 and pool["processes"] == 1, pool  # both calls on one warm process
    metrics = httpx.get(f"{served.url}/metrics", headers={"Authorization": "Bearer k-1"}).text
    assert "llm_call_claude_pool_started 1.0" in metrics
    assert 'llm_call_claude_pool_processes{state="idle"}' in metrics
