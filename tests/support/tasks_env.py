"""Helpers for the task manager tests: a scripted OpenAI server wired through the environment,
managers that are closed at the end of the test, and small polling helpers with explicit bounds."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from llm_call.tasks import TaskManager
from llm_call.testing import Reply, ReplyLike, ScriptedLLMServer

__all__ = ["MODEL", "eventually", "managers", "openai_server", "sync_eventually", "task_settings"]

MODEL = "openai/x"


@asynccontextmanager
async def openai_server(
    monkeypatch: pytest.MonkeyPatch,
    script: Sequence[ReplyLike] = (),
    default: ReplyLike | None = None,
) -> AsyncIterator[ScriptedLLMServer]:
    """A scripted server that the ``openai/*`` route reaches (``OPENAI_BASE_URL``)."""
    if default is None:
        default = Reply(text="ok", times=None)
    async with ScriptedLLMServer(list(script), default=default) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield srv


def task_settings(use_settings: Callable[..., Any], **tasks: Any) -> Any:
    """Install settings with fast heartbeats and no transient retries (tests stay short)."""
    cfg = {"heartbeat_s": 0.2, **tasks}
    return use_settings(tasks=cfg, retry={"max_retries": 0})


@pytest.fixture
async def managers(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[TaskManager]]]:
    """``await managers(**kwargs)`` opens a TaskManager on ``tmp_path/tasks.db`` (by default);
    all are closed at the end of the test."""
    opened: list[TaskManager] = []

    async def open_manager(store: Any = None, **kwargs: Any) -> TaskManager:
        mgr = await TaskManager.open(store if store is not None else tmp_path / "tasks.db", **kwargs)
        opened.append(mgr)
        return mgr

    yield open_manager
    for mgr in reversed(opened):
        await mgr.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` until true; fail after ``timeout`` s (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


def sync_eventually(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
