"""TaskManager against the scripted server over real sockets, with a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llm_call.errors import (
    HumanReviewNeeded,
    MalformedResponse,
    ProviderHTTPError,
    QueueFull,
    TaskCancelled,
    TaskError,
    TaskInterrupted,
    TaskNotFound,
    TaskPending,
    UsageError,
)
from llm_call.tasks import TaskManager, WorkerInfo
from llm_call.testing import Fault, Reply
from llm_call.types import TaskStatus
from support.tasks_env import MODEL, eventually, managers, openai_server, task_settings

__all__ = ["managers"]

Managers = Callable[..., Awaitable[TaskManager]]


@pytest.fixture(autouse=True)
def _fast(use_settings: Callable[..., Any]) -> None:
    task_settings(use_settings)


async def test_submit_runs_the_call_and_stores_result_and_events(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch, [Reply(text="Paris", match_text="capital")]) as srv:
        mgr = await managers()
        task_id = await mgr.submit({"model": MODEL, "prompt": "capital of France?", "max_tokens": 20})
        rec = await mgr.wait(task_id)
        assert rec.status is TaskStatus.SUCCEEDED and rec.attempts == 1
        resp = await mgr.result(task_id)
        assert resp.text == "Paris" and resp.model == "openai/x"
        assert srv.requests[0].body["max_tokens"] == 20
        kinds = [e.kind for e in [e async for e in mgr.events(task_id)]]
        assert kinds == ["queued", "started", "attempt", "finished"]
        assert rec.request["messages"] == [{"role": "user", "content": "capital of France?"}]
        assert rec.progress.get("model") == "openai/x"


async def test_a_failed_call_is_a_failed_task_with_its_typed_error(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch, [Reply(fault=Fault.http(400))]):
        mgr = await managers()
        task_id = await mgr.submit({"model": MODEL, "prompt": "x"})
        rec = await mgr.wait(task_id)
        assert rec.status is TaskStatus.FAILED and rec.result is None
        with pytest.raises(ProviderHTTPError) as info:
            await mgr.result(task_id)
        assert info.value.status == 400
        assert [e.kind for e in [e async for e in mgr.events(task_id)]][-1] == "failed"


async def test_unknown_task_and_pending_task(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch, [Reply(fault=Fault.hang())]):
        mgr = await managers()
        with pytest.raises(TaskNotFound):
            await mgr.status("tk_missing")
        with pytest.raises(TaskNotFound):
            [e async for e in mgr.events("tk_missing")]
        task_id = await mgr.submit({"model": MODEL, "prompt": "x"})
        with pytest.raises(TaskPending) as info:
            await mgr.wait(task_id, timeout=0.2)
        assert info.value.task_id == task_id
        with pytest.raises(TaskPending):
            await mgr.result(task_id)
        await mgr.cancel(task_id)


async def test_idempotency_key_returns_the_same_task_and_runs_it_once(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch) as srv:
        mgr = await managers()
        ids = await asyncio.gather(
            *(mgr.submit({"model": MODEL, "prompt": f"p{i}"}, idempotency_key="job-1") for i in range(5))
        )
        assert len(set(ids)) == 1
        await mgr.wait(ids[0])
        again = await mgr.submit({"model": MODEL, "prompt": "later"}, idempotency_key="job-1")
        assert again == ids[0]
        assert len(srv.requests) == 1


async def test_priority_then_fifo_with_a_route_limit(monkeypatch: pytest.MonkeyPatch, managers: Managers, use_settings: Callable[..., Any]) -> None:
    task_settings(use_settings, route_limits={"openai/*": 1})
    async with openai_server(monkeypatch, default=Reply(text="ok", latency=0.05, times=None)) as srv:
        submitter = await managers(execute=False)
        low = [await submitter.submit({"model": MODEL, "prompt": f"low{i}"}) for i in range(3)]
        high = [await submitter.submit({"model": MODEL, "prompt": f"high{i}"}, priority=9) for i in range(2)]
        worker = await managers(claims="all")
        for tid in low + high:
            await worker.wait(tid)
        assert [r.last_user_text for r in srv.requests] == ["high0", "high1", "low0", "low1", "low2"]


async def test_route_limit_bounds_concurrency(monkeypatch: pytest.MonkeyPatch, managers: Managers, use_settings: Callable[..., Any]) -> None:
    task_settings(use_settings, route_limits={"openai/*": 2})
    async with openai_server(monkeypatch, default=Reply(text="ok", latency=0.1, times=None)):
        mgr = await managers()
        ids = await asyncio.gather(*(mgr.submit({"model": MODEL, "prompt": f"p{i}"}) for i in range(8)))
        recs = [await mgr.wait(t) for t in ids]
        assert all(r.status is TaskStatus.SUCCEEDED for r in recs)
        # intervals [started, finished] of the executions never overlap more than 2 deep
        points = sorted([(r.started_at or 0, 1) for r in recs] + [(r.finished_at or 0, -1) for r in recs])
        depth = peak = 0
        for _, step in points:
            depth += step
            peak = max(peak, depth)
        assert peak <= 2


async def test_cancel_a_queued_task_never_sends_it(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch, [Reply(fault=Fault.hang())]) as srv:
        mgr = await managers(concurrency=1)
        busy = await mgr.submit({"model": MODEL, "prompt": "busy"})
        waiting = await mgr.submit({"model": MODEL, "prompt": "waiting"})
        await eventually(lambda: _has_requests(srv, 1), what="first request")
        rec = await mgr.cancel(waiting)
        assert rec.status is TaskStatus.CANCELLED
        with pytest.raises(TaskCancelled):
            await mgr.result(waiting)
        await mgr.cancel(busy)
        assert [r.last_user_text for r in srv.requests] == ["busy"]


async def _has_requests(srv: Any, n: int) -> bool:
    return len(srv.requests) >= n


async def test_cancel_a_running_task_closes_its_connection(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch, [Reply(fault=Fault.hang())]) as srv:
        mgr = await managers()
        task_id = await mgr.submit({"model": MODEL, "prompt": "hang"})
        await eventually(lambda: _in_flight(srv, 1), what="request in flight")
        rec = await mgr.cancel(task_id)
        assert rec.status is TaskStatus.CANCELLED
        await eventually(lambda: _in_flight(srv, 0), what="connection closed by the client")
        kinds = [e.kind async for e in _kinds(mgr, task_id)]
        assert kinds[-1] == "cancelled" and kinds.count("cancelled") == 1


async def _in_flight(srv: Any, n: int) -> bool:
    return bool(srv.in_flight == n)


async def _kinds(mgr: TaskManager, task_id: str) -> Any:
    async for e in mgr.events(task_id, follow=False):
        yield e


async def test_cancel_from_another_manager_reaches_the_running_one(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch, [Reply(fault=Fault.hang())]) as srv:
        runner = await managers()
        other = await managers(execute=False)
        task_id = await runner.submit({"model": MODEL, "prompt": "hang"})
        await eventually(lambda: _in_flight(srv, 1), what="request in flight")
        rec = await other.cancel(task_id)
        assert rec.status is TaskStatus.RUNNING and rec.cancel_requested
        rec = await other.wait(task_id, timeout=20)
        assert rec.status is TaskStatus.CANCELLED
        await eventually(lambda: _in_flight(srv, 0), what="connection closed")


async def test_progress_callback_sees_the_events(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    seen: list[str] = []
    async with openai_server(monkeypatch):
        mgr = await managers()
        task_id = await mgr.submit({"model": MODEL, "prompt": "x"}, progress=lambda kind, data: seen.append(kind))
        await mgr.wait(task_id)
        assert seen == ["started", "attempt", "finished"]


async def test_a_callable_validator_cannot_be_stored(managers: Managers) -> None:
    mgr = await managers()
    with pytest.raises(UsageError, match=r"validate\[0\] is a callable"):
        await mgr.submit({"model": MODEL, "prompt": "x", "validate": [lambda text: True]})


async def test_needs_review_then_a_reply_resumes_to_success(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    script = [Reply(text="not a number"), Reply(text="still not"), Reply(text="42")]
    async with openai_server(monkeypatch, script) as srv:
        mgr = await managers()
        task_id = await mgr.submit(
            {"model": MODEL, "prompt": "a number?", "validate": ["regex:^\\d+$"], "max_attempts": 2, "human_after": 2}
        )
        rec = await mgr.wait(task_id)
        assert rec.status is TaskStatus.NEEDS_REVIEW
        with pytest.raises(HumanReviewNeeded) as info:
            await mgr.result(task_id)
        assert info.value.history and info.value.history[-1]["content"] == "still not"
        kinds = [e.kind async for e in _kinds(mgr, task_id)]
        assert "validation_failed" in kinds and kinds[-1] == "needs_review"
        rec = await mgr.review(task_id, reply="Only digits, please.")
        assert rec.status is TaskStatus.QUEUED
        rec = await mgr.wait(task_id)
        assert rec.status is TaskStatus.SUCCEEDED
        assert (await mgr.result(task_id)).text == "42"
        assert srv.requests[-1].last_user_text == "Only digits, please."
        with pytest.raises(TaskError, match="not waiting for a review"):
            await mgr.review(task_id, approve=True)


async def test_needs_review_approved_takes_the_last_answer(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch, default=Reply(text="nope", times=None)):
        mgr = await managers()
        task_id = await mgr.submit(
            {"model": MODEL, "prompt": "a number?", "validate": ["regex:^\\d+$"], "max_attempts": 1, "human_after": 1}
        )
        assert (await mgr.wait(task_id)).status is TaskStatus.NEEDS_REVIEW
        with pytest.raises(UsageError):
            await mgr.review(task_id)
        rec = await mgr.review(task_id, approve=True)
        assert rec.status is TaskStatus.SUCCEEDED
        resp = await mgr.result(task_id)
        assert resp.text == "nope" and resp.extra["review"] == "approved" and resp.attempts


async def test_close_puts_running_tasks_back_in_the_queue(monkeypatch: pytest.MonkeyPatch, managers: Managers, tmp_path: Path) -> None:
    async with openai_server(monkeypatch, [Reply(fault=Fault.hang())]) as srv:
        mgr = await managers()
        task_id = await mgr.submit({"model": MODEL, "prompt": "hang"})
        await eventually(lambda: _in_flight(srv, 1), what="request in flight")
        await mgr.close()
        reader = await managers(execute=False)
        rec = await reader.status(task_id)
        assert rec.status is TaskStatus.QUEUED and rec.attempts == 0 and rec.owner is None
        assert [w for w in await reader.workers_alive()] == []
        await eventually(lambda: _in_flight(srv, 0), what="connection closed")


async def test_restart_recovers_a_task_left_running_by_a_dead_worker(monkeypatch: pytest.MonkeyPatch, managers: Managers, use_settings: Callable[..., Any]) -> None:
    task_settings(use_settings, max_executions=2)
    async with openai_server(monkeypatch):
        client = await managers(execute=False)
        again = await client.submit({"model": MODEL, "prompt": "again"})
        spent = await client.submit({"model": MODEL, "prompt": "spent"})
        ghost = WorkerInfo(id="ghost", host="elsewhere", pid=1)
        await client.store.heartbeat(ghost)
        await client.store.claim("ghost", limit=2)
        store = client.store._db._wconn  # type: ignore[attr-defined]
        store.execute("UPDATE tasks SET attempts = 2 WHERE id = ?", (spent,))
        store.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 3600")
        worker = await managers(claims="all")
        assert (await worker.wait(again)).status is TaskStatus.SUCCEEDED
        rec = await worker.wait(spent)
        assert rec.status is TaskStatus.INTERRUPTED and rec.request["messages"][0]["content"] == "spent"
        with pytest.raises(TaskInterrupted):
            await worker.result(spent)
        kinds = [e.kind async for e in _kinds(worker, again)]
        assert kinds == ["queued", "started", "requeued", "started", "attempt", "finished"]


async def test_list_and_status_filter(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch):
        mgr = await managers()
        ids = [await mgr.submit({"model": MODEL, "prompt": f"p{i}"}) for i in range(3)]
        for t in ids:
            await mgr.wait(t)
        listed = await mgr.list_tasks()
        assert [r.id for r in listed] == ids[::-1]
        assert len(await mgr.list_tasks("succeeded", limit=2)) == 2
        assert await mgr.list_tasks(TaskStatus.QUEUED) == []
        with pytest.raises(UsageError, match="unknown task status"):
            await mgr.list_tasks("bogus")


async def test_drain_runs_until_idle(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch):
        client = await managers(execute=False)
        ids = [await client.submit({"model": MODEL, "prompt": f"p{i}"}) for i in range(5)]
        worker = await managers(claims="all", concurrency=2)
        await asyncio.wait_for(worker.drain(), 30)
        assert worker.finished == {"succeeded": 5}
        assert {(await client.status(t)).status for t in ids} == {TaskStatus.SUCCEEDED}


async def test_manager_api_needs_start(tmp_path: Path) -> None:
    mgr = TaskManager(tmp_path / "x.db")
    with pytest.raises(TaskError, match="not started"):
        await mgr.status("tk_x")
    with pytest.raises(UsageError):
        TaskManager(tmp_path / "x.db", claims="some")  # type: ignore[arg-type]


async def test_a_waiter_sees_a_cancel_made_by_another_process(
    monkeypatch: pytest.MonkeyPatch, managers: Managers
) -> None:
    from llm_call.tasks import _executor

    monkeypatch.setattr(_executor, "_RECHECK_S", 0.2)
    async with openai_server(monkeypatch, [Reply(fault=Fault.hang())]) as srv:
        runner = await managers(concurrency=1)
        busy = await runner.submit({"model": MODEL, "prompt": "busy"})
        queued = await runner.submit({"model": MODEL, "prompt": "queued"})
        await eventually(lambda: _in_flight(srv, 1), what="first request")
        waiter = asyncio.create_task(runner.wait(queued))
        other = await managers(execute=False)
        assert (await other.cancel(queued)).status is TaskStatus.CANCELLED
        rec = await asyncio.wait_for(waiter, 20)
        assert rec.status is TaskStatus.CANCELLED
        await runner.cancel(busy)


async def test_closing_the_manager_wakes_its_waiters(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    async with openai_server(monkeypatch, [Reply(fault=Fault.hang())]) as srv:
        mgr = await managers()
        task_id = await mgr.submit({"model": MODEL, "prompt": "hang"})
        await eventually(lambda: _in_flight(srv, 1), what="request in flight")
        waiter = asyncio.create_task(mgr.wait(task_id))
        await asyncio.sleep(0)
        await mgr.close()
        with pytest.raises(TaskError, match="closed"):
            await asyncio.wait_for(waiter, 20)


async def test_a_full_route_queue_refuses_new_tasks_with_queue_full(
    monkeypatch: pytest.MonkeyPatch, managers: Managers, use_settings: Callable[..., Any]
) -> None:
    task_settings(use_settings, queue_limits={"openai/x*": 2})
    async with openai_server(monkeypatch, default=Reply(text="ok", times=None)) as srv:
        submitter = await managers(execute=False)  # nothing runs: tasks stay queued
        first = [await submitter.submit({"model": MODEL, "prompt": f"p{i}"}) for i in range(2)]
        with pytest.raises(QueueFull) as info:
            await submitter.submit({"model": MODEL, "prompt": "one too many"})
        assert info.value.limit == 2 and info.value.route == MODEL
        assert "openai/x*" in info.value.message
        assert len(await submitter.list_tasks()) == 2  # nothing was queued
        # models the limit does not match are not limited by it
        other = await submitter.submit({"model": "openai/y", "prompt": "elsewhere"})
        # once the queue drains, submits are accepted again
        worker = await managers(claims="all")
        for tid in [*first, other]:
            await worker.wait(tid)
        after = await submitter.submit({"model": MODEL, "prompt": "after"})
        assert (await worker.wait(after)).status is TaskStatus.SUCCEEDED
        assert sorted(r.last_user_text for r in srv.requests) == ["after", "elsewhere", "p0", "p1"]


async def test_a_task_started_where_it_was_submitted_sends_what_a_task_run_from_the_store_sends(
    monkeypatch: pytest.MonkeyPatch, managers: Managers
) -> None:
    # the submitting manager runs the call it checked at submit; another worker rebuilds it from
    # the stored JSON: the provider must receive the same request either way
    call = {"model": MODEL, "system": "Be brief.", "prompt": "capital of France?", "temperature": 0.3, "max_tokens": 20,
            "stop": ["\n"], "seed": 7, "validate": ["contains:Paris"], "max_attempts": 2, "priority": 1}
    async with openai_server(monkeypatch, default=Reply(text="Paris", times=None)) as srv:
        here = await managers()
        rec_here = await here.wait(await here.submit(call))
        submitter = await managers(execute=False)
        task_id = await submitter.submit(call)
        worker = await managers(claims="all")
        rec_stored = await worker.wait(task_id)
        assert rec_here.status is TaskStatus.SUCCEEDED and rec_stored.status is TaskStatus.SUCCEEDED
        assert rec_here.worker == here.worker_id and rec_stored.worker == worker.worker_id
        assert len(srv.requests) == 2
        assert srv.requests[0].body == srv.requests[1].body
        assert srv.requests[0].body["stop"] == ["\n"] and srv.requests[0].body["seed"] == 7



async def test_a_task_whose_call_is_cut_retries_and_its_events_and_attempts_say_so(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    script = [Reply(fault=Fault.reset()), Reply(text="the whole answer")]
    async with openai_server(monkeypatch, script) as srv:
        mgr = await managers()
        task_id = await mgr.submit({"model": MODEL, "prompt": "x", "retry": {"max_retries": 2, "base_delay": 0.01}})
        rec = await mgr.wait(task_id)
        assert rec.status is TaskStatus.SUCCEEDED and len(srv.requests) == 2
        resp = await mgr.result(task_id)
        assert resp.text == "the whole answer"
        events = [e async for e in mgr.events(task_id)]
        (wait,) = [e.data for e in events if e.kind == "retry_wait"]
        assert wait["reason"] == "ProviderConnectionError" and wait["model"] == MODEL
        failed, answer = resp.attempts
        assert failed.kind == "provider_error" and failed.error and failed.error["type"] == "ProviderConnectionError"
        assert answer.ok and answer.kind == "answer"


async def test_a_task_whose_answer_arrives_cut_in_half_fails_typed_not_truncated(monkeypatch: pytest.MonkeyPatch, managers: Managers) -> None:
    script = [Reply(text="a long answer that the network cuts in half", fault=Fault.cut_stream(after_chunks=1))]
    async with openai_server(monkeypatch, script):
        mgr = await managers()
        task_id = await mgr.submit({"model": MODEL, "prompt": "x"})
        rec = await mgr.wait(task_id)
        assert rec.status is TaskStatus.FAILED and rec.result is None
        with pytest.raises(MalformedResponse):
            await mgr.result(task_id)
