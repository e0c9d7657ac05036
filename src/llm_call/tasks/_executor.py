"""The executing half of the task manager: claim, run, record, report progress, keep alive.

:class:`TaskExecutor` holds the state shared by both halves and everything that runs tasks:
the dispatcher (claims queued tasks within the global and per-route limits), the settle step that
turns a call's outcome into a stored final state, the progress sink that batches events into the
store, and the housekeeping loop (heartbeat, cancel requests from other processes, recovery of
dead workers' tasks, retention cleanup). :class:`~llm_call.tasks.manager.TaskManager` adds the
public client API on top.
"""

from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal

from .._pipeline import execute as execute_call
from .._progress import ProgressListener, listening
from ..errors import (
    HumanReviewNeeded,
    LLMCallError,
    TaskCancelled,
    TaskError,
    TaskStoreError,
    UsageError,
    error_to_dict,
)
from ..types import Response, TaskRecord, TaskStatus
from ._housekeeping import remove_expired
from ._progress_sink import ProgressSink, RunningTask
from ._quota import QuotaScheduler, Requeued, is_max_route
from ._spec import rebuild, response_dict
from .store import (
    EventIn,
    FinishesWithEvents,
    Outcome,
    PushesNotices,
    RecordsOutcomeTime,
    SubmitsStarted,
    TaskStore,
    WorkerInfo,
    final_record,
)

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["TaskExecutor", "wait_event"]

_log = logging.getLogger("llm_call.tasks")

_TICK_S = 0.5  # cancel-request polling; heartbeats every settings.tasks.heartbeat_s
_CLEANUP_EVERY_S = 3600.0
_RECHECK_S = 5.0
_RECORD_RETRY_FIRST_S = 0.05  # recording an outcome that failed is retried after this, doubling
_RECORD_RETRY_MAX_S = 2.0  # waiters of this manager's queued tasks re-read the store this often
STALE_BEATS = 3  # a worker silent for 3 heartbeats is dead

async def wait_event(event: asyncio.Event, timeout: float) -> None:
    if event.is_set():
        return
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return


