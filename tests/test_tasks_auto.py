"""acall(mode=...): background handles, auto mode, and the timeout handoff (no second request)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import llm_call
from llm_call import tasks
from llm_call.errors import TaskPending, UsageError
from llm_call.tasks import TaskHandle
from llm_call.testing import Reply
from llm_call.types import Response, TaskStatus
from support.tasks_env import MODEL, openai_server, task_settings


@pytest.fixture(autouse=True)
async def _default_manager(use_settings: Callable[..., Any]) -> AsyncIterator[None]:
    task_settings(use_settings)
    yield
    await tasks.close_manager()


async def test_background_returns_an_awaitable_handle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with openai_server(monkeypatch, [Reply(text="later")]) as srv:
        handle = await llm_call.acall(MODEL, "hi", mode="background")
        assert isinstance(handle, TaskHandle) and handle.task_id.startswith("tk_")
        resp = await handle
        assert isinstance(resp, Response) and resp.text == "later"
        assert (await handle.status()).status is TaskStatus.SUCCEEDED
        assert len(srv.requests) == 1
    # persisted in the default store under the XDG data dir
    assert (tmp_path / "xdg-data" / "llm_call" / "tasks.db").is_file()


async def test_background_progress_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    async with openai_server(monkeypatch):
        handle = await llm_call.acall(MODEL, "hi", mode="background", progress=lambda k, d: seen.append((k, d)))
        await handle.wait()
    assert [k for k, _ in seen] == ["started", "attempt", "finished"]
    assert seen[1][1]["model"] == MODEL


async def test_direct_progress_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    async with openai_server(monkeypatch):
        resp = await llm_call.acall(MODEL, "hi", progress=lambda k, d: seen.append(k))
    assert resp.text == "ok" and seen == ["attempt"]


async def test_background_refuses_arguments_that_cannot_be_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="callable"):
        await llm_call.acall(MODEL, "hi", mode="background", validate=[lambda t: None])


async def test_auto_runs_short_calls_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    async with openai_server(monkeypatch):
        resp = await llm_call.acall(MODEL, "hi", mode="auto")
        assert isinstance(resp, Response) and resp.text == "ok"
        resp = await llm_call.acall(MODEL, "hi", mode="auto", timeout=30)
        assert isinstance(resp, Response)
    assert await tasks.list_tasks() == []  # nothing became a task


async def test_auto_sends_long_running_calls_to_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    async with openai_server(monkeypatch, [Reply(text="long")]):
        handle = await llm_call.acall(MODEL, "hi", mode="auto", long_running=True)
        assert isinstance(handle, TaskHandle)
        assert (await handle).text == "long"


async def test_long_running_by_nature() -> None:
    from llm_call._request import build_request
    from llm_call.tasks._spec import is_long_running

    def check(model: str, **kw: Any) -> bool:
        return is_long_running(*build_request(model, "x", **kw))

    assert check("max/sonnet")
    assert check(MODEL, validate=["json", "agent:Is it polite?"])
    assert check(MODEL, validate=[{"type": "agent_task", "params": {}}])
    assert check(MODEL, mcp_config={"mcpServers": {}})
    assert check(MODEL, long_running=True)
    assert not check(MODEL, validate=["json"])
    assert not check(MODEL)


async def test_timeout_hands_the_running_call_over_without_a_second_request(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    async with openai_server(monkeypatch, [Reply(text="slow answer", latency=1.5)]) as srv:
        with pytest.raises(TaskPending) as info:
            await llm_call.acall(MODEL, "slow?", mode="auto", timeout=0.3, progress=lambda k, d: seen.append(k))
        task_id = info.value.task_id
        assert task_id
        rec = await tasks.status(task_id)
        assert rec.status is TaskStatus.RUNNING and rec.attempts == 1
        resp = await tasks.wait_result(task_id, timeout=30)
        assert resp.text == "slow answer"
        assert len(srv.requests) == 1  # handed over, not cancelled and re-run
        kinds = [e.kind async for e in tasks.events(task_id)]
        assert kinds == ["queued", "started", "attempt", "finished"]
        assert (await tasks.status(task_id)).request.get("timeout") is None
    assert seen == ["attempt"]


async def test_cancel_a_handed_over_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_call.testing import Fault

    async with openai_server(monkeypatch, [Reply(fault=Fault.hang())]) as srv:
        with pytest.raises(TaskPending) as info:
            await llm_call.acall(MODEL, "hang", mode="auto", timeout=0.2)
        task_id = info.value.task_id
        assert task_id
        rec = await tasks.cancel(task_id)
        assert rec.status is TaskStatus.CANCELLED
        for _ in range(500):
            if srv.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert srv.in_flight == 0


async def test_auto_with_a_callable_validator_stays_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    async with openai_server(monkeypatch):
        resp = await llm_call.acall(MODEL, "hi", mode="auto", timeout=30, validate=[lambda text: None])
        assert isinstance(resp, Response)


async def test_module_helpers_and_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    async with openai_server(monkeypatch):
        task_id = await tasks.submit(model=MODEL, prompt="one")
        assert (await tasks.wait(task_id)).status is TaskStatus.SUCCEEDED
        assert (await tasks.result(task_id)).text == "ok"
        other = await tasks.submit({"model": MODEL, "prompt": "two"}, priority=3)
        assert (await tasks.wait_result(other)).text == "ok"
        assert {r.id for r in await tasks.list_tasks()} == {task_id, other}
        assert (await tasks.cancel(task_id)).status is TaskStatus.SUCCEEDED  # already final


def test_sync_facade(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_call.testing import ScriptedLLMServer

    with ScriptedLLMServer([], default=Reply(text="sync ok", times=None)).running() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        task_id = tasks.sync.submit({"model": MODEL, "prompt": "hi"})
        assert tasks.sync.wait_result(task_id, timeout=30).text == "sync ok"
        assert tasks.sync.status(task_id).status is TaskStatus.SUCCEEDED
        assert [e.kind for e in tasks.sync.events(task_id)][-1] == "finished"
        from llm_call._portal import portal

        portal.run(tasks.close_manager(), "close")
