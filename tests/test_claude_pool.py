"""The warm CLI pool and images on ``max/*``: the real Claude Code CLI against the scripted
Anthropic server on 127.0.0.1.

Every test closes the providers itself before ``claude_env`` checks, on teardown, that no
process it started is left: pooled processes stay warm until shutdown by design.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import llm_call
from llm_call.errors import ProviderFailed, ProviderHTTPError, ProviderTimeout, UsageError
from llm_call.providers.claude_cli import pool_state
from llm_call.providers.router import close_providers
from llm_call.testing import Fault, Reply, ScriptedLLMServer
from support.claude_env import ClaudeEnv, claude_env

__all__ = ["claude_env"]

pytestmark = pytest.mark.timeout(120)


def _png() -> bytes:
    """A real 1x1 PNG (the CLI reads the header to size an image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


PNG_B64 = base64.b64encode(_png()).decode()


@pytest.fixture
async def pooled(claude_env: ClaudeEnv, use_settings: Callable[..., Any]) -> AsyncIterator[ClaudeEnv]:
    """The pool on (2 processes); providers closed before ``claude_env`` looks for leftovers."""
    use_settings(claude={"use_api_key": True, "pool_size": 2, "idle_timeout": 3})
    try:
        yield claude_env
    finally:
        await close_providers()


def _messages_requests(srv: ScriptedLLMServer) -> list[Any]:
    return [r for r in srv.requests if r.path == "/v1/messages"]


async def _wait_for_request(srv: ScriptedLLMServer, n: int = 1) -> None:
    async with asyncio.timeout(60):
        while len(_messages_requests(srv)) < n:
            await asyncio.sleep(0.02)


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not predicate():
            await asyncio.sleep(0.02)


# -- reuse and isolation ------------------------------------------------------------------


async def test_calls_with_the_same_options_reuse_one_process(pooled: ClaudeEnv) -> None:
    async with ScriptedLLMServer(default=Reply(text="pong", times=None)) as srv:
        pooled.use_server(srv)
        pids: set[int] = set()
        for i in range(4):
            resp = await llm_call.acall("max/sonnet", f"ping {i}")
            assert resp.text == "pong"
            pids.update(pooled.processes())
        state = pool_state()
        assert state["started"] == 1, state
        assert len(pids) == 1  # one CLI served every call
        assert [r.last_user_text.endswith(f"ping {i}") for i, r in enumerate(_messages_requests(srv))] == [True] * 4
        await close_providers()
        assert not pooled.processes()


async def test_a_secret_from_one_call_never_reaches_the_next(pooled: ClaudeEnv) -> None:
    secret = "TANGERINE-4471"
    async with ScriptedLLMServer(default=Reply(text="noted", times=None)) as srv:
        pooled.use_server(srv)
        await llm_call.acall(
            "max/sonnet",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Remember the code {secret}."},
            ],
        )
        await llm_call.acall("max/sonnet", "What code did I tell you?", system="You are terse.")
        first, second = _messages_requests(srv)
    assert pool_state()["started"] == 1  # the same process served both calls
    assert secret.encode() in first.raw
    assert secret.encode() not in second.raw
    assert second.last_user_text.endswith("What code did I tell you?")


@pytest.mark.parametrize("pool_size", [0, 2], ids=["one_shot", "pooled"])
async def test_a_prompt_reaches_the_model_as_written_never_as_a_cli_command(
    claude_env: ClaudeEnv, use_settings: Callable[..., Any], tmp_path: Path, pool_size: int
) -> None:
    """The CLI dispatches a prompt that starts with ``/`` as its own command (``/model haiku``
    switched a pooled process's model for every later call) and inlines files named by
    ``@path`` (with no tool allowed): request text must not do either."""
    use_settings(claude={"use_api_key": True, "pool_size": pool_size})
    secret = tmp_path / "secret.txt"
    secret.write_text("ZEBRA-9981\n")
    prompts: list[Any] = [
        "/model haiku",
        [{"type": "text", "text": "/model haiku"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}],
        f"what is in @{secret}",
        "next",
    ]
    try:
        async with ScriptedLLMServer(default=Reply(text="pong", times=None)) as srv:
            claude_env.use_server(srv)
            for prompt in prompts:
                resp = await llm_call.acall("max/sonnet", messages=[{"role": "user", "content": prompt}], retry=False)
                assert resp.text == "pong"  # the model answered, not a command
            requests = _messages_requests(srv)
    finally:
        await close_providers()
    assert len(requests) == 4
    sent = ["/model haiku", "/model haiku", f"what is in @{secret}", "next"]
    # the words arrive (a file mention carries the zero-width space of the second layer in front)
    assert [t in r.last_user_text.replace("\u200b", "") for r, t in zip(requests, sent, strict=True)] == [True] * 4
    assert {r.model for r in requests} == {requests[0].model} and "haiku" not in str(requests[0].model)
    assert not [r for r in requests if b"ZEBRA-9981" in r.raw]


