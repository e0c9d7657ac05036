"""A ``max/*`` task that meets a used-up subscription window waits *queued* (``on_quota_exhausted
= "wait"``): the real Claude Code CLI in subscription mode against the scripted Anthropic server,
on the SQLite store and on a real Redis.

While it waits the task is ``queued`` (not ``running``), its record says why and until when, it
holds no worker slot (another task runs on a manager of concurrency 1), and after the reset a
worker claims it again and it succeeds with the ``quota_wait`` decision first in ``attempts``.
A cancel while it waits ends it ``cancelled``; the upstream sees no further request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_call.cli._tasks import _record_summary
from llm_call.providers.claude_quota import QUOTA
from llm_call.providers.router import close_providers
from llm_call.tasks import TaskManager
from llm_call.testing import Fault, Reply, ScriptedLLMServer, unified_ratelimit_headers
from llm_call.types import TaskRecord, TaskStatus
from support.claude_env import ClaudeEnv, claude_env
from support.redis_server import RedisServer, redis_server
from support.tasks_env import managers, openai_server

__all__ = ["claude_env", "managers", "redis_server"]

pytestmark = pytest.mark.timeout(90)

RESET_IN_S = 6  # the CLI must meet the rejection before the reset, even on a busy machine


@pytest.fixture(autouse=True)
def _fresh_quota() -> Iterator[None]:
    QUOTA.clear()
    yield
    QUOTA.clear()


@pytest.fixture(params=["sqlite", "redis"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer) -> str:
    # redis_server (one per module) is requested up front: started before claude_env counts
    # this process's children, it is not taken for a leaked one
    if request.param == "sqlite":
        return str(tmp_path / "tasks.db")
    return f"{redis_server.url}?prefix=q{uuid.uuid4().hex[:8]}"


def _rejected(reset: float) -> dict[str, str]:
    return unified_ratelimit_headers(
        "rejected", five_hour=(1.0, reset, "rejected"), seven_day=(0.5, reset + 86400, "allowed")
    )


def _allowed(reset: float) -> dict[str, str]:
    return unified_ratelimit_headers("allowed", five_hour=(0.05, reset + 18000, "allowed"))


def _messages(srv: ScriptedLLMServer) -> list[Any]:
    return [r for r in srv.requests if r.path == "/v1/messages"]


async def _result(mgr: TaskManager, task_id: str, timeout: float) -> Any:
    await mgr.wait(task_id, timeout=timeout)
    return await mgr.result(task_id)


async def _until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 60.0) -> None:
    async with asyncio.timeout(limit):
        while not await check():
            await asyncio.sleep(0.05)


async def _waiting_queued(mgr: TaskManager, task_id: str) -> TaskRecord:
    """The task's record once it waits for the quota back in the queue; fails if it ends or
    keeps running. (The ``waiting`` progress is stored a moment before the task is requeued:
    a record that says waiting but is still running is not there yet.)"""
    found: list[TaskRecord] = []

    async def check() -> bool:
        rec = await mgr.status(task_id)
        assert not rec.status.is_final, rec.error
        if rec.progress.get("waiting") and rec.status is TaskStatus.QUEUED:
            found.append(rec)
            return True
        return False

    await _until(check, "the task shows that it waits")
    return found[-1]


async def test_a_task_waits_queued_for_the_reset_without_a_worker_slot_then_succeeds(
    claude_env: ClaudeEnv,
    managers: Callable[..., Awaitable[TaskManager]],
    use_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    store_location: str,
) -> None:
    use_settings(retry={"max_retries": 0}, tasks={"heartbeat_s": 0.2})
    reset = int(time.time()) + RESET_IN_S
    script = [Reply(fault=Fault.http(429), headers=_rejected(reset)), Reply(text="after the reset", headers=_allowed(reset))]
    try:
        async with ScriptedLLMServer(script) as srv, openai_server(monkeypatch, default=Reply(text="meanwhile", times=None)):
            claude_env.use_subscription(srv)
            mgr = await managers(store_location, concurrency=1)  # one task at a time
            task_id = await mgr.submit({"model": "max/sonnet", "prompt": "hi"})

            rec = await _waiting_queued(mgr, task_id)
            assert rec.status is TaskStatus.QUEUED and rec.worker is None  # not held by a worker
            waiting = rec.progress["waiting"]
            assert waiting["window"] == "five_hour" and waiting["until"] == reset
            assert "five_hour" in waiting["reason"]
            assert f"waiting for the Claude quota (five_hour) until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(reset))}" in _record_summary(rec)

            # the only worker slot is free: another task runs while the max/* task waits
            other = await mgr.submit({"model": "openai/x", "prompt": "other"})
            assert (await _result(mgr, other, 30)).text == "meanwhile"
            rec = await mgr.status(task_id)
            assert rec.status is TaskStatus.QUEUED and rec.progress.get("waiting")
            assert len(_messages(srv)) == 1

            resp = await _result(mgr, task_id, 60)
            calls = _messages(srv)
    finally:
        await close_providers()
    assert resp.text == "after the reset"
    assert len(calls) == 2 and calls[1].at >= reset  # called again only after the reset
    assert resp.attempts[0].kind == "quota_wait" and resp.attempts[0].number == 0
    assert resp.attempts[0].error is not None and resp.attempts[0].error["type"] == "QuotaExhausted"
    assert [a.kind for a in resp.attempts[1:]] == ["answer"]
    kinds = [e.kind async for e in mgr.events(task_id)]
    wait_at = kinds.index("quota_wait")
    assert kinds[wait_at + 1] == "requeued"
    assert kinds.index("requeued") < kinds.index("quota_resume") < kinds.index("finished")
    assert kinds.count("started") == 2 and kinds.count("finished") == 1
    rec = await mgr.status(task_id)
    assert rec.status is TaskStatus.SUCCEEDED and not rec.progress.get("waiting")
    assert rec.attempts == 1  # the wait is not counted as an execution
    assert "_quota" in rec.request  # the carried decision (never sent as a call argument)


async def test_a_task_cancelled_while_it_waits_queued_ends_cancelled_and_never_runs(
    claude_env: ClaudeEnv,
    managers: Callable[..., Awaitable[TaskManager]],
    use_settings: Callable[..., Any],
    store_location: str,
) -> None:
    use_settings(retry={"max_retries": 0}, tasks={"heartbeat_s": 0.2})
    reset = int(time.time()) + RESET_IN_S
    script = [Reply(fault=Fault.http(429), headers=_rejected(reset))]
    try:
        async with ScriptedLLMServer(script, default=Reply(text="must not run", times=None)) as srv:
            claude_env.use_subscription(srv)
            mgr = await managers(store_location, concurrency=1)
            task_id = await mgr.submit({"model": "max/sonnet", "prompt": "hi"})
            rec = await _waiting_queued(mgr, task_id)
            assert rec.status is TaskStatus.QUEUED
            rec = await mgr.cancel(task_id)
            assert rec.status is TaskStatus.CANCELLED
            # past the reset, the dispatcher claims max/* tasks again: this one never runs
            await asyncio.sleep(max(reset - time.time(), 0) + 1.5)
            rec = await mgr.status(task_id)
            assert len(_messages(srv)) == 1
    finally:
        await close_providers()
    assert rec.status is TaskStatus.CANCELLED
    kinds = [e.kind async for e in mgr.events(task_id)]
    assert kinds.count("started") == 1 and kinds[-1] == "cancelled"
    assert sum(k in ("finished", "failed", "cancelled", "interrupted") for k in kinds) == 1
