"""Crash recovery: kill -9 a worker process in the middle of its tasks, restart on the same DB.

Guarantee under test: every task ends in exactly one final state (one final event), none is
missing, results recorded before the crash are intact, and tasks that were running when the
process died are re-run (or interrupted when they have no executions left).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_call.config import Settings
from llm_call.tasks import TaskManager
from llm_call.testing import Fault, Reply, ScriptedLLMServer
from support.tasks_env import MODEL, sync_eventually

LLM_CALL = str(Path(sys.executable).parent / "llm-call")
FINAL_KINDS = ("finished", "failed", "cancelled", "interrupted")


def _env(srv: ScriptedLLMServer, tmp_path: Path, config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_CALL_", "OPENAI_", "ANTHROPIC_"))}
    (tmp_path / "llm_call.toml").write_text(config)
    env.update(OPENAI_BASE_URL=srv.openai_base_url, OPENAI_API_KEY="test", LLM_CALL_CONFIG=str(tmp_path / "llm_call.toml"))
    return env


def _count(db: Path, sql: str, *args: Any) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[ScriptedLLMServer], None]:
    def use(srv: ScriptedLLMServer) -> None:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")

    return use


@pytest.fixture
def worker_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


async def _submit(db: Path, n: int, settings: Settings) -> list[str]:
    async with TaskManager(db, execute=False, settings=settings) as client:
        return list(await asyncio.gather(*(client.submit({"model": MODEL, "prompt": f"q{i}"}) for i in range(n))))


async def _restart_and_drain(db: Path, settings: Settings) -> dict[str, int]:
    async with TaskManager(db, claims="all", settings=settings) as mgr:
        await asyncio.wait_for(mgr.drain(), 120)
        return dict(mgr.finished)


@pytest.mark.timeout(240)
def test_kill_9_during_1000_tasks_then_restart(
    tmp_path: Path, openai_env: Callable[[ScriptedLLMServer], None], worker_procs: list[subprocess.Popen[bytes]]
) -> None:
    n = 1000
    rng = random.Random(1234)
    script = [Reply(text="ok", latency=rng.uniform(0.2, 0.5)) for _ in range(n)]
    db = tmp_path / "crash.db"
    settings = Settings.model_validate({"retry": {"max_retries": 0}})
    with ScriptedLLMServer(script, default=Reply(text="ok", latency=0.3, times=None)).running() as srv:
        openai_env(srv)
        ids = asyncio.run(_submit(db, n, settings))
        assert len(set(ids)) == n
        env = _env(srv, tmp_path, "[retry]\nmax_retries = 0\n")
        proc = subprocess.Popen(
            [LLM_CALL, "worker", "--tasks", str(db), "--concurrency", "250"],
            env=env, stderr=subprocess.DEVNULL,
        )
        worker_procs.append(proc)
        sync_eventually(
            lambda: _count(db, "SELECT count(*) FROM tasks WHERE status = 'succeeded'") >= 300,
            timeout=120, what="300 tasks done by the worker",
        )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL

        with sqlite3.connect(db) as conn:
            done_before = dict(conn.execute("SELECT id, result FROM tasks WHERE status = 'succeeded'").fetchall())
            running_at_kill = {r[0] for r in conn.execute("SELECT id FROM tasks WHERE status = 'running'")}
        assert len(done_before) >= 300 and running_at_kill, "the kill should catch tasks in flight"
        requests_before = len(srv.requests)

        finished = asyncio.run(_restart_and_drain(db, settings))
        assert finished == {"succeeded": n - len(done_before)}

        with sqlite3.connect(db) as conn:
            rows = dict(conn.execute("SELECT id, status FROM tasks").fetchall())
            results = dict(conn.execute("SELECT id, result FROM tasks").fetchall())
            finals = dict(
                conn.execute(
                    f"SELECT task_id, count(*) FROM events WHERE kind IN {FINAL_KINDS} GROUP BY task_id"
                ).fetchall()
            )
            requeued = {r[0] for r in conn.execute("SELECT DISTINCT task_id FROM events WHERE kind = 'requeued'")}
            workers = conn.execute("SELECT count(*) FROM workers").fetchone()[0]
        assert set(rows) == set(ids)  # none missing, none extra
        assert set(rows.values()) == {"succeeded"}
        assert finals == dict.fromkeys(ids, 1)  # exactly one final state each
        assert all(results[t] == r for t, r in done_before.items())  # completed results intact
        assert requeued == running_at_kill
        assert workers == 0  # the dead worker was removed, the restarted one unregistered
        # at-least-once: only the tasks caught running may have been sent twice
        assert n <= len(srv.requests) <= n + len(running_at_kill)
        assert len(srv.requests) - requests_before == n - len(done_before)


@pytest.mark.timeout(120)
def test_kill_9_with_no_executions_left_interrupts_the_running_tasks(
    tmp_path: Path, openai_env: Callable[[ScriptedLLMServer], None], worker_procs: list[subprocess.Popen[bytes]]
) -> None:
    db = tmp_path / "crash1.db"
    settings = Settings.model_validate({"retry": {"max_retries": 0}, "tasks": {"max_executions": 1}})
    with ScriptedLLMServer([Reply(fault=Fault.hang(), match_text="hang")], default=Reply(text="ok", times=None)).running() as srv:
        openai_env(srv)

        async def submit() -> tuple[str, list[str]]:
            async with TaskManager(db, execute=False, settings=settings) as client:
                hang = await client.submit({"model": MODEL, "prompt": "hang"})
                return hang, [await client.submit({"model": MODEL, "prompt": f"q{i}"}) for i in range(5)]

        hang, rest = asyncio.run(submit())
        env = _env(srv, tmp_path, "[tasks]\nmax_executions = 1\n\n[retry]\nmax_retries = 0\n")
        proc = subprocess.Popen([LLM_CALL, "worker", "--tasks", str(db), "-j", "1"], env=env, stderr=subprocess.DEVNULL)
        worker_procs.append(proc)
        sync_eventually(lambda: srv.in_flight == 1, what="the hanging request in flight")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert _count(db, "SELECT count(*) FROM tasks WHERE status = 'queued'") == 5

        async def restart() -> tuple[Any, list[Any]]:
            async with TaskManager(db, claims="all", settings=settings) as mgr:
                await asyncio.wait_for(mgr.drain(), 60)
                return await mgr.status(hang), [await mgr.status(t) for t in rest]

        interrupted, others = asyncio.run(restart())
        assert interrupted.status.value == "interrupted" and interrupted.request["messages"][0]["content"] == "hang"
        assert interrupted.error["type"] == "TaskInterrupted"
        assert {r.status.value for r in others} == {"succeeded"}