async def test_different_options_get_different_processes(pooled: ClaudeEnv) -> None:
    async with ScriptedLLMServer(default=Reply(text="ok", times=None)) as srv:
        pooled.use_server(srv)
        await llm_call.acall("max/sonnet", "a", system="Persona A")
        await llm_call.acall("max/sonnet", "b", system="Persona B")
        await llm_call.acall("max/sonnet", "c", system="Persona A")
        systems = [r.system or "" for r in _messages_requests(srv)]
    assert pool_state()["started"] == 2
    assert ["Persona A" in systems[0], "Persona B" in systems[1], "Persona A" in systems[2]] == [True] * 3


async def test_a_call_that_needs_its_own_workspace_bypasses_the_pool(pooled: ClaudeEnv, tmp_path: Path) -> None:
    async with ScriptedLLMServer(default=Reply(text="ok", times=None)) as srv:
        pooled.use_server(srv)
        resp = await llm_call.acall("max/sonnet", "read it", allowed_tools=["Read"])
        resp2 = await llm_call.acall("max/sonnet", "here", cwd=str(tmp_path))
    assert resp.text == resp2.text == "ok"
    assert pool_state()["started"] == 0
    assert not pooled.processes()  # the one-shot processes exited


# -- replacement ----------------------------------------------------------------------------


async def test_a_process_killed_while_idle_is_replaced(pooled: ClaudeEnv) -> None:
    async with ScriptedLLMServer(default=Reply(text="alive", times=None)) as srv:
        pooled.use_server(srv)
        await llm_call.acall("max/sonnet", "one")
        await _until(lambda: pool_state()["idle"] == 1)  # reset done: back in the pool
        (pid,) = pooled.processes()
        os.kill(pid, signal.SIGKILL)
        await _until(lambda: pid not in pooled.processes())
        resp = await llm_call.acall("max/sonnet", "two")
        assert resp.text == "alive"
        assert pooled.processes() != [pid]
    state = pool_state()
    assert state["replaced_by_reason"].get("died") == 1, state


def _proc_state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


async def _until_state(pid: int, states: set[str | None]) -> None:
    await _until(lambda: _proc_state(pid) in states)


