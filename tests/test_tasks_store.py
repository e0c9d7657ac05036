"""The SQLite task store on real files: queue order, fencing, events, recovery, retention, errors."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llm_call.errors import ConfigError, TaskError, TaskInterrupted, TaskNotFound, error_from_dict
from llm_call.tasks import NewTask, Outcome, WorkerInfo, default_store_path, make_store, open_store
from llm_call.tasks.sqlite_store import SQLiteTaskStore
from llm_call.types import TaskStatus


def _task(n: int = 0, route: str = "openai/x", **kw: object) -> NewTask:
    return NewTask(request={"model": route, "messages": [{"role": "user", "content": f"q{n}"}]}, route=route, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteTaskStore]:
    s = SQLiteTaskStore(tmp_path / "tasks.db")
    await s.open()
    yield s
    await s.close()


async def test_submit_is_durable_and_readable_from_another_connection(store: SQLiteTaskStore, tmp_path: Path) -> None:
    rec, created = await store.submit(_task(1))
    assert created and rec.status is TaskStatus.QUEUED
    with sqlite3.connect(tmp_path / "tasks.db") as conn:  # another connection sees it committed
        assert conn.execute("SELECT status FROM tasks WHERE id = ?", (rec.id,)).fetchone() == ("queued",)
    got = await store.get(rec.id)
    assert got is not None and got.request["messages"][0]["content"] == "q1"
    events = await store.read_events(rec.id)
    assert [(e.seq, e.kind) for e in events] == [(1, "queued")]


async def test_idempotency_key_returns_the_existing_task(store: SQLiteTaskStore) -> None:
    first, c1 = await store.submit(_task(1, idempotency_key="k"))
    second, c2 = await store.submit(_task(2, idempotency_key="k"))
    assert (c1, c2) == (True, False)
    assert second.id == first.id and second.request["messages"][0]["content"] == "q1"
    # concurrent submits with one key, in one group commit: still one task
    results = await asyncio.gather(*(store.submit(_task(i, idempotency_key="z")) for i in range(20)))
    assert len({r.id for r, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_group_commit_batches_concurrent_writes(store: SQLiteTaskStore) -> None:
    before = store._db.commits
    await asyncio.gather(*(store.submit(_task(i)) for i in range(500)))
    assert (await store.counts()) == {"queued": 500}
    assert store._db.commits - before < 500  # several submits shared a transaction


async def test_claim_order_is_priority_then_fifo_and_atomic(store: SQLiteTaskStore) -> None:
    ids = []
    for n, prio in enumerate([0, 5, 0, 5, 1]):
        rec, _ = await store.submit(_task(n, priority=prio))
        ids.append(rec.id)
    got = await store.claim("w1", limit=10)
    assert [r.id for r in got] == [ids[1], ids[3], ids[4], ids[0], ids[2]]
    assert all(r.status is TaskStatus.RUNNING and r.worker == "w1" and r.attempts == 1 for r in got)
    assert await store.claim("w2", limit=10) == []  # nothing claimed twice
    ev = await store.read_events(ids[0])
    assert [e.kind for e in ev] == ["queued", "started"]


async def test_claim_filters_routes_and_owners(store: SQLiteTaskStore) -> None:
    a, _ = await store.submit(_task(1, route="max/sonnet"))
    b, _ = await store.submit(_task(2, route="openai/x"))
    c, _ = await store.submit(_task(3, route="openai/y", owner="mine"))
    assert [r.id for r in await store.claim("w", limit=5, include="max/*")] == [a.id]
    assert [r.id for r in await store.claim("w", limit=5, exclude=["max/*"], claim_all=True)] == [b.id]
    assert await store.claim("other", limit=5, claim_all=True) == []  # c is reserved for "mine"
    assert [r.id for r in await store.claim("mine", limit=5, claim_all=False)] == [c.id]


async def test_finish_is_fenced_to_the_worker_that_owns_the_task(store: SQLiteTaskStore) -> None:
    rec, _ = await store.submit(_task())
    await store.claim("w1", limit=1)
    assert not await store.finish(rec.id, "w2", Outcome(TaskStatus.SUCCEEDED, result={"text": "x", "model": "m"}))
    assert await store.finish(rec.id, "w1", Outcome(TaskStatus.SUCCEEDED, result={"text": "y", "model": "m"}))
    assert not await store.finish(rec.id, "w1", Outcome(TaskStatus.FAILED, error={"type": "X"}))  # only one final state
    got = await store.get(rec.id)
    assert got is not None and got.status is TaskStatus.SUCCEEDED and got.result == {"text": "y", "model": "m"}
    assert [e.kind for e in await store.read_events(rec.id)] == ["queued", "started", "finished"]


async def test_cancel_queued_running_and_final(store: SQLiteTaskStore) -> None:
    first, _ = await store.submit(_task(1))
    second, _ = await store.submit(_task(2))
    await store.claim("w", limit=1)  # FIFO: the first one runs, the second stays queued
    rec = await store.request_cancel(second.id)  # queued: cancelled at once
    assert rec.status is TaskStatus.CANCELLED and rec.finished_at
    rec = await store.request_cancel(first.id)  # running: flagged for its worker
    assert rec.status is TaskStatus.RUNNING and rec.cancel_requested
    assert await store.cancel_requests("w") == [first.id]
    assert (await store.request_cancel(second.id)).status is TaskStatus.CANCELLED  # final: unchanged
    assert [e.kind for e in await store.read_events(second.id)] == ["queued", "cancelled"]
    with pytest.raises(TaskNotFound):
        await store.request_cancel("tk_nope")


async def test_events_are_numbered_per_task_and_progress_is_kept(store: SQLiteTaskStore) -> None:
    from llm_call.tasks import EventIn

    a, _ = await store.submit(_task(1))
    b, _ = await store.submit(_task(2))
    now = time.time()
    await store.append_events(
        [EventIn(a.id, "attempt", {"n": 1}, now), EventIn(b.id, "attempt", {"n": 1}, now), EventIn(a.id, "chunk", {"chars": 3}, now)],
        {a.id: {"chars": 3}},
    )
    assert [(e.seq, e.kind) for e in await store.read_events(a.id)] == [(1, "queued"), (2, "attempt"), (3, "chunk")]
    assert [(e.seq, e.kind) for e in await store.read_events(b.id, after=1)] == [(2, "attempt")]
    got = await store.get(a.id)
    assert got is not None and got.progress == {"chars": 3}


async def test_recover_requeues_or_interrupts_tasks_of_a_dead_process(store: SQLiteTaskStore) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()  # a pid that existed and is gone
    dead = WorkerInfo(id="dead", kind="worker", claims="all", pid=proc.pid)
    await store.heartbeat(dead)
    alive = WorkerInfo(id="alive", kind="worker", claims="all")
    await store.heartbeat(alive)
    t1, _ = await store.submit(_task(1))
    t2, _ = await store.submit(_task(2))
    t3, _ = await store.submit(_task(3))
    t4, _ = await store.submit(_task(4, owner="dead"))
    await store.claim("dead", limit=2)  # t1, t2 run in the dead process
    await store.claim("alive", limit=1)  # t3 runs in a live one
    # t2 already ran twice before: with max_executions=2 it may not run again
    store._db._wconn.execute("UPDATE tasks SET attempts = 2 WHERE id = ?", (t2.id,))  # type: ignore[union-attr]
    report = await store.recover(max_executions=2, stale_after=60)
    assert report.dead_workers == ["dead"]
    assert report.requeued == [t1.id] and report.interrupted == [t2.id] and report.reassigned == [t4.id]
    r1, r2, r3, r4 = [await store.get(t.id) for t in (t1, t2, t3, t4)]
    assert r1 is not None and r1.status is TaskStatus.QUEUED and r1.worker is None
    assert r2 is not None and r2.status is TaskStatus.INTERRUPTED and r2.request == t2.request  # input kept
    assert isinstance(error_from_dict(r2.error or {}), TaskInterrupted)
    assert r3 is not None and r3.status is TaskStatus.RUNNING
    assert r4 is not None and r4.owner is None
    assert [w.id for w in await store.workers(alive_within=60)] == ["alive"]


async def test_recover_treats_a_silent_worker_as_dead(store: SQLiteTaskStore) -> None:
    silent = WorkerInfo(id="silent", host="another-host", pid=1)
    await store.heartbeat(silent)
    rec, _ = await store.submit(_task())
    await store.claim("silent", limit=1)
    assert (await store.recover(max_executions=3, stale_after=60)).requeued == []  # heartbeat is fresh
    store._db._wconn.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 120")  # type: ignore[union-attr]
    assert (await store.recover(max_executions=3, stale_after=60)).requeued == [rec.id]


async def test_release_puts_running_tasks_back_without_counting_the_execution(store: SQLiteTaskStore) -> None:
    rec, _ = await store.submit(_task(owner="w"))
    await store.claim("w", limit=1, claim_all=False)
    assert await store.release([rec.id], "w") == [rec.id]
    got = await store.get(rec.id)
    assert got is not None and got.status is TaskStatus.QUEUED and got.attempts == 0 and got.owner is None


async def test_resolve_review(store: SQLiteTaskStore) -> None:
    rec, _ = await store.submit(_task())
    await store.claim("w", limit=1)
    with pytest.raises(TaskError, match="not waiting for a review"):
        await store.resolve_review(rec.id, result={"text": "x", "model": "m"})
    await store.finish(rec.id, "w", Outcome(TaskStatus.NEEDS_REVIEW, error={"type": "HumanReviewNeeded"}))
    again = await store.resolve_review(rec.id, request={**rec.request, "extra": 1}, owner=None)
    assert again.status is TaskStatus.QUEUED and again.attempts == 0 and again.request["extra"] == 1


async def test_cleanup_removes_only_old_final_tasks(store: SQLiteTaskStore) -> None:
    old, _ = await store.submit(_task(1))
    new, _ = await store.submit(_task(2))
    waiting, _ = await store.submit(_task(3))
    await store.claim("w", limit=2)
    await store.finish(old.id, "w", Outcome(TaskStatus.SUCCEEDED, result={"text": "a", "model": "m"}))
    await store.finish(new.id, "w", Outcome(TaskStatus.SUCCEEDED, result={"text": "b", "model": "m"}))
    store._db._wconn.execute("UPDATE tasks SET finished_at = finished_at - 1000 WHERE id = ?", (old.id,))  # type: ignore[union-attr]
    assert await store.cleanup(time.time() - 500) == 1
    assert await store.get(old.id) is None and await store.read_events(old.id) == []
    assert await store.get(new.id) is not None and await store.get(waiting.id) is not None


async def test_corrupt_db_file_is_a_config_error_at_open(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_bytes(b"this is not a sqlite database at all" * 200)
    with pytest.raises(ConfigError, match=r"cannot be used: .*not a database"):
        await open_store(path)


async def test_db_path_under_a_file_is_a_config_error_at_open(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="cannot create directory"):
        await open_store(tmp_path / "afile" / "tasks.db")


async def test_db_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        await open_store(tmp_path / "dir.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
async def test_read_only_directory_is_a_config_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            await open_store(ro / "tasks.db")
    finally:
        ro.chmod(0o700)


async def test_store_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "xdg" / "llm_call" / "tasks.db"
    assert isinstance(make_store(None), SQLiteTaskStore)
    assert make_store(None).url == str(tmp_path / "xdg" / "llm_call" / "tasks.db")  # type: ignore[attr-defined]
    assert make_store(f"sqlite:///{tmp_path}/x.db").url == f"{tmp_path}/x.db"
    with pytest.raises(ConfigError, match="unknown URL scheme"):
        make_store("ftp://x")


async def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    from llm_call.errors import TaskStoreError

    s = await open_store(tmp_path / "t.db")
    await s.close()
    with pytest.raises(TaskStoreError, match="not open"):
        await s.submit(_task())
