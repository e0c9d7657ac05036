"""Fault injection on the task stores: what must hold when a worker dies, a write fails, the
writer thread dies, or several processes race. The invariants under test are the ones stated in
docs/tasks.md: a cancelled task never starts again; a task has exactly one final state; a worker
is declared dead only when it cannot be alive; a dead writer fails every write promptly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_call.config import Settings
from llm_call.tasks import NewTask, TaskManager, WorkerInfo, open_store
from llm_call.tasks.sqlite_store import SQLiteTaskStore
from llm_call.testing import Fault, Reply, ScriptedLLMServer
from llm_call.types import TaskStatus
from support.redis_server import RedisServer, redis_server
from support.tasks_env import MODEL, sync_eventually

__all__ = ["redis_server"]

LLM_CALL = str(Path(sys.executable).parent / "llm-call")
FINAL_KINDS = ("finished", "failed", "cancelled", "interrupted")


def _task(n: int = 0, route: str = "openai/x", **kw: Any) -> NewTask:
    return NewTask(request={"model": route, "messages": [{"role": "user", "content": f"q{n}"}]}, route=route, **kw)


@pytest.fixture(params=["sqlite", "redis"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        store: Any = SQLiteTaskStore(tmp_path / "tasks.db")
        await store.open()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = await open_store(f"{server.url}?prefix=f{uuid.uuid4().hex[:8]}")
    yield store
    await store.close()


# -- 1. a cancel is never lost across a crash or a shutdown -----------------------------------------


async def test_release_of_a_running_task_with_a_cancel_request_ends_it_cancelled(any_store: Any) -> None:
    rec, _ = await any_store.submit(_task(1))
    [claimed] = await any_store.claim("w1", limit=1)
    assert claimed.id == rec.id
    await any_store.request_cancel(rec.id)
    assert await any_store.release([rec.id], "w1") == []  # not put back in the queue
    got = await any_store.get(rec.id)
    assert got.status is TaskStatus.CANCELLED
    assert await any_store.claim("w2", limit=5) == []  # nobody can start it again
    kinds = [e.kind for e in await any_store.read_events(rec.id)]
    assert sum(k in FINAL_KINDS for k in kinds) == 1 and kinds[-1] == "cancelled"


async def test_recovery_of_a_dead_workers_cancelled_task_does_not_requeue_it(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    await store.open()
    try:
        rec, _ = await store.submit(_task(1))
        dead = WorkerInfo(id="dead", kind="worker", claims="all", concurrency=1, host="elsewhere", pid=1)
        await store.heartbeat(dead)
        assert [r.id for r in await store.claim("dead", limit=1)] == [rec.id]
        await store.request_cancel(rec.id)
        with sqlite3.connect(tmp_path / "tasks.db") as conn:  # its last heartbeat, long ago
            conn.execute("UPDATE workers SET heartbeat_at = 0")
        report = await store.recover(max_executions=3, stale_after=1.0)
        assert report.cancelled == [rec.id] and report.requeued == []
        got = await store.get(rec.id)
        assert got is not None and got.status is TaskStatus.CANCELLED
        assert await store.claim("w2", limit=5) == []
    finally:
        await store.close()


@pytest.fixture
def worker_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


@pytest.mark.timeout(90)
def test_cancel_while_the_worker_is_dead_then_a_new_worker_never_runs_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_procs: list[subprocess.Popen[bytes]]
) -> None:
    db = tmp_path / "cancel.db"
    settings = Settings.model_validate({"retry": {"max_retries": 0}})
    with ScriptedLLMServer([Reply(fault=Fault.hang(), match_text="hang")], default=Reply(text="ok", times=None)).running() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")

        async def submit() -> str:
            async with TaskManager(db, execute=False, settings=settings) as client:
                return await client.submit({"model": MODEL, "prompt": "hang"})

        task_id = asyncio.run(submit())
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_CALL_")}
        (tmp_path / "llm_call.toml").write_text("[retry]\nmax_retries = 0\n")
        env["LLM_CALL_CONFIG"] = str(tmp_path / "llm_call.toml")
        proc = subprocess.Popen([LLM_CALL, "worker", "--tasks", str(db), "-j", "1"], env=env, stderr=subprocess.DEVNULL)
        worker_procs.append(proc)
        sync_eventually(lambda: srv.in_flight == 1, what="the task's request in flight")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

        async def cancel_then_restart() -> Any:
            async with TaskManager(db, execute=False, settings=settings) as client:
                rec = await client.cancel(task_id)
                assert rec.status is TaskStatus.RUNNING and rec.cancel_requested  # nobody alive to act on it
            async with TaskManager(db, claims="all", settings=settings) as mgr:
                await asyncio.wait_for(mgr.drain(), 30)
                return await mgr.status(task_id)

        final = asyncio.run(cancel_then_restart())
        assert final.status is TaskStatus.CANCELLED
        assert len(srv.requests) == 1  # the upstream saw the call once: it was not run again
        with sqlite3.connect(db) as conn:
            kinds = [r[0] for r in conn.execute("SELECT kind FROM events WHERE task_id = ? ORDER BY seq", (task_id,))]
        assert "requeued" not in kinds and sum(k in FINAL_KINDS for k in kinds) == 1