@pytest.mark.parametrize("when", ["before_the_write", "after_the_write"])
async def test_a_process_that_dies_before_taking_the_message_is_replaced_and_the_call_served(
    pooled: ClaudeEnv, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The process passed the liveness check, then died before it read the call's message
    (killed before the write, or stopped, written to, then killed): the call runs on a fresh
    process instead of failing with the dead one's exit."""
    from llm_call.providers import _claude_worker

    original = _claude_worker.PooledCLI.send
    victims: list[int] = []

    async def send_then_die(self: Any, content: Any) -> None:
        pid = self.pid
        if content != "two" or victims or pid is None:
            await original(self, content)
            return
        victims.append(pid)
        if when == "before_the_write":
            os.kill(pid, signal.SIGKILL)
            await _until_state(pid, {"Z", None})
            await original(self, content)
        else:
            os.kill(pid, signal.SIGSTOP)  # it cannot read (or answer) what is written now
            await _until_state(pid, {"T", "t"})
            await original(self, content)
            os.kill(pid, signal.SIGKILL)

    monkeypatch.setattr(_claude_worker.PooledCLI, "send", send_then_die)
    async with ScriptedLLMServer(default=Reply(text="alive", times=None)) as srv:
        pooled.use_server(srv)
        await llm_call.acall("max/sonnet", "one", retry=False)
        await _until(lambda: pool_state()["idle"] == 1)
        resp = await llm_call.acall("max/sonnet", "two", retry=False)
        assert resp.text == "alive"
        assert victims and victims[0] not in pooled.processes()
        assert [r.last_user_text.endswith("two") for r in _messages_requests(srv)] == [False, True]
    state = pool_state()
    assert state["replaced_by_reason"].get("died") == 1, state


async def test_a_hang_trips_the_watchdog_and_the_process_is_replaced(pooled: ClaudeEnv) -> None:
    script = [Reply(match_text="stuck", fault=Fault.hang()), Reply(match_text="fine", text="recovered")]
    async with ScriptedLLMServer(script) as srv:
        pooled.use_server(srv)
        task = asyncio.create_task(llm_call.acall("max/sonnet", "stuck", retry=False))
        await _wait_for_request(srv)
        (hung,) = pooled.processes()
        with pytest.raises(ProviderTimeout) as info:
            await task
        assert "idle timeout" in str(info.value)
        assert hung not in pooled.processes()  # killed before the error was raised
        resp = await llm_call.acall("max/sonnet", "fine", retry=False)
    assert resp.text == "recovered"
    state = pool_state()
    assert state["replaced_by_reason"].get("watchdog") == 1, state


async def test_cancelling_a_pooled_call_kills_and_replaces_its_process(pooled: ClaudeEnv) -> None:
    script = [Reply(match_text="slow", fault=Fault.hang()), Reply(match_text="next", text="next answer")]
    async with ScriptedLLMServer(script) as srv:
        pooled.use_server(srv)
        task = asyncio.create_task(llm_call.acall("max/sonnet", "slow"))
        await _wait_for_request(srv)
        (busy,) = pooled.processes()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert busy not in pooled.processes()
        resp = await llm_call.acall("max/sonnet", "next")
    assert resp.text == "next answer"
    assert pool_state()["replaced_by_reason"].get("cancelled") == 1


async def test_an_error_result_is_typed_and_the_process_replaced(pooled: ClaudeEnv) -> None:
    script = [Reply(match_text="boom", fault=Fault.http(500)), Reply(match_text="again", text="fine")]
    async with ScriptedLLMServer(script) as srv:
        pooled.use_server(srv)
        with pytest.raises(ProviderHTTPError) as info:
            await llm_call.acall("max/sonnet", "boom", retry=False)
        assert info.value.status == 500
        resp = await llm_call.acall("max/sonnet", "again", retry=False)
    assert resp.text == "fine"
    assert pool_state()["replaced_by_reason"].get("error") == 1


async def test_a_process_is_replaced_after_max_calls(claude_env: ClaudeEnv, use_settings: Callable[..., Any]) -> None:
    use_settings(claude={"use_api_key": True, "pool_size": 1, "pool_max_calls": 2})
    try:
        async with ScriptedLLMServer(default=Reply(text="ok", times=None)) as srv:
            claude_env.use_server(srv)
            for i in range(5):
                await llm_call.acall("max/sonnet", f"n{i}")
            await _until(lambda: pool_state()["busy"] == 0)
        state = pool_state()
        assert state["replaced_by_reason"].get("max_calls") == 2, state
        assert state["calls"] == 5
    finally:
        await close_providers()


# -- shutdown and streaming ---------------------------------------------------------------


async def test_shutdown_with_a_call_in_flight_leaves_no_process(pooled: ClaudeEnv) -> None:
    async with ScriptedLLMServer([Reply(text="warm"), Reply(fault=Fault.hang())]) as srv:
        pooled.use_server(srv)
        await llm_call.acall("max/sonnet", "warm up")
        task = asyncio.create_task(llm_call.acall("max/sonnet", "hang", retry=False))
        await _wait_for_request(srv, 2)
        assert pooled.processes()
        await close_providers()
        with pytest.raises(ProviderFailed):
            await task
        assert not pooled.processes()
    assert pool_state()["processes"] == 0


async def test_streaming_through_the_pool(pooled: ClaudeEnv) -> None:
    async with ScriptedLLMServer(default=Reply(chunks=["Hel", "lo ", "there"], times=None)) as srv:
        pooled.use_server(srv)
        chunks = [c async for c in llm_call.astream("max/sonnet", "stream please")]
        text = "".join(c.text for c in chunks)
        resp = await llm_call.acall("max/sonnet", "and once more")
    assert text == "Hello there" == resp.text
    assert chunks[-1].finish_reason == "stop"
    assert pool_state()["started"] == 1


# -- images ---------------------------------------------------------------------------------


def _image_blocks(request: Any) -> list[dict[str, Any]]:
    blocks = []
    for message in request.messages:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            blocks += [b for b in content if isinstance(b, dict) and b.get("type") == "image"]
    return blocks


@pytest.mark.parametrize("pool_size", [0, 2])
async def test_images_reach_the_upstream_as_image_blocks(
    claude_env: ClaudeEnv, use_settings: Callable[..., Any], pool_size: int
) -> None:
    use_settings(claude={"use_api_key": True, "pool_size": pool_size})
    openai_part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}
    anthropic_block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    try:
        async with ScriptedLLMServer(default=Reply(text="a green pixel", times=None)) as srv:
            claude_env.use_server(srv)
            for part in (openai_part, anthropic_block):
                resp = await llm_call.acall(
                    "max/sonnet", messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
                )
                assert resp.text == "a green pixel"
            requests = _messages_requests(srv)
    finally:
        await close_providers()
    for request in requests:
        (block,) = _image_blocks(request)
        assert block["source"] == {"type": "base64", "media_type": "image/png", "data": PNG_B64}
        assert "What is this?" in request.last_user_text


