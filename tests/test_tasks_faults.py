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
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llm_call.config import Settings
from llm_call.errors import TaskStoreError
from llm_call.tasks import NewTask, Outcome, TaskManager, WorkerInfo, open_store
from llm_call.tasks.redis_store import RedisTaskStore
from llm_call.tasks.sqlite_store import SQLiteTaskStore
from llm_call.testing import Fault, Reply, ScriptedLLMServer
from llm_call.types import TaskStatus
from support.llm_server import serve_llm
from support.redis_server import RedisServer, redis_server
from support.tasks_env import MODEL, sync_eventually

__all__ = ["redis_server", "serve_llm"]

LLM_CALL = str(Path(sys.executable).parent / "llm-call")
FINAL_KINDS = ("finished", "failed", "cancelled", "interrupted")


def _task(n: int = 0, route: str = "openai/x", **kw: Any) -> NewTask:
    return NewTask(request={"model": route, "messages": [{"role": "user", "content": f"q{n}"}]}, route=route, **kw)


def _gone_pid() -> int:
    """The pid of a process of this namespace that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


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


async def test_requeue_of_a_running_task_with_a_cancel_request_ends_it_cancelled(any_store: Any) -> None:
    # a max/* task going back to the queue to wait for the Claude quota (RequeuesWaiting)
    rec, _ = await any_store.submit(_task(1, route="max/sonnet", owner="w1"))
    [claimed] = await any_store.claim("w1", limit=1, claim_all=False)
    assert claimed.id == rec.id
    await any_store.request_cancel(rec.id)
    request = {**rec.request, "_quota": {"attempts": []}}
    assert await any_store.requeue(rec.id, "w1", request=request, data={"reason": "quota_wait"}) is TaskStatus.CANCELLED
    got = await any_store.get(rec.id)
    assert got.status is TaskStatus.CANCELLED
    assert await any_store.claim("w1", limit=5, claim_all=False) == [] and await any_store.claim("w2", limit=5) == []
    kinds = [e.kind for e in await any_store.read_events(rec.id)]
    assert sum(k in FINAL_KINDS for k in kinds) == 1 and kinds[-1] == "cancelled" and "requeued" not in kinds


async def test_requeue_puts_a_running_task_back_for_its_owner_with_its_new_request(any_store: Any) -> None:
    rec, _ = await any_store.submit(_task(1, route="max/sonnet", owner="w1"))
    [claimed] = await any_store.claim("w1", limit=1, claim_all=False)
    assert claimed.attempts == 1
    request = {**rec.request, "_quota": {"attempts": [{"number": 0, "model": "max/sonnet", "kind": "quota_wait"}]}}
    data = {"reason": "quota_wait", "window": "five_hour", "until": 1234.0}
    assert await any_store.requeue(rec.id, "w2", request=request, data=data) is None  # fenced: not w2's
    assert await any_store.requeue(rec.id, "w1", request=request, data=data) is TaskStatus.QUEUED
    got = await any_store.get(rec.id)
    assert got.status is TaskStatus.QUEUED and not got.worker and got.owner == "w1"
    assert got.attempts == 0 and got.request == request  # the wait is no execution; the new request is kept
    assert await any_store.requeue(rec.id, "w1", request=request, data=data) is None  # not running any more
    assert await any_store.claim("w2", limit=5) == []  # still reserved for its owner
    [again] = await any_store.claim("w1", limit=1, claim_all=False)
    assert again.id == rec.id and again.request == request and again.attempts == 1
    events = await any_store.read_events(rec.id)
    assert [e.kind for e in events] == ["queued", "started", "requeued", "started"]
    assert events[2].data == {"worker": "w1", **data}


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


async def test_redis_recovery_of_a_dead_workers_cancelled_task_does_not_requeue_it(redis_server: RedisServer) -> None:
    store = await open_store(f"{redis_server.url}?prefix=r{uuid.uuid4().hex[:8]}")
    try:
        rec, _ = await store.submit(_task(1))
        await store.heartbeat(WorkerInfo(id="dead", kind="worker", claims="all", pid=_gone_pid()))
        assert [r.id for r in await store.claim("dead", limit=1)] == [rec.id]
        await store.request_cancel(rec.id)
        report = await store.recover(max_executions=3, stale_after=30.0)
        assert report.dead_workers == ["dead"] and report.cancelled == [rec.id] and report.requeued == []
        got = await store.get(rec.id)
        assert got is not None and got.status is TaskStatus.CANCELLED
        assert await store.claim("w2", limit=5) == []
        kinds = [e.kind for e in await store.read_events(rec.id)]
        assert "requeued" not in kinds and sum(k in FINAL_KINDS for k in kinds) == 1 and kinds[-1] == "cancelled"
    finally:
        await store.close()


async def test_redis_a_swept_job_whose_cancel_was_requested_ends_cancelled(redis_server: RedisServer) -> None:
    # a worker of another host stops touching its job (no pid check can see it die): SAQ's sweep
    # in recovery finds it stale; with its cancel requested it ends cancelled, never re-queued
    store = await open_store(f"{redis_server.url}?prefix=s{uuid.uuid4().hex[:8]}&job_heartbeat_s=1")
    try:
        rec, _ = await store.submit(_task(1))
        await store.heartbeat(WorkerInfo(id="far", kind="worker", claims="all", host="elsewhere"))
        assert [r.id for r in await store.claim("far", limit=1)] == [rec.id]
        await store.request_cancel(rec.id)
        await asyncio.sleep(1.5)  # the job's SAQ heartbeat (1 s) goes stale: "far" stopped touching it
        report = await store.recover(max_executions=3, stale_after=30.0)  # "far" itself looks alive
        assert report.cancelled == [rec.id] and report.requeued == [] and report.dead_workers == []
        got = await store.get(rec.id)
        assert got is not None and got.status is TaskStatus.CANCELLED
        assert await store.claim("w2", limit=5) == []
        assert not await store.finish(rec.id, "far", Outcome(TaskStatus.SUCCEEDED, result={"text": "late"}))
        kinds = [e.kind for e in await store.read_events(rec.id)]
        assert "requeued" not in kinds and sum(k in FINAL_KINDS for k in kinds) == 1 and kinds[-1] == "cancelled"
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
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_cancel_while_the_worker_is_dead_then_a_new_worker_never_runs_it_again(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    worker_procs: list[subprocess.Popen[bytes]],
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    if backend == "sqlite":
        db = str(tmp_path / "cancel.db")
    else:
        db = f"{request.getfixturevalue('redis_server').url}?prefix=c{uuid.uuid4().hex[:8]}"
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
        proc = subprocess.Popen([LLM_CALL, "worker", "--tasks", db, "-j", "1"], env=env, stderr=subprocess.DEVNULL)
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
                return await mgr.status(task_id), [e.kind for e in await mgr.store.read_events(task_id)]

        final, kinds = asyncio.run(cancel_then_restart())
        assert final.status is TaskStatus.CANCELLED
        assert len(srv.requests) == 1  # the upstream saw the call once: it was not run again
        assert "requeued" not in kinds and sum(k in FINAL_KINDS for k in kinds) == 1


# -- 2. recording an outcome that fails once is retried, never left `running` ------------------------


async def test_a_cancel_of_a_task_running_here_is_stored_before_cancel_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the work stopped, but its outcome is not recorded yet (a slow kill of a CLI, a busy store):
    # if this process died now, recovery must end the task cancelled, not run it again
    settings = Settings.model_validate({"retry": {"max_retries": 0}, "tasks": {"heartbeat_s": 0.2}})
    async with ScriptedLLMServer([Reply(fault=Fault.hang(), match_text="hang")]) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        store = FailingFinishStore(tmp_path / "tasks.db", fail=10**6)  # no outcome gets recorded
        async with TaskManager(store, claims="all", settings=settings) as mgr:
            task_id = await mgr.submit({"model": MODEL, "prompt": "hang"})
            for _ in range(400):
                if srv.in_flight == 1:
                    break
                await asyncio.sleep(0.025)
            assert srv.in_flight == 1
            rec = await mgr.cancel(task_id, timeout=0.5)
            assert rec.status is TaskStatus.RUNNING  # its outcome could not be recorded
            stored = await store.get(task_id)
            assert stored is not None and stored.cancel_requested  # before the fix: only in memory
        with sqlite3.connect(tmp_path / "tasks.db") as conn:  # this worker is gone now
            conn.execute("DELETE FROM workers")
        async with TaskManager(tmp_path / "tasks.db", claims="all", settings=settings) as again:
            final = await asyncio.wait_for(again.wait(task_id), 20)
    assert final.status is TaskStatus.CANCELLED and len(srv.requests) == 1




class FailingFinishStore(SQLiteTaskStore):
    """A SQLite store whose first ``fail`` outcome writes raise, as a busy lock or an I/O error would."""

    def __init__(self, path: Path, fail: int = 1) -> None:
        super().__init__(path)
        self.to_fail = fail
        self.finish_calls = 0

    def _maybe_fail(self) -> None:
        self.finish_calls += 1
        if self.to_fail > 0:
            self.to_fail -= 1
            raise TaskStoreError("task store: database is locked (injected)")

    async def finish_with_events(self, *args: Any, **kwargs: Any) -> bool:
        self._maybe_fail()
        return await super().finish_with_events(*args, **kwargs)

    async def finish(self, *args: Any, **kwargs: Any) -> bool:
        self._maybe_fail()
        return await super().finish(*args, **kwargs)


@pytest.mark.parametrize("fail", [1, 3])
async def test_a_failed_outcome_write_is_retried_until_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: int
) -> None:
    settings = Settings.model_validate({"retry": {"max_retries": 0}, "tasks": {"heartbeat_s": 0.2}})
    async with ScriptedLLMServer(default=Reply(text="the answer", times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        store = FailingFinishStore(tmp_path / "tasks.db", fail=fail)
        async with TaskManager(store, claims="all", settings=settings) as mgr:
            task_id = await mgr.submit({"model": MODEL, "prompt": "q"})
            rec = await asyncio.wait_for(mgr.wait(task_id), 20)  # before the fix: running forever
        assert rec.status is TaskStatus.SUCCEEDED and rec.result["text"] == "the answer"
        assert store.finish_calls == fail + 1 and len(srv.requests) == 1  # recorded, not re-run


class FailingFinishRedisStore(RedisTaskStore):
    """The Redis store (no combined finish-with-events: the manager stores events, then finishes)
    whose first ``fail`` outcome writes raise, as a dropped connection would."""

    def __init__(self, url: str, fail: int = 1) -> None:
        super().__init__(url)
        self.to_fail = fail
        self.finish_calls = 0

    async def finish(self, *args: Any, **kwargs: Any) -> bool:
        self.finish_calls += 1
        if self.to_fail > 0:
            self.to_fail -= 1
            raise TaskStoreError("task store: finish: ConnectionError (injected)")
        return await super().finish(*args, **kwargs)


@pytest.mark.parametrize("fail", [1, 3])
async def test_a_failed_outcome_write_on_redis_is_retried_until_recorded(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, fail: int
) -> None:
    settings = Settings.model_validate({"retry": {"max_retries": 0}, "tasks": {"heartbeat_s": 0.2}})
    async with ScriptedLLMServer(default=Reply(text="the answer", times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        store = FailingFinishRedisStore(f"{redis_server.url}?prefix=o{uuid.uuid4().hex[:8]}", fail=fail)
        await store.open()
        try:
            async with TaskManager(store, claims="all", settings=settings) as mgr:
                task_id = await mgr.submit({"model": MODEL, "prompt": "q"})
                rec = await asyncio.wait_for(mgr.wait(task_id), 20)  # without the retry: running forever
            kinds = [e.kind for e in await store.read_events(task_id)]
        finally:
            await store.close()
    assert rec.status is TaskStatus.SUCCEEDED and rec.result["text"] == "the answer"
    assert store.finish_calls == fail + 1 and len(srv.requests) == 1  # recorded, not re-run
    assert sum(k in FINAL_KINDS for k in kinds) == 1 and kinds[-1] == "finished"


def _fail_nth_write(store: Any, n: int) -> None:
    """Make the store's ``n``-th write from now fail without running (a busy lock, a dropped
    connection): the SQLite writer's queue, or a Redis script call."""
    count = 0
    if isinstance(store, SQLiteTaskStore):
        enqueue = store._db.enqueue

        def failing_enqueue(op: Any) -> Any:
            nonlocal count
            count += 1
            if count == n:
                failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                failed.set_exception(TaskStoreError("task store: disk I/O error (injected)"))
                return failed
            return enqueue(op)

        store._db.enqueue = failing_enqueue  # type: ignore[method-assign]
    else:
        run = store._run

        async def failing_run(script: str, *args: Any) -> Any:
            nonlocal count
            count += 1
            if count == n:
                raise TaskStoreError(f"task store: {script}: ConnectionError (injected)")
            return await run(script, *args)

        store._run = failing_run


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_whichever_write_fails_every_accepted_task_runs_once_and_ends_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backend: str
) -> None:
    """The Nth write fails, for each N over a few submits and their runs: a submit that failed
    raises and stores nothing; every task it accepted is run once and ends in one final state."""
    settings = Settings.model_validate({"retry": {"max_retries": 0}, "tasks": {"heartbeat_s": 0.2, "global_limit": 2}})
    async with ScriptedLLMServer(default=Reply(text="ok", times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        for n in range(1, 11):
            if backend == "sqlite":
                store: Any = SQLiteTaskStore(tmp_path / f"nth{n}.db")
                await store.open()
            else:
                store = await open_store(f"{request.getfixturevalue('redis_server').url}?prefix=w{uuid.uuid4().hex[:8]}")
            before = len(srv.requests)
            try:
                async with TaskManager(store, claims="all", settings=settings) as mgr:
                    _fail_nth_write(store, n)
                    accepted, refused = [], 0
                    for i in range(4):
                        try:
                            accepted.append(await mgr.submit({"model": MODEL, "prompt": f"q{i}"}))
                        except TaskStoreError:
                            refused += 1
                    records = [await asyncio.wait_for(mgr.wait(t), 20) for t in accepted]
                    kinds = [[e.kind for e in await store.read_events(t)] for t in accepted]
            finally:
                await store.close()
            assert refused <= 1 and len(accepted) + refused == 4, n
            assert [r.status for r in records] == [TaskStatus.SUCCEEDED] * len(accepted), (n, records)
            assert all(sum(k in FINAL_KINDS for k in ks) == 1 for ks in kinds), (n, kinds)
            assert len(srv.requests) - before == len(accepted), n  # each accepted task run once


# -- 3. a dead writer thread fails every write promptly; health and workers notice -------------------


class WriterKilled(BaseException):
    """Not an Exception: what escapes the writer's error handling and kills its thread."""


def _kill_writer(conn: sqlite3.Connection) -> None:
    raise WriterKilled("injected")


async def test_a_dead_writer_thread_fails_pending_and_later_writes(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    await store.open()
    try:
        assert store.broken() is None
        # writes queued in the same batch as the fault, and one after it
        pending = [store.submit(_task(i)) for i in range(5)]
        results = await asyncio.wait_for(
            asyncio.gather(*pending, store._write(_kill_writer), return_exceptions=True), 10
        )
        assert all(isinstance(r, TaskStoreError) for r in results), results  # the batch's writes too
        broken = store.broken()
        assert isinstance(broken, TaskStoreError) and "writer stopped" in str(broken)
        with pytest.raises(TaskStoreError, match="writer stopped"):
            await asyncio.wait_for(store.submit(_task(9)), 5)  # before the fix: waits forever
        assert await store.counts() == {}  # reads still work; nothing of the failed batch was kept
    finally:
        await asyncio.wait_for(store.close(), 10)


async def test_a_writer_that_dies_mid_transaction_releases_the_write_lock(tmp_path: Path) -> None:
    # the writer dies inside a batch's BEGIN IMMEDIATE: other processes on the file must still
    # write (their workers, heartbeats and submits), not wait out the busy timeout for ever
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    await store.open()
    try:
        pending = [store.submit(_task(i)) for i in range(3)]
        await asyncio.wait_for(asyncio.gather(*pending, store._write(_kill_writer), return_exceptions=True), 10)
        assert store.broken() is not None
        other = sqlite3.connect(tmp_path / "tasks.db", timeout=2.0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # before the fix: "database is locked" until close()
            other.execute("UPDATE tasks SET priority = priority")
            other.execute("COMMIT")
        finally:
            other.close()
    finally:
        await asyncio.wait_for(store.close(), 10)


async def test_a_batch_that_cannot_get_the_lock_fails_at_once_not_one_busy_wait_per_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another process holds the write lock past the busy timeout: nothing of the batch ran, so
    # its writes fail together; replaying them one by one made the k-th wait k busy timeouts
    from llm_call.tasks import _sqlite_db

    monkeypatch.setattr(_sqlite_db, "_BUSY_TIMEOUT_S", 0.2)
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    await store.open()
    begins: list[str] = []
    assert store._db._wconn is not None
    store._db._wconn.set_trace_callback(lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
    lock = sqlite3.connect(tmp_path / "tasks.db", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        results = await asyncio.wait_for(
            asyncio.gather(*(store.submit(_task(i)) for i in range(5)), return_exceptions=True), 30
        )
        assert all(isinstance(r, TaskStoreError) and "locked" in str(r) for r in results), results
        assert len(begins) == 1  # before the fix: 6 (the batch, then each write again)
        lock.execute("COMMIT")
        _, created = await asyncio.wait_for(store.submit(_task(9)), 10)  # the lock is free: it writes
        assert created and store.broken() is None
    finally:
        lock.close()
        await asyncio.wait_for(store.close(), 10)


async def test_a_worker_on_a_broken_store_stops_with_the_error(tmp_path: Path) -> None:
    from llm_call.tasks.worker import run_worker

    store = SQLiteTaskStore(tmp_path / "tasks.db")
    settings = Settings.model_validate({"tasks": {"heartbeat_s": 0.2}})
    ready = asyncio.Event()
    worker = asyncio.create_task(run_worker(store, settings=settings, on_ready=lambda m: ready.set(), grace=0))
    await asyncio.wait_for(ready.wait(), 10)
    with pytest.raises(TaskStoreError):
        await store._write(_kill_writer)
    with pytest.raises(TaskStoreError, match="writer stopped"):  # `llm-call worker` exits non-zero
        await asyncio.wait_for(worker, 10)


def test_health_answers_503_once_the_task_store_writer_died(serve_llm: Any) -> None:
    import httpx

    served = serve_llm()
    assert httpx.get(served.url + "/health").status_code == 200
    store = served.server.app.state.llm_call.tasks.store

    async def kill() -> None:
        with pytest.raises(TaskStoreError):
            await store._write(_kill_writer)

    asyncio.run(kill())
    got = httpx.get(served.url + "/health")  # before the fix: 200, because reads still work
    assert got.status_code == 503


# -- 4. a worker is declared dead only when it cannot be alive ---------------------------------------


@pytest.mark.timeout(90)
async def test_a_lock_held_longer_than_the_stale_window_does_not_requeue_a_running_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_procs: list[subprocess.Popen[bytes]]
) -> None:
    db = tmp_path / "lock.db"
    settings = Settings.model_validate({"retry": {"max_retries": 0}, "tasks": {"heartbeat_s": 0.2}})
    stale_after = 0.6  # what the worker's managers use: 3 heartbeats of 0.2 s
    async with ScriptedLLMServer(default=Reply(text="done", latency=3.0, times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        store = SQLiteTaskStore(db)
        await store.open()
        try:
            async with TaskManager(store, execute=False, settings=settings) as client:
                task_id = await client.submit({"model": MODEL, "prompt": "slow"})
                env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_CALL_")}
                (tmp_path / "llm_call.toml").write_text("[retry]\nmax_retries = 0\n[tasks]\nheartbeat_s = 0.2\n")
                env["LLM_CALL_CONFIG"] = str(tmp_path / "llm_call.toml")
                worker_procs.append(
                    subprocess.Popen([LLM_CALL, "worker", "--tasks", str(db), "-j", "1"], env=env, stderr=subprocess.DEVNULL)  # noqa: ASYNC220 (Popen returns at once)
                )
                for _ in range(600):
                    if srv.in_flight == 1:
                        break
                    await asyncio.sleep(0.05)
                assert srv.in_flight == 1
                # another process holds the write lock for several stale windows: the worker's
                # heartbeats wait behind it, and the recovery below runs the moment it is free
                lock = sqlite3.connect(db, isolation_level=None)
                lock.execute("BEGIN IMMEDIATE")
                await asyncio.sleep(stale_after * 3)
                lock.execute("COMMIT")
                report = await store.recover(max_executions=3, stale_after=stale_after)
                lock.close()
                assert report.requeued == [] and report.dead_workers == []  # before the fix: requeued
                rec = await asyncio.wait_for(client.wait(task_id), 30)
        finally:
            await store.close()
        assert rec.status is TaskStatus.SUCCEEDED and rec.attempts == 1
        assert len(srv.requests) == 1  # run exactly once


class SlowCleanupRedisStore(RedisTaskStore):
    """A Redis store whose retention sweeps after the first take longer than a job's heartbeat
    window (a million expired tasks to prune); bounded, so nothing can hang."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.cleanups = 0
        self.cleaning = asyncio.Event()

    async def cleanup(self, older_than: float) -> int:
        self.cleanups += 1
        if self.cleanups > 1:
            self.cleaning.set()
            await asyncio.sleep(4.0)
        return await super().cleanup(older_than)


@pytest.mark.timeout(90)
async def test_a_long_retention_sweep_does_not_hold_up_redis_heartbeats(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_call.tasks import _executor

    monkeypatch.setattr(_executor, "_CLEANUP_EVERY_S", 0.3)  # the hourly sweep, now
    settings = Settings.model_validate({"retry": {"max_retries": 0}, "tasks": {"heartbeat_s": 0.2}})
    url = f"{redis_server.url}?prefix=h{uuid.uuid4().hex[:8]}&job_heartbeat_s=1"
    async with ScriptedLLMServer(default=Reply(text="done", latency=3.0, times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        worker_store = SlowCleanupRedisStore(url)
        await worker_store.open()
        other = await open_store(url)  # another process's recovery
        try:
            async with (
                TaskManager(worker_store, claims="all", settings=settings) as worker,
                TaskManager(other, execute=False, settings=settings) as client,
            ):
                await worker.start()
                task_id = await client.submit({"model": MODEL, "prompt": "slow"})
                for _ in range(400):
                    if srv.in_flight == 1 and worker_store.cleaning.is_set():
                        break
                    await asyncio.sleep(0.025)
                assert srv.in_flight == 1 and worker_store.cleaning.is_set()
                await asyncio.sleep(1.5)  # past the job's 1 s heartbeat window, the sweep still going
                report = await other.recover(max_executions=3, stale_after=30.0)
                assert report.requeued == []  # before the fix: swept and re-queued while it ran
                rec = await asyncio.wait_for(client.wait(task_id), 30)
        finally:
            await worker_store.close()
            await other.close()
    assert rec.status is TaskStatus.SUCCEEDED and rec.attempts == 1
    assert len(srv.requests) == 1  # run exactly once


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_tasks_of_a_manager_whose_event_loop_ended_without_close_run_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backend: str
) -> None:
    """``asyncio.run(...)`` returns while the loop's default manager runs a task and holds another
    queued for itself; the process lives on. Its worker is alive by its pid, so recovery would
    never touch them: the manager must hand them back as its loop ends."""
    from llm_call import tasks
    from llm_call.config import set_settings

    if backend == "sqlite":
        db = str(tmp_path / "abandoned.db")
    else:
        db = f"{request.getfixturevalue('redis_server').url}?prefix=a{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {"retry": {"max_retries": 0}, "tasks": {"store": db, "heartbeat_s": 0.2, "global_limit": 1}}
    )
    with ScriptedLLMServer([Reply(fault=Fault.hang(), match_text="first")], default=Reply(text="ok", times=None)).running() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        set_settings(settings)

        async def submit_and_return() -> list[str]:
            ids = [await tasks.submit(model=MODEL, prompt="first"), await tasks.submit(model=MODEL, prompt="second")]
            for _ in range(400):  # the first is running here, the second queued for this manager
                if srv.in_flight == 1:
                    break
                await asyncio.sleep(0.025)
            assert srv.in_flight == 1
            return ids  # the loop ends without closing its default manager

        ids = asyncio.run(submit_and_return())

        async def another_worker() -> list[Any]:
            async with TaskManager(db, claims="all", settings=settings) as worker:
                return [await asyncio.wait_for(worker.wait(i), 20) for i in ids]  # before the fix: running for ever

        records = asyncio.run(another_worker())
    assert [r.status for r in records] == [TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED]
    assert len(srv.requests) == 3  # the first cut by the loop's end and run again, the second once


async def test_a_worker_whose_pid_was_reused_is_dead(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    await store.open()
    try:
        rec, _ = await store.submit(_task(1))
        # registered long before this process (which now has its pid) started: a former process
        former = WorkerInfo(id="former", kind="worker", claims="all", pid=os.getpid(), started_at=1000.0)
        await store.heartbeat(former)
        assert [r.id for r in await store.claim("former", limit=1)] == [rec.id]
        report = await store.recover(max_executions=3, stale_after=3600)  # its heartbeat is fresh
        assert report.dead_workers == ["former"] and report.requeued == [rec.id]  # before the fix: alive
        alive = WorkerInfo(id="alive", kind="worker", claims="all")  # this process, registered now
        await store.heartbeat(alive)
        assert [r.id for r in await store.claim("alive", limit=1)] == [rec.id]
        with sqlite3.connect(tmp_path / "tasks.db") as conn:  # silent for an hour, yet alive
            conn.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 3600")
        report = await store.recover(max_executions=3, stale_after=1.0)
        assert report.dead_workers == [] and report.requeued == []
    finally:
        await store.close()


async def test_a_worker_in_another_pid_namespace_of_this_host_is_judged_by_its_heartbeat(
    any_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # containers with host networking share the host name, not their pids: a worker's pid from
    # another container means nothing here (absent, or another process)
    from llm_call.tasks import store as store_module

    rec, _ = await any_store.submit(_task(1))
    with monkeypatch.context() as m:
        m.setattr(store_module, "_pid_namespace", lambda: "pid:[4026532999]", raising=False)
        other = WorkerInfo(id="container", kind="worker", claims="all", pid=_gone_pid())
    await any_store.heartbeat(other)
    assert [r.id for r in await any_store.claim("container", limit=1)] == [rec.id]
    report = await any_store.recover(max_executions=3, stale_after=30.0)
    assert report.dead_workers == [] and report.requeued == []  # before the fix: dead at once, run twice
    assert [w.id for w in await any_store.workers(alive_within=30.0)] == ["container"]
    got = await any_store.get(rec.id)
    assert got is not None and got.status is TaskStatus.RUNNING and got.worker == "container"


async def test_redis_workers_named_alike_in_the_url_in_other_containers_are_judged_by_heartbeat(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ?host=node1 on every container of a node (to share its per-host limits): still two PID namespaces
    from llm_call.tasks import store as store_module

    url = f"{redis_server.url}?prefix=n{uuid.uuid4().hex[:8]}&host=node1"
    with monkeypatch.context() as m:
        m.setattr(store_module, "_pid_namespace", lambda: "pid:[4026532999]", raising=False)
        there = await open_store(url)  # a worker's store in another container
    here = await open_store(url)
    try:
        rec, _ = await here.submit(_task(1))
        await there.heartbeat(WorkerInfo(id="container", kind="worker", claims="all", pid=_gone_pid()))
        assert [r.id for r in await there.claim("container", limit=1)] == [rec.id]
        report = await here.recover(max_executions=3, stale_after=30.0)
        assert report.dead_workers == [] and report.requeued == []  # before the fix: dead at once
    finally:
        await there.close()
        await here.close()


async def test_cleanup_removes_every_expired_task_in_small_transactions(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "tasks.db")
    await store.open()
    try:
        await asyncio.gather(*(store.submit(_task(i)) for i in range(1200)))
        with sqlite3.connect(tmp_path / "tasks.db") as conn:
            conn.execute("UPDATE tasks SET status = 'succeeded', finished_at = 1.0")
        keep, _ = await store.submit(_task(9999))
        commits = store._db.commits
        assert await store.cleanup(older_than=100.0) == 1200
        assert store._db.commits - commits >= 3  # chunks, not one long transaction holding the lock
        assert [r.id for r in await store.list_tasks()] == [keep.id]
        assert await store.read_events(keep.id) != []
    finally:
        await store.close()


# -- 5. a queue limit holds against several processes submitting at once -----------------------------

_SUBMITTER = r"""
import asyncio, json, os, sys, time
from pathlib import Path
from llm_call.config import Settings
from llm_call.errors import QueueFull
from llm_call.tasks import TaskManager

store, go, limit, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
settings = Settings.model_validate({"tasks": {"queue_limits": {"openai/*": limit}}})

async def main() -> None:
    async with TaskManager(store, execute=False, settings=settings) as client:
        print("ready", flush=True)
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        got = await asyncio.gather(
            *(client.submit({"model": "openai/x", "prompt": f"p{os.getpid()}-{i}"}) for i in range(n)),
            return_exceptions=True,
        )
    full = [g for g in got if isinstance(g, QueueFull)]
    other = [repr(g) for g in got if isinstance(g, BaseException) and not isinstance(g, QueueFull)]
    print(json.dumps({"queued": len(got) - len(full) - len(other), "full": len(full), "other": other}), flush=True)

asyncio.run(main())
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_processes_submitting_at_once_never_overshoot_a_queue_limit(
    tmp_path: Path, request: pytest.FixtureRequest, worker_procs: list[subprocess.Popen[bytes]], backend: str
) -> None:
    import json

    limit, procs, each = 4, 3, 6
    if backend == "sqlite":
        url = str(tmp_path / "limits.db")
    else:
        url = f"{request.getfixturevalue('redis_server').url}?prefix=q{uuid.uuid4().hex[:8]}"
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_CALL_")}
    env["LLM_CALL_CONFIG"] = str(tmp_path / "none.toml")
    (tmp_path / "none.toml").write_text("")
    for _ in range(procs):
        worker_procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _SUBMITTER, url, str(go), str(limit), str(each)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        )
    for p in worker_procs:  # all opened the store: start them together
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == b"ready", (line, p.stderr.read() if p.stderr else b"")
    go.touch()
    results = []
    for p in worker_procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert all(r["other"] == [] for r in results), results
    assert sum(r["queued"] for r in results) == limit, results  # before the fix: more than the limit

    async def waiting() -> int:
        store = await open_store(url)
        try:
            return len(await store.list_tasks(status=TaskStatus.QUEUED, limit=100))
        finally:
            await store.close()

    assert asyncio.run(waiting()) == limit


# -- 7. Redis pushes cancel requests and events: they arrive with polling set to once a minute -------


@dataclass
class _Hung:
    """A task whose call hangs on a worker, followed (``seen``) by another manager (``client``)."""

    worker: TaskManager
    client: TaskManager
    task_id: str
    seen: list[str]
    follower: asyncio.Task[None]


@asynccontextmanager
async def _hung_task_on_redis(url: str, monkeypatch: pytest.MonkeyPatch, fallback_poll_s: float) -> AsyncIterator[_Hung]:
    settings = Settings.model_validate(
        {"retry": {"max_retries": 0}, "tasks": {"heartbeat_s": 0.2, "fallback_poll_s": fallback_poll_s}}
    )
    async with ScriptedLLMServer([Reply(fault=Fault.hang(), match_text="hang")]) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        worker_store, client_store = await open_store(url), await open_store(url)
        try:
            async with (
                TaskManager(worker_store, claims="all", settings=settings) as worker,
                TaskManager(client_store, execute=False, settings=settings) as client,
            ):
                await worker.start()
                task_id = await client.submit({"model": MODEL, "prompt": "hang"})
                seen: list[str] = []

                async def follow() -> None:
                    async for ev in client.events(task_id):
                        seen.append(ev.kind)

                follower = asyncio.create_task(follow())
                for _ in range(400):  # the worker's call is in flight
                    if srv.in_flight == 1:
                        break
                    await asyncio.sleep(0.025)
                assert srv.in_flight == 1
                yield _Hung(worker, client, task_id, seen, follower)
        finally:
            await worker_store.close()
            await client_store.close()


async def test_redis_cancel_and_events_are_pushed_not_polled(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{redis_server.url}?prefix=p{uuid.uuid4().hex[:8]}"
    async with _hung_task_on_redis(url, monkeypatch, fallback_poll_s=60.0) as hung:
        await hung.client.cancel(hung.task_id)  # recorded; the worker in the other manager is told
        rec = await asyncio.wait_for(hung.client.wait(hung.task_id), 10)  # polling alone: 60 s
        await asyncio.wait_for(hung.follower, 10)
    assert rec.status is TaskStatus.CANCELLED
    assert hung.seen[0] == "queued" and "started" in hung.seen and hung.seen[-1] == "cancelled"


async def test_redis_pushed_notices_come_back_after_the_pubsub_connection_drops(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis.asyncio as aioredis

    prefix = f"d{uuid.uuid4().hex[:8]}"
    admin = aioredis.from_url(redis_server.url, decode_responses=True)

    async def subscribed(channel: str) -> bool:
        for _ in range(200):
            if dict(await admin.pubsub_numsub(channel)).get(channel) == 1:
                return True
            await asyncio.sleep(0.05)
        return False

    try:
        async with _hung_task_on_redis(f"{redis_server.url}?prefix={prefix}", monkeypatch, fallback_poll_s=60.0) as hung:
            cancel_channel, events_channel = f"{prefix}:cancel:{hung.worker.worker_id}", f"{prefix}:ev:{hung.task_id}"
            assert await subscribed(cancel_channel) and await subscribed(events_channel)
            # every pub/sub connection dropped (a Redis restart, a proxy's idle timeout ...)
            before = {c["id"] for c in await admin.client_list(_type="pubsub")}
            assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
            for _ in range(200):  # Redis closes killed clients asynchronously
                if not before & {c["id"] for c in await admin.client_list(_type="pubsub")}:
                    break
                await asyncio.sleep(0.05)
            assert not before & {c["id"] for c in await admin.client_list(_type="pubsub")}
            assert await subscribed(cancel_channel) and await subscribed(events_channel)
            await hung.client.cancel(hung.task_id)
            # before the fix: nothing read the notices any more, only the 60 s poll was left
            rec = await asyncio.wait_for(hung.client.wait(hung.task_id), 10)
            await asyncio.wait_for(hung.follower, 10)
    finally:
        await admin.aclose()
    assert rec.status is TaskStatus.CANCELLED
    assert hung.seen[0] == "queued" and hung.seen[-1] == "cancelled"


async def test_redis_cancel_and_events_still_arrive_by_polling_when_every_notice_is_lost(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_call.tasks._redis_notices import RedisNotices

    monkeypatch.setattr(RedisNotices, "_dispatch", lambda self, message: None)  # pub/sub delivers nothing
    url = f"{redis_server.url}?prefix=l{uuid.uuid4().hex[:8]}"
    async with _hung_task_on_redis(url, monkeypatch, fallback_poll_s=0.2) as hung:
        await hung.client.cancel(hung.task_id)  # the worker finds it by the fallback poll
        rec = await asyncio.wait_for(hung.client.wait(hung.task_id), 20)
        await asyncio.wait_for(hung.follower, 20)
    assert rec.status is TaskStatus.CANCELLED
    assert hung.seen[0] == "queued" and "cancel_requested" in hung.seen and hung.seen[-1] == "cancelled"