class TaskExecutor(ProgressSink):
    """State and task execution; see the module docstring and TaskManager."""

    def __init__(
        self,
        store: TaskStore | str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
        execute: bool = True,
        claims: Literal["own", "all"] = "own",
        concurrency: int | None = None,
        kind: str = "manager",
        lazy: bool = False,
        poll_interval: float = 0.25,
        worker_id: str | None = None,
        routes: Sequence[str] | None = None,
    ) -> None:
        if claims not in ("own", "all"):
            raise UsageError(f"claims must be 'own' or 'all', not {claims!r}")
        if concurrency is not None and concurrency < 1:
            raise UsageError(f"concurrency must be >= 1, not {concurrency}")
        self._store_arg = store
        self._store: TaskStore | None = store if isinstance(store, TaskStore) else None
        self._fast_for: TaskStore | None = None
        self._fast: tuple[SubmitsStarted | None, FinishesWithEvents | None, bool, PushesNotices | None] = (None, None, False, None)
        self._owns_store = self._store is None
        self._settings = settings
        self._execute = execute
        self._lazy = lazy
        self.claims = claims
        self.kind = kind
        self._concurrency = concurrency
        self.poll_interval = poll_interval
        #: route globs this manager runs at all (``llm-call worker --routes``); None: every route
        self.routes = list(routes) if routes is not None else None
        self.worker_id = worker_id or f"{kind}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._running: dict[str, RunningTask] = {}
        self._listeners: dict[str, list[ProgressListener]] = {}
        self._notify: dict[str, asyncio.Event] = {}  # wakes events() followers: new events
        self._final_notify: dict[str, asyncio.Event] = {}  # wakes wait(): the state changed
        self._pending: list[EventIn] = []
        self._dirty: set[str] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._exec_lock = asyncio.Lock()
        self._executing = False
        self._started = False
        self._stopping = False
        self._closed = False
        #: set (with the reason) when the store broke for good: a worker exits for a restart
        self.store_failure: TaskStoreError | None = None
        self.store_failed = asyncio.Event()
        self._limit = 1
        self._route_limits: dict[str, int] = {}
        self._route_count: dict[str, int] = {}
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._heartbeat_s = 5.0
        self._max_executions = 3
        self._fallback_poll_s = _TICK_S  # cancel polling when the store pushes cancels (settings)
        self._pushes = False  # the store pushes cancel requests (PushesNotices)
        self._retention_s = 7 * 86400.0
        self._info: WorkerInfo | None = None
        self._quota = QuotaScheduler()  # max/* scheduling on the subscription's quota
        self._route_cache: dict[str, str] = {}
        self._patterns_cache: dict[str, tuple[str, ...]] = {}  # route -> its route-limit patterns
        self._owned_queued: set[str] = set()  # submitted here for this manager, not started yet
        #: a task this manager may claim may be queued (the last claim was cut by a limit, or a
        #: submit here was queued): a task's end wakes the dispatcher; else it polls
        self._maybe_queued = True
        self._fill_lock = asyncio.Lock()
        self._context = contextvars.Context()  # the executing loops' (set when they start)
        self._ended = asyncio.Event()
        # final records of tasks run here that someone waits for: status() takes one instead of
        # reading it back from the store (it is what the store committed)
        self._final_records: dict[str, TaskRecord] = {}
        self._events_lost = False  # a progress flush failed: stored progress may lag; keep none
        #: outcomes recorded by this manager, by status value
        self.finished: dict[str, int] = {}

    @property
    def store(self) -> TaskStore:
        if self._store is None:
            raise TaskError("the task manager is not started: await manager.start() first")
        return self._store

    def _fast_paths(self) -> tuple[SubmitsStarted | None, FinishesWithEvents | None, bool, PushesNotices | None]:
        """The store's optional capabilities (``store.py``), looked up once per store (an
        isinstance check of a runtime protocol costs ~10 µs)."""
        store = self.store
        if self._fast_for is not store:
            self._fast = (
                store if isinstance(store, SubmitsStarted) else None,
                store if isinstance(store, FinishesWithEvents) else None,
                isinstance(store, RecordsOutcomeTime) and store.records_outcome_time is True,
                store if isinstance(store, PushesNotices) else None,
            )
            self._fast_for = store
        return self._fast

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from ..config import get_settings

            self._settings = get_settings()
        return self._settings

    @property
    def executing(self) -> bool:
        """Whether this manager is registered as a worker and runs tasks."""
        return self._executing

    @property
    def closed(self) -> bool:
        return self._closed

    async def _start_executing(self) -> None:
        if self._executing or not self._execute:
            return
        async with self._exec_lock:
            if self._executing:
                return
            self._info = WorkerInfo(
                id=self.worker_id, kind=self.kind, claims=self.claims, concurrency=self._limit
            )
            await self.store.heartbeat(self._info)
            await self._quota.start(self.settings.claude, self.store)
            await self._recover()
            if isinstance(self.store, PushesNotices):
                try:
                    await self.store.watch_cancels(self.worker_id, self._on_cancel_notice)
                    self._pushes = True
                except TaskStoreError:
                    _log.exception("cannot watch cancel requests; polling them only")
            try:
                await self.store.cleanup(time.time() - self._retention_s)
            except TaskStoreError:
                _log.exception("task retention cleanup failed")
            self._executing = True
            self._context = contextvars.copy_context()
            self._loops = [
                asyncio.create_task(self._dispatch_loop(), name=f"llm_call-tasks-dispatch:{self.worker_id}"),
                asyncio.create_task(self._housekeeping_loop(), name=f"llm_call-tasks-housekeeping:{self.worker_id}"),
            ]

    def _spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def _check_open(self) -> None:
        if self._closed:
            raise TaskError("the task manager is closed")
        if not self._started:
            raise TaskError("the task manager is not started: await manager.start() first")

    def _route_of(self, model: str) -> str:
        """The model string after aliases, which route limits match (cached per model)."""
        route = self._route_cache.get(model)
        if route is None:
            from ..providers.router import resolve

            route = resolve(model, self.settings).model
            if len(self._route_cache) < 1024:
                self._route_cache[model] = route
        return route

    def _notify_event(self, task_id: str, *, final: bool = False) -> asyncio.Event:
        table = self._final_notify if final else self._notify
        event = table.get(task_id)
        if event is None:
            event = table[task_id] = asyncio.Event()
        return event

    def _touch(self, task_id: str, *, final: bool = False) -> None:
        """Wake event followers of the task; with ``final`` also its waiters (state changed)."""
        for table in (self._notify, self._final_notify) if final else (self._notify,):
            event = table.pop(task_id, None)
            if event is not None:
                event.set()

    def _is_local(self, rec: TaskRecord) -> bool:
        return rec.id in self._running or (self._executing and rec.owner == self.worker_id)

    # -- executing -----------------------------------------------------------------------------------

    def _patterns_of(self, route: str) -> tuple[str, ...]:
        found = self._patterns_cache.get(route)
        if found is None:
            found = tuple(p for p in self._route_limits if fnmatch.fnmatchcase(route, p))
            if len(self._patterns_cache) < 1024:
                self._patterns_cache[route] = found
        return found

    async def _dispatch_loop(self) -> None:
        backoff = self.poll_interval
        while not self._stopping:
            await wait_event(self._wake, self.poll_interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._fill()
                backoff = self.poll_interval
            except Exception:  # the dispatcher must survive: log, back off, claim again
                _log.exception("claiming tasks failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def drain(self) -> None:
        """Run until nothing this manager may claim is queued and nothing runs (burst mode)."""
        self._check_open()
        await self._start_executing()
        while not self._stopping:
            self._ended.clear()
            started = await self._fill()
            if not self._running and started == 0:
                return
            await wait_event(self._ended, self.poll_interval)

    async def _fill(self) -> int:
        """Claim as many queued tasks as the limits allow and start them. Returns how many."""
        async with self._fill_lock:
            return await self._fill_locked()

    async def _fill_locked(self) -> int:
        started = 0
        more = False  # a claim took all it asked for, or a limit stopped one: more may be queued
        claim_all = self.claims == "all"
        only: dict[str, Any] = {} if self.routes is None else {"routes": self.routes}
        patterns = list(self._route_limits)
        full = [p for p in patterns if self._route_count[p] >= self._route_limits[p]]
        hold = await self._quota.hold()  # max/* routes while the subscription's quota blocks calls
        for i, pattern in enumerate(patterns):
            cap = self._quota.cap(pattern, self._route_count[pattern], min(self._route_limits[pattern] - self._route_count[pattern], self._limit - len(self._running)), hold)
            if cap <= 0:
                more = True
                continue
            exclude = list(dict.fromkeys([*patterns[:i], *full, *hold]))
            got = await self.store.claim(self.worker_id, limit=cap, include=pattern, exclude=exclude, claim_all=claim_all, **only)
            more = more or len(got) >= cap
            for rec in got:
                self._start(rec)
                started += 1
        free = self._limit - len(self._running)
        if free > 0:
            got = await self.store.claim(self.worker_id, limit=free, exclude=patterns + hold, claim_all=claim_all, **only)
            more = more or len(got) >= free
            for rec in got:
                self._start(rec)
                started += 1
        self._maybe_queued = more or free <= 0 or bool(hold)
        return started

    def _new_run(self, task_id: str, route: str) -> RunningTask:
        run = RunningTask(task_id, route, self._patterns_of(route), listeners=self._listeners.pop(task_id, ()))
        self._running[task_id] = run
        self._owned_queued.discard(task_id)
        for p in run.patterns:
            self._route_count[p] += 1
        return run

    def _start(self, rec: TaskRecord) -> None:
        self._launch(self._new_run(rec.id, rec.route), rec)

    def _launch(self, run: RunningTask, rec: TaskRecord) -> None:
        run.rec = rec
        self._call_listeners(run, "started", {"execution": rec.attempts})
        # in the executing loops' context, not the submitter's (a task started by submit())
        task = asyncio.get_running_loop().create_task(
            self._settle(run, rec.request), name=f"llm_call-task:{rec.id}", context=self._context.copy()
        )
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        run.settler = run.work = task

    async def _run_call(self, run: RunningTask, spec: dict[str, Any]) -> Response:
        """The stored call, as acall runs it directly, holding the route's semaphores."""
        resume = spec.get("_resume")
        if resume is not None:
            spec = {k: v for k, v in spec.items() if k != "_resume"}
        request, opts = rebuild(spec)
        async with AsyncExitStack() as stack:
            for pattern in run.patterns:
                await stack.enter_async_context(self._sems[pattern])
            with listening(self._sink(run)):
                if resume:
                    from ..validation.loop import resume_validated

                    return await resume_validated(
                        request, opts, history=resume["history"], reply=resume["reply"], attempts=resume.get("attempts")
                    )
                return await execute_call(request, opts)

    async def _settle(self, run: RunningTask, spec: dict[str, Any] | None, work: Awaitable[Response] | None = None) -> None:
        """Run the stored call (``spec``) or await a running one (``work``) and record the
        outcome; a failure never becomes a result."""
        run.begun = True
        try:
            try:
                if run.cancel_requested:  # cancelled before it began (see _cancel_run)
                    raise asyncio.CancelledError
                if spec is None:
                    assert work is not None
                    response = await work
                elif self._quota.active and is_max_route(run.route) and "_resume" not in spec:
                    requeue = self._quota.requeuer(self.worker_id, run)  # a quota wait goes back to the queue
                    response = await self._quota.run(spec, functools.partial(self._run_call, run), self._sink(run), run.progress, requeue)
                elif run.patterns or "_resume" in spec:
                    response = await self._run_call(run, spec)
                else:  # the common case, inline: one coroutine less per task
                    request, opts = rebuild(spec)
                    with listening(self._sink(run)):
                        response = await execute_call(request, opts)
            except Requeued:  # back in the queue to wait for the quota (or cancelled there)
                return
            except asyncio.CancelledError:
                if not run.cancel_requested:
                    raise  # shutdown: close() puts the task back in the queue
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                err = TaskCancelled(f"task {run.id} was cancelled", task_id=run.id)
                outcome = Outcome(TaskStatus.CANCELLED, error=error_to_dict(err))
            except HumanReviewNeeded as exc:
                outcome = Outcome(TaskStatus.NEEDS_REVIEW, error=error_to_dict(exc))
            except LLMCallError as exc:
                outcome = Outcome(TaskStatus.FAILED, error=error_to_dict(exc))
            except Exception as exc:
                _log.exception("task %s failed with an unexpected error", run.id)
                outcome = Outcome(TaskStatus.FAILED, error=error_to_dict(exc))
            else:
                outcome = Outcome(TaskStatus.SUCCEEDED, result=response_dict(response))
            await self._finish(run, outcome)
        finally:
            self._end_run(run)

    async def _finish(self, run: RunningTask, outcome: Outcome) -> None:
        """Record the outcome. A cancellation arriving meanwhile (close(), a late cancel) waits
        until the outcome is queued for the store, then is re-raised: work that finished is
        never left looking ``running``. (Store writes are queued when called, so an interrupted
        await still commits them, in order.)"""
        cancelled = False
        _, finish_with_events, records_outcome_time, _ = self._fast_paths()  # store or None
        keep = run.rec is not None and records_outcome_time
        if keep:
            outcome.at = time.time()
        events, run.events = run.events, []
        progress = dict(run.progress) if events or run.id in self._dirty else None
        self._dirty.discard(run.id)
        delay = _RECORD_RETRY_FIRST_S
        while True:
            try:
                if finish_with_events is not None:  # events, progress and outcome in one transaction
                    try:
                        recorded = await finish_with_events.finish_with_events(run.id, self.worker_id, outcome, events, progress)
                    except asyncio.CancelledError:
                        cancelled, recorded = True, False
                else:
                    if events or progress is not None:
                        try:
                            keep = await self._store_events(events, {run.id: progress} if progress is not None else {}) and keep
                        except asyncio.CancelledError:
                            cancelled, keep = True, False
                        events, progress = [], None
                    try:
                        recorded = await self.store.finish(run.id, self.worker_id, outcome)
                    except asyncio.CancelledError:
                        cancelled, recorded = True, False
                if recorded:
                    if keep and not cancelled:
                        self._keep_final(run, outcome)
                elif not cancelled:
                    _log.warning("task %s: outcome %s not recorded: this worker no longer owns it", run.id, outcome.status)
                break
            except TaskStoreError:
                # The task is still ``running`` under this live worker, so recovery will not touch
                # it: recording must be retried here, or wait() would never return. A finish is
                # fenced (only this worker's running task) and a failed write commits nothing,
                # so a retry cannot record twice. Stop only when this worker stops (its task then
                # goes back to recovery) or the store is broken for good (the worker exits).
                if self._stopping or cancelled or self._store_broken():
                    _log.exception("task %s: recording outcome %s failed; recovery will run it again", run.id, outcome.status)
                    break
                _log.warning("task %s: recording outcome %s failed; retrying in %.2f s", run.id, outcome.status, delay, exc_info=True)
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    cancelled = True
                    break
                delay = min(delay * 2, _RECORD_RETRY_MAX_S)
        self.finished[outcome.status.value] = self.finished.get(outcome.status.value, 0) + 1
        data: dict[str, Any] = {}
        if outcome.error is not None:
            data["error"] = {"type": outcome.error.get("type"), "message": outcome.error.get("message")}
        self._call_listeners(run, outcome.event_kind, data)
        self._touch(run.id)  # followers now; waiters when the run ends (_end_run), just after
        if cancelled:
            raise asyncio.CancelledError

    def _store_broken(self) -> TaskStoreError | None:
        return self.store.broken()

    def _keep_final(self, run: RunningTask, outcome: Outcome) -> None:
        """Keep the committed final record of a task someone here waits for or listens to."""
        rec = run.rec
        if (
            rec is None
            or self._events_lost
            or not outcome.status.is_final
            or not (run.listeners or run.id in self._final_notify)
        ):
            return
        if len(self._final_records) >= 10_000:
            del self._final_records[next(iter(self._final_records))]
        progress = dict(run.progress) if run.progress else rec.progress
        self._final_records[run.id] = final_record(rec, outcome, progress, self.worker_id)

    def _cancel_run(self, run: RunningTask) -> None:
        """Cancel a task running here. A settler that has not begun yet is not cancelled (its
        ``finally`` would never run): it sees ``cancel_requested`` at its first step."""
        run.cancel_requested = True
        if run.work is not None and (run.begun or run.work is not run.settler):
            run.work.cancel()

    def _end_run(self, run: RunningTask) -> None:
        if self._running.pop(run.id, None) is None:
            return
        if run.events:  # not stored with an outcome (shutdown): the next flush stores them
            self._pending.extend(run.events)
            run.events = []
            self._schedule_flush()
        for p in run.patterns:
            self._route_count[p] -= 1
        self._dirty.discard(run.id)
        if self._maybe_queued or self._owned_queued:  # a claim costs a store read: only if useful
            self._wake.set()
        self._ended.set()
        self._touch(run.id, final=True)

    # -- progress events -----------------------------------------------------------------------------

    # -- housekeeping --------------------------------------------------------------------------------

    async def _recover(self) -> None:
        report = await self.store.recover(
            max_executions=self._max_executions, stale_after=max(self._heartbeat_s * STALE_BEATS, 1.0)
        )
        if report.requeued or report.interrupted or report.cancelled or report.reassigned:
            _log.warning(
                "recovered tasks of dead worker(s) %s: %d re-queued, %d interrupted, %d cancelled, "
                "%d queued handed over",
                report.dead_workers, len(report.requeued), len(report.interrupted), len(report.cancelled),
                len(report.reassigned),
            )
            self._wake.set()

    def _recheck_waiters(self) -> None:
        """Wake waiters of tasks not running here, to re-read the store: a queued task of ours
        may have been cancelled by another process, which sends us no signal."""
        for task_id in [t for t in self._final_notify if t not in self._running]:
            self._final_notify.pop(task_id).set()

    def _on_cancel_notice(self, task_id: str) -> None:
        """A cancel of a task running here was requested in another process (pushed)."""
        run = self._running.get(task_id)
        if run is not None and run.work is not None and not run.cancel_requested:
            self._cancel_run(run)

    async def _housekeeping_loop(self) -> None:
        assert self._info is not None
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self._heartbeat_s
        next_recover = loop.time() + self._heartbeat_s * STALE_BEATS
        next_cleanup = loop.time() + _CLEANUP_EVERY_S
        next_recheck = loop.time() + _RECHECK_S
        next_cancel_poll = loop.time() + (self._fallback_poll_s if self._pushes else 0.0)
        cleaning: asyncio.Task[None] | None = None
        while not self._stopping:
            await asyncio.sleep(min(_TICK_S, self._heartbeat_s))
            broken = self._store_broken()
            if broken is not None:
                _log.critical("task store broken, this manager stops running tasks: %s", broken)
                self.store_failure = broken
                self.store_failed.set()
                return
            try:
                if self._running and loop.time() >= next_cancel_poll:
                    next_cancel_poll = loop.time() + (self._fallback_poll_s if self._pushes else 0.0)
                    for task_id in await self.store.cancel_requests(self.worker_id):
                        run = self._running.get(task_id)
                        if run is not None and run.work is not None and not run.cancel_requested:
                            self._cancel_run(run)
                now = loop.time()
                if now >= next_recheck:
                    next_recheck = now + _RECHECK_S
                    self._recheck_waiters()
                if now >= next_beat:
                    next_beat = now + self._heartbeat_s
                    await self.store.heartbeat(self._info)
                if now >= next_recover:
                    next_recover = now + self._heartbeat_s * STALE_BEATS
                    await self._recover()
                if now >= next_cleanup and (cleaning is None or cleaning.done()):  # beside: beats never wait on it
                    next_cleanup = now + _CLEANUP_EVERY_S
                    cleaning = asyncio.create_task(remove_expired(self.store, self._retention_s))
                    self._loops = [*(t for t in self._loops if not t.done()), cleaning]  # close() cancels it
            except Exception:  # heartbeats must go on: log and try again next tick
                _log.exception("task housekeeping failed; trying again next tick")