async def test_an_image_in_an_earlier_turn_keeps_its_place(claude_env: ClaudeEnv) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]},
        {"role": "assistant", "content": "A pixel."},
        {"role": "user", "content": "Which colour?"},
    ]
    async with ScriptedLLMServer([Reply(text="green")]) as srv:
        claude_env.use_server(srv)
        resp = await llm_call.acall("max/sonnet", messages=messages)
        (request,) = _messages_requests(srv)
    assert resp.text == "green"
    (block,) = _image_blocks(request)
    assert block["source"]["data"] == PNG_B64
    text = request.last_user_text
    assert text.index("Look:") < text.index("A pixel.") < text.index("Which colour?")


@pytest.mark.parametrize(
    ("part", "needle"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "remote image URLs"),
        ({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}, "remote image URLs"),
        ({"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}, "image/tiff"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}}, "not valid base64"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "must be base64"),
        ({"type": "image", "source": {"type": "file", "file_id": "f1"}}, "source type 'file'"),
    ],
)
async def test_bad_images_are_usage_errors_before_any_process_starts(
    claude_env: ClaudeEnv, part: dict[str, Any], needle: str
) -> None:
    with pytest.raises(UsageError) as info:
        await llm_call.acall("max/sonnet", messages=[{"role": "user", "content": [part]}])
    assert needle in str(info.value)
    assert not claude_env.processes()


def test_remote_image_urls_pass_on_when_the_operator_allows_them() -> None:
    from llm_call.providers._claude_plan import render_content

    url = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    _, content = render_content([{"role": "user", "content": [url]}], allow_image_urls=True)
    assert content == [{"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]


def test_a_pool_left_on_a_finished_event_loop_is_killed_by_the_next_loop(
    claude_env: ClaudeEnv, use_settings: Callable[..., Any]
) -> None:
    """One ``asyncio.run`` per call without closing the providers must not pile up processes."""
    use_settings(claude={"use_api_key": True, "pool_size": 1})
    with ScriptedLLMServer(default=Reply(text="ok", times=None)).running() as srv:
        claude_env.use_server(srv)
        seen: list[set[int]] = []
        for _ in range(3):
            assert asyncio.run(llm_call.acall("max/sonnet", "hi")).text == "ok"
            seen.append(set(claude_env.processes()))
        assert all(len(s) <= 1 for s in seen), seen  # the previous loop's process was killed
        asyncio.run(close_providers())


def test_a_program_that_exits_without_closing_the_providers_leaves_nothing_behind(
    claude_env: ClaudeEnv, tmp_path: Path
) -> None:
    """``llm-call worker``, ``llm-call ask`` and scripts end with ``asyncio.run`` returning, never
    closing the providers: the pooled process and its workspace must not outlive the program."""
    import subprocess
    import sys

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    program = "import asyncio, llm_call; print(asyncio.run(llm_call.acall('max/sonnet', 'hi')).text)"
    with ScriptedLLMServer(default=Reply(text="pooled", times=None)).running() as srv:
        claude_env.use_server(srv)
        env = {**os.environ, "LLM_CALL_CLAUDE_POOL_SIZE": "1", "TMPDIR": str(scratch)}
        done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pooled"
    assert not claude_env.processes()
    assert not list(scratch.glob("llm-call-claude-pool-*"))

