"""Tasks on the ``max/*`` route: the real Claude Code CLI against the scripted Anthropic server.

Cancelling a running task kills the CLI (and its MCP server): the ``claude_env`` fixture fails
the test if any process started for it is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import llm_call
from llm_call import tasks
from llm_call.tasks import TaskHandle, TaskManager
from llm_call.testing import Fault, Reply, ScriptedLLMServer
from llm_call.types import TaskStatus
from support.claude_env import ClaudeEnv, claude_env
from support.tasks_env import managers

__all__ = ["claude_env", "managers"]

pytestmark = pytest.mark.timeout(120)


async def _messages_requests(srv: ScriptedLLMServer, n: int = 1) -> None:
    async with asyncio.timeout(60):
        while len([r for r in srv.requests if r.path == "/v1/messages"]) < n:
            await asyncio.sleep(0.02)


async def test_cancel_a_running_max_task_kills_the_cli(
    claude_env: ClaudeEnv, managers: Callable[..., Awaitable[TaskManager]], use_settings: Callable[..., Any]
) -> None:
    use_settings(retry={"max_retries": 0}, claude={"use_api_key": True})
    async with ScriptedLLMServer([Reply(fault=Fault.hang())]) as srv:
        claude_env.use_server(srv)
        mgr = await managers()
        task_id = await mgr.submit({"model": "max/sonnet", "prompt": "hi", "mcp_config": claude_env.mcp_files()})
        await _messages_requests(srv)
        assert len(claude_env.processes()) >= 2  # the CLI and its MCP server
        rec = await mgr.cancel(task_id)
        assert rec.status is TaskStatus.CANCELLED
        assert not claude_env.processes()
        kinds = [e.kind async for e in mgr.events(task_id)]
        assert kinds[0] == "queued" and kinds[-1] == "cancelled"


async def test_auto_mode_runs_a_max_call_in_the_background(claude_env: ClaudeEnv, use_settings: Callable[..., Any]) -> None:
    use_settings(retry={"max_retries": 0}, claude={"use_api_key": True})
    try:
        async with ScriptedLLMServer([Reply(text="from claude")]) as srv:
            claude_env.use_server(srv)
            handle = await llm_call.acall("max/sonnet", "hi", mode="auto")
            assert isinstance(handle, TaskHandle)
            resp = await handle.wait(timeout=90)
            assert resp.text == "from claude"
            rec = await handle.status()
            assert rec.route == "max/sonnet" and rec.status is TaskStatus.SUCCEEDED
            kinds = [e.kind async for e in handle.events()]
            assert "chunk" in kinds and rec.progress.get("chars") == len("from claude")
    finally:
        await tasks.close_manager()


async def test_a_max_task_retried_after_validation_counts_only_the_answer_it_is_on(
    claude_env: ClaudeEnv, managers: Callable[..., Awaitable[TaskManager]], use_settings: Callable[..., Any]
) -> None:
    """The record's ``progress.chars`` is what the current attempt has received: after a rejected
    answer the count starts again, so the dashboard does not add the rejected text to the new one."""
    use_settings(retry={"max_retries": 0}, claude={"use_api_key": True})
    script = [Reply(text="a long rejected answer without the word"), Reply(text="ok then")]
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_server(srv)
        mgr = await managers()
        task_id = await mgr.submit({"model": "max/sonnet", "prompt": "hi", "validate": ["contains:ok"], "max_attempts": 2})
        rec = await mgr.wait(task_id, timeout=90)
        assert rec.status is TaskStatus.SUCCEEDED, rec.error
        assert rec.progress.get("attempt") == 2
        assert rec.progress.get("chars") == len("ok then")
