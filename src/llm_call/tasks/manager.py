"""TaskManager: long calls as tracked asyncio tasks on the running loop, persisted in a TaskStore.

One manager per event loop. Its client half (``submit``, ``status``, ``result``, ``wait``,
``cancel``, ``list_tasks``, ``events``, ``review``) works on any task of the store, whichever
process runs it. Its executing half (``execute=True``) registers as a worker in the store, claims
queued tasks (its own, or with ``claims="all"`` every unowned one, as ``llm-call worker`` does),
runs each as an asyncio task through the same pipeline as a direct ``acall`` (validation loop,
transient retries, provider), stores the result or typed error, and keeps a heartbeat so that
another process can recover its tasks if it dies.

Limits: at most ``concurrency`` (default ``settings.tasks.global_limit``) tasks run at once, and
a task whose model matches a ``settings.tasks.route_limits`` glob (``"max/*": 4``) also holds
that pattern's semaphore. Queued tasks start by priority, then FIFO.

Cancellation reaches the work: cancelling a running task cancels its asyncio task, which makes
the HTTP provider close its connection and the Claude provider kill its CLI process. A cancel from
another process is a flag in the store that the running manager polls every half second.

Progress: every layer reports through :func:`llm_call._progress.emit`; the manager listens while
it runs a task and appends those events (``attempt``, ``retry_wait``, ``validation_failed``,
``escalated``, ``tool_started``/``tool_finished``, ``chunk`` at most every 0.5 s ...) to the store
in batches; the store itself writes the lifecycle events (``queued``, ``started``, ``finished``,
``failed``, ``cancelled``, ``needs_review``, ``requeued``, ``interrupted``).

Example::

    async with TaskManager("/tmp/tasks.db") as mgr:
        task_id = await mgr.submit({"model": "openai/gpt-4o-mini", "prompt": "Hi"})
        async for event in mgr.events(task_id):
            print(event.kind, event.data)
        print((await mgr.result(task_id)).text)
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from .._progress import ProgressListener
from ..errors import TaskError, TaskNotFound, TaskPending, TaskStoreError, UsageError
from ..types import Attempt, Response, TaskEvent, TaskRecord, TaskStatus
from ._executor import STALE_BEATS, TaskExecutor, wait_event
from ._handle import TaskHandle, outcome_of
from ._progress_sink import RunningTask
from ._quota import is_max_route
from ._spec import response_dict, spec_from_kwargs
from ._stores import make_store
from .store import FINAL_EVENT_KINDS, NewTask, TaskStore, WorkerInfo

__all__ = ["TaskManager"]

_log = logging.getLogger("llm_call.tasks")


def _last_answer(history: list[dict[str, Any]]) -> str | None:
    from ..providers.base import message_text

    for message in reversed(history):
        if isinstance(message, dict) and message.get("role") == "assistant":
            return message_text(message)
    return None


class TaskManager(TaskExecutor):
    """Submit, run, watch and control tasks; see the module docstring.

    ``store``: a :class:`TaskStore`, a SQLite path / URL, or None for ``settings.tasks.store``
    (default ``$XDG_DATA_HOME/llm_call/tasks.db``). ``execute=False`` makes a client only (the CLI
    uses it); ``lazy=True`` registers as a worker only at the first submit. ``claims``: ``own``
    runs the tasks this manager submitted, ``all`` also every unowned queued task (workers).
    """

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    async def open(cls, store: TaskStore | str | os.PathLike[str] | None = None, **kwargs: Any) -> TaskManager:
        """Create and :meth:`start` a manager (ConfigError now if the store is unusable)."""
        mgr = cls(store, **kwargs)
        await mgr.start()
        return mgr

    async def start(self) -> None:
        """Open the store; unless lazy, register as a worker, recover dead workers' tasks, run."""
        if self._started:
            return
        cfg = self.settings.tasks
        self._limit = self._concurrency or cfg.global_limit
        self._route_limits = dict(cfg.route_limits)
        self._route_count = dict.fromkeys(self._route_limits, 0)
        self._sems = {p: asyncio.Semaphore(n) for p, n in self._route_limits.items()}
        self._heartbeat_s = cfg.heartbeat_s
        self._max_executions = cfg.max_executions
        self._fallback_poll_s = cfg.fallback_poll_s
        self._retention_s = cfg.retention_s
        if self._store is None:
            location = self._store_arg if self._store_arg is not None else cfg.store
            self._store = make_store(location)  # type: ignore[arg-type]
        await self._store.open()
        self._started = True
        if self._execute and not self._lazy:
            await self._start_executing()

    async def close(self, *, grace: float = 0.0) -> None:
        """Stop. Running tasks get ``grace`` seconds to finish; the rest go back to the queue
        (their execution is not counted) for another worker or the next start."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wake.set()
        async with self._fill_lock:  # a claim in progress starts its tasks (released below)
            for loop_task in self._loops:
                loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        runs = list(self._running.values())
        settlers = [r.settler for r in runs if r.settler is not None]
        if grace > 0 and settlers:
            await asyncio.wait(settlers, timeout=grace)
        remaining = [r for r in self._running.values()]
        for r in remaining:
            for t in (r.settler, r.work):
                if t is not None and not t.done():
                    t.cancel()
        await asyncio.gather(*(t for r in remaining for t in (r.settler, r.work) if t is not None), return_exceptions=True)
        if self._store is not None and self._started:
            await self._flush_events()
            if self._executing:
                try:
                    released = await self.store.release([r.id for r in remaining], self.worker_id)
                    if released:
                        _log.info("released %d unfinished task(s) back to the queue", len(released))
                    await self.store.remove_worker(self.worker_id)
                except TaskStoreError:
                    _log.exception("could not release tasks at close; recovery will re-queue them")
            await asyncio.gather(*list(self._bg), return_exceptions=True)
            self._quota.detach()
            if self._owns_store:
                await self.store.close()
        self._executing = False
        for event in [*self._final_notify.values(), *self._notify.values()]:
            event.set()  # waiters and followers re-check and get "the task manager is closed"
        self._final_notify.clear()
        self._notify.clear()
        self._final_records.clear()

    async def _housekeeping_loop(self) -> None:
        try:
            await super()._housekeeping_loop()
        except asyncio.CancelledError:
            if not self._stopping:  # the event loop is ending without close()
                await self._abandoned()
            raise

    async def _abandoned(self) -> None:
        """The event loop is ending (``asyncio.run`` returned, this manager was never closed): hand
        its running and reserved tasks back and drop its worker entry. The process may live on,
        and a worker whose process lives is never declared dead, so nothing else would run them."""
        self._stopping = True
        try:
            released = await self.store.release(list(self._running), self.worker_id)
            await self.store.remove_worker(self.worker_id)
        except Exception:  # what is left: recovery re-queues it once this process is gone
            _log.exception("task manager %s: its event loop ended without close(); handing its tasks back failed", self.worker_id)
            return
        _log.warning(
            "task manager %s: its event loop ended without close(); %d running task(s) back in the queue",
            self.worker_id, len(released),
        )

    async def __aenter__(self) -> TaskManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- submitting ------------------------------------------------------------------------------

    async def submit(
        self,
        request: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        priority: int | None = None,
        progress: ProgressListener | None = None,
        reserve: bool = True,
        tenant: str | None = None,
    ) -> str:
        """Queue a call (acall keyword arguments as a dict) and return its task id once durable.

        With an ``idempotency_key`` already used (by the same ``tenant``: the server passes the
        API key's, see ``TaskRecord.tenant``), the existing task's id comes back. ``progress``
        (in this process) sees the task's events as ``progress(kind, data)``. ``reserve=False``
        leaves the task to any worker that claims unowned tasks (``claims="all"``, this manager
        included) instead of reserving it for this manager.

        Example::

            task_id = await mgr.submit({"model": "max/sonnet", "prompt": "Plan a trip.",
                                        "validate": ["length:max=2000"]}, priority=5)
        """
        spec, opts = spec_from_kwargs(request)
        return await self.submit_spec(
            spec,
            idempotency_key=idempotency_key if idempotency_key is not None else opts.idempotency_key,
            priority=priority if priority is not None else opts.priority,
            progress=progress if progress is not None else opts.progress,
            reserve=reserve,
            tenant=tenant,
        )

    async def submit_spec(
        self,
        spec: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        priority: int = 0,
        progress: ProgressListener | None = None,
        reserve: bool = True,
        tenant: str | None = None,
    ) -> str:
        """Queue an already checked spec (see ``tasks._spec.call_spec``)."""
        self._check_open()
        if self._execute:
            await self._start_executing()
        task = NewTask(
            request=spec,
            route=self._route_of(str(spec.get("model") or "")),
            priority=int(priority or 0),
            idempotency_key=idempotency_key,
            owner=self.worker_id if self._executing and reserve else None,
            tenant=tenant,
            request_json=getattr(spec, "json", None) or None,
        )
        if self.settings.tasks.queue_limits:
            task.queue_limits = self._queue_limits_of(task.route)
        may_start = self._may_start_now(task)
        if progress is not None:
            self._listeners.setdefault(task.id, []).append(progress)
        if may_start:
            rec, created = await self._submit_started(task)
        else:
            rec, created = await self.store.submit(task)
        if created and task.owner is not None and rec.id not in self._running:
            self._owned_queued.add(rec.id)
        if not created and progress is not None:
            self._listeners.pop(task.id, None)
            run = self._running.get(rec.id)
            if run is not None:
                run.listeners = [*run.listeners, progress]
            else:
                self._listeners.setdefault(rec.id, []).append(progress)
        if self._executing and rec.id not in self._running:  # queued: the dispatcher claims it
            self._maybe_queued = True
            self._wake.set()
        return rec.id

    def _queue_limits_of(self, route: str) -> tuple[tuple[str, int], ...]:
        """The queue limits matching ``route``: the store counts and inserts in one atomic step and
        refuses with QueueFull past one. Every submit is refused then, one with a known
        idempotency key too: retried later, it still gets the one task for that key."""
        return tuple(
            (pattern, limit)
            for pattern, limit in self.settings.tasks.queue_limits.items()
            if fnmatch.fnmatchcase(route, pattern)
        )

    def _may_start_now(self, task: NewTask) -> bool:
        """Whether a new task could start at once here: this manager would claim it, a slot of
        every limit is free and nothing of ours is known to be queued (the store checks the rest)."""
        if not self._executing or self._stopping or self.routes is not None or self._owned_queued:
            return False
        if task.owner != self.worker_id and (task.owner is not None or self.claims != "all"):
            return False
        if len(self._running) >= self._limit or self._fast_paths()[0] is None:
            return False
        if not self._quota.may_start_now(task.route):  # max/* held or slowed: the dispatcher decides
            return False
        return all(self._route_count[p] < self._route_limits[p] for p in self._patterns_of(task.route))

    async def _submit_started(self, task: NewTask) -> tuple[TaskRecord, bool]:
        """Submit and claim in one commit (SQLite store), holding the slot meanwhile; the task
        starts once that commit is durable. Queued as usual if others are waiting for a slot."""
        run = self._new_run(task.id, task.route)  # holds the slots (and takes the listeners)
        try:
            submits_started = self._fast_paths()[0]
            assert submits_started is not None
            write = submits_started.submit_started(task, self.worker_id, claim_all=self.claims == "all")
        except BaseException:
            self._submitted(run, None)
            raise
        try:
            rec, created = await asyncio.shield(write)
        except asyncio.CancelledError:
            write.add_done_callback(lambda f: self._submitted(run, None if f.cancelled() or f.exception() else f.result()))
            raise
        except BaseException:
            self._submitted(run, None)
            raise
        self._submitted(run, (rec, created))
        return rec, created

    def _submitted(self, run: RunningTask, got: tuple[TaskRecord, bool] | None) -> None:
        """Start a task committed as running here, or give its slots back."""
        rec = None if got is None else got[0]
        if rec is not None and got is not None and got[1] and rec.status is TaskStatus.RUNNING and not self._stopping:
            self._launch(run, rec)
            return
        if run.listeners:  # not started: the listeners wait for the task's claim (or are dropped)
            self._listeners.setdefault(run.id, []).extend(run.listeners)
        self._end_run(run)
        if rec is not None and rec.status is TaskStatus.RUNNING:
            # committed running while closing: recovery re-queues it (this worker is gone)
            _log.info("task %s was submitted while closing; recovery will queue it again", rec.id)

    async def adopt(
        self,
        work: asyncio.Task[Response],
        spec: dict[str, Any],
        *,
        priority: int = 0,
        idempotency_key: str | None = None,
    ) -> tuple[str, ProgressListener]:
        """Take over a call already running (a direct call past its timeout) as a task.

        Returns the task id and the progress sink the work's events should go to from now on.
        """
        self._check_open()
        if not self._execute:
            raise UsageError("this task manager does not execute tasks (execute=False)")
        await self._start_executing()
        task = NewTask(
            spec,
            self._route_of(str(spec.get("model") or "")),
            int(priority or 0),
            idempotency_key,
            owner=self.worker_id,
            request_json=getattr(spec, "json", None) or None,
        )
        run = self._new_run(task.id, task.route)
        run.work = work
        try:
            await self.store.adopt(task, self.worker_id)
        except BaseException:
            self._end_run(run)
            work.cancel()
            raise
        run.settler = self._spawn(self._settle(run, None, work), name=f"llm_call-task:{task.id}")
        return task.id, self._sink(run)

    def handle(self, task_id: str) -> TaskHandle:
        return TaskHandle(self, task_id)

    # -- reading ---------------------------------------------------------------------------------

    async def status(self, task_id: str) -> TaskRecord:
        """The task's record (status, progress, timestamps, executions, error). TaskNotFound."""
        self._check_open()
        rec = self._final_records.pop(task_id, None)
        if rec is not None:
            return rec
        rec = await self.store.get(task_id)
        if rec is None:
            raise TaskNotFound(f"no task {task_id} in {self.store.url}", task_id=task_id)
        return (await self._show_quota_holds([rec]))[0]

    async def _show_quota_holds(self, records: list[TaskRecord]) -> list[TaskRecord]:
        if not self._executing and any(r.status is TaskStatus.QUEUED and is_max_route(r.route) for r in records):
            await self._quota.observe(self.settings.claude, self.store)  # e.g. llm-call tasks list
        return [self._show_quota_hold(r) for r in records]

    def _show_quota_hold(self, rec: TaskRecord) -> TaskRecord:
        """A queued ``max/*`` task the quota holds shows why in ``progress.waiting`` (as the task
        that met the used-up window does), though it never ran."""
        if rec.status is TaskStatus.QUEUED and not rec.progress.get("waiting"):
            waiting = self._quota.waiting_of(rec.route)
            if waiting is not None:
                rec.progress = {**rec.progress, "waiting": waiting}
        return rec

    async def result(self, task_id: str) -> Response:
        """The task's Response; its typed error if it failed; TaskPending if not finished."""
        return outcome_of(await self.status(task_id))

    async def list_tasks(
        self,
        status: TaskStatus | str | None = None,
        limit: int = 100,
        *,
        before: str | None = None,
        route: str | None = None,
        tenant: str | None = None,
    ) -> list[TaskRecord]:
        """Tasks, newest first, optionally of one status; ``before`` (a task id) gives the next
        page, ``route`` (a glob on the model after aliases) filters, ``tenant`` keeps only that
        tenant's."""
        self._check_open()
        if isinstance(status, str):
            try:
                status = TaskStatus(status)
            except ValueError:
                raise UsageError(
                    f"unknown task status {status!r}; one of {', '.join(s.value for s in TaskStatus)}"
                ) from None
        if tenant is not None:
            records = await self.store.list_tasks(status=status, limit=limit, before=before, route=route, tenant=tenant)
        else:
            records = await self.store.list_tasks(status=status, limit=limit, before=before, route=route)
        return await self._show_quota_holds(records)

    async def workers_alive(self) -> list[WorkerInfo]:
        """Workers (and servers, managers) with a recent heartbeat."""
        self._check_open()
        return await self.store.workers(alive_within=self._heartbeat_s * STALE_BEATS)

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """Wait until the task is final or needs a review and return its record.

        With ``timeout`` seconds, TaskPending if it is still going (it goes on).
        """
        stop = await self._watch(task_id)
        try:
            return await self._wait(task_id, timeout, cap=0.5 if stop is None else self._fallback_poll_s)
        finally:
            if stop is not None:
                await stop()

    async def _wait(self, task_id: str, timeout: float | None, *, cap: float) -> TaskRecord:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.02
        first = True
        while True:
            event = self._notify_event(task_id, final=True)
            # running here, or just submitted here: its end wakes us, no need to read yet
            if task_id in self._running or (first and task_id in self._owned_queued):
                first = False
                if deadline is None:
                    await event.wait()
                    continue
                left = deadline - loop.time()
                if left > 0:
                    await wait_event(event, left)
                    continue
            first = False
            rec = await self.status(task_id)
            if rec.status.is_final or rec.status is TaskStatus.NEEDS_REVIEW:
                if not event.is_set() and self._final_notify.get(task_id) is event:
                    del self._final_notify[task_id]
                self._owned_queued.discard(task_id)
                return rec
            local = self._is_local(rec)
            if local and deadline is None:
                await event.wait()  # its end wakes us; housekeeping re-checks every few seconds
                continue
            step = 5.0 if local else delay
            delay = min(delay * 1.5, cap)
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise TaskPending(
                        f"task {task_id} is still {rec.status.value} after {timeout}s",
                        hint=f"it goes on; wait again or run: llm-call tasks wait {task_id}",
                        task_id=task_id,
                    )
                step = min(step, left)
            await wait_event(event, step)

    async def events(self, task_id: str, after: int = 0, *, follow: bool = True) -> AsyncIterator[TaskEvent]:
        """The task's events with ``seq > after``; with ``follow``, new ones as they come, until
        the task ends (or rests in needs_review)."""
        stop = await self._watch(task_id) if follow else None
        try:
            async for ev in self._events(task_id, after, follow=follow, pushed=stop is not None):
                yield ev
        finally:
            if stop is not None:
                await stop()

    async def _watch(self, task_id: str) -> Callable[[], Awaitable[None]] | None:
        """Wake this task's waiters and followers as soon as the store pushes a new event."""
        pushes = self._fast_paths()[3]
        if pushes is None or task_id in self._running:
            return None
        try:
            return await pushes.watch_events(task_id, lambda _: self._touch(task_id, final=True))
        except TaskStoreError:
            _log.warning("cannot watch the events of task %s; polling them", task_id, exc_info=True)
            return None

    async def _events(self, task_id: str, after: int, *, follow: bool, pushed: bool) -> AsyncIterator[TaskEvent]:
        seq = after
        delay = 0.02
        cap = self._fallback_poll_s if pushed else 0.5
        while True:
            event = self._notify_event(task_id)
            batch = await self.store.read_events(task_id, after=seq)
            for ev in batch:
                seq = ev.seq
                yield ev
                if follow and ev.kind in FINAL_EVENT_KINDS:
                    return
            if not follow:
                if not batch and seq == 0:
                    await self.status(task_id)  # TaskNotFound for an unknown id
                return
            if batch:
                continue
            rec = await self.status(task_id)
            if rec.status.is_final or rec.status is TaskStatus.NEEDS_REVIEW:
                for ev in await self.store.read_events(task_id, after=seq):
                    seq = ev.seq
                    yield ev
                return
            step = 5.0 if self._is_local(rec) else delay
            delay = min(delay * 1.5, cap)
            await wait_event(event, step)

    # -- control -----------------------------------------------------------------------------------

    async def cancel(self, task_id: str, *, timeout: float = 30.0) -> TaskRecord:
        """Cancel a task. Queued (or in review): cancelled at once. Running here: its work is
        cancelled, the request stored (a crash before the outcome is recorded cannot run it
        again), and this returns once it is recorded cancelled (up to ``timeout`` s). Running in
        another process: the request is recorded, that process stops it within about a second
        (``wait`` for it). A finished task is returned unchanged."""
        self._check_open()
        run = self._running.get(task_id)
        if run is not None and run.work is not None:
            self._cancel_run(run)
            try:  # stored too: if this process dies before the outcome is recorded, the cancel holds
                await self.store.request_cancel(task_id)
            except TaskStoreError:
                _log.warning("task %s: the cancel request could not be stored; the work is cancelled here", task_id, exc_info=True)
            if run.settler is not None:
                await asyncio.wait({run.settler}, timeout=timeout)
            return await self.status(task_id)
        rec = await self.store.request_cancel(task_id)
        self._touch(task_id, final=True)
        return rec

    async def review(self, task_id: str, *, approve: bool = False, reply: str | None = None) -> TaskRecord:
        """Resolve a ``needs_review`` task: ``approve=True`` accepts the last answer as the
        result; ``reply="..."`` continues the conversation with the reviewer's text (the task is
        queued again and validated as before)."""
        self._check_open()
        if approve == (reply is not None):
            raise UsageError("review needs either approve=True or reply='...'")
        rec = await self.status(task_id)
        if rec.status is not TaskStatus.NEEDS_REVIEW:
            raise TaskError(f"task {task_id} is {rec.status.value}, not waiting for a review", task_id=task_id)
        fields = (rec.error or {}).get("fields") or {}
        history = [m for m in fields.get("history") or [] if isinstance(m, dict)]
        attempts = [a for a in fields.get("attempts") or [] if isinstance(a, dict)]
        if approve:
            text = _last_answer(history)
            if text is None:
                raise TaskError(f"task {task_id} has no answer in its history to approve", task_id=task_id)
            records: list[Attempt] = []
            for a in attempts:
                try:
                    records.append(Attempt.from_dict(a))
                except (TypeError, KeyError, ValueError):
                    _log.warning("task %s: attempt record %r not readable; left out", task_id, a)
            model = records[-1].model if records else str(rec.request.get("model") or "")
            response = Response(text=text, model=model, attempts=records, extra={"review": "approved"})
            new = await self.store.resolve_review(task_id, result=response_dict(response), note={"by": "approve"})
        else:
            assert reply is not None
            if not reply.strip():
                raise UsageError("the review reply is empty")
            spec = dict(rec.request)
            spec["_resume"] = {"history": history, "reply": reply, "attempts": attempts}
            if self._execute:
                await self._start_executing()
            new = await self.store.resolve_review(
                task_id,
                request=spec,
                note={"reply": reply[:500]},
                owner=self.worker_id if self._executing else None,
            )
            self._wake.set()
        self._touch(task_id, final=True)
        return new

