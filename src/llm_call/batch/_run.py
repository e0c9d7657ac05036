"""Running a batch through the task manager: :func:`run_batch` (exported by :mod:`llm_call.batch`).

Every line becomes a task of a :class:`~llm_call.tasks.TaskManager` running in this process, so
the route limits of ``settings.tasks.route_limits`` apply (``max/*`` at 4 at a time by default)
and quick and long calls interleave. ``concurrency`` bounds the lines in flight (submitted and not
finished); a pool of that many feeders takes lines in file order. The tasks are not reserved for
this process: an ``llm-call worker`` on the same store may take some of them (their results are
written here all the same).

Each finished line is appended to the output file and flushed before the next is taken, so an
interrupted run loses nothing that finished. On interruption (Ctrl-C, ``--fail-fast``) the lines
still in flight are cancelled in the store (so no other worker runs them later for nobody) and
are not written: ``--resume`` runs them again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from ..errors import LLMCallError, UsageError, error_to_dict
from ..types import TaskRecord, TaskStatus
from ._items import BatchItem, ItemResult, RouteStats, read_done, summarize

if TYPE_CHECKING:
    from ..config import Settings
    from ..tasks import TaskManager, TaskStore

__all__ = ["BatchObserver", "BatchReport", "result_from_record", "run_batch"]

_log = logging.getLogger("llm_call.batch")

#: progress events that end a task (the manager sends them after the outcome is stored)
_FINAL_KINDS = frozenset({"finished", "failed", "cancelled", "needs_review", "interrupted"})
_POLL_S = 5.0
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode  # json.dumps's format, built once


class BatchObserver(Protocol):
    """What a progress display is told. Called on the event loop; must not block."""

    def begin(self, total: int, routes: Mapping[str, int], skipped: int) -> None: ...

    def started(self, item: BatchItem) -> None: ...

    def finished(self, item: BatchItem, result: ItemResult) -> None: ...


@dataclass(slots=True)
class BatchReport:
    """What a batch run did. ``results`` holds every input line's result that exists (resumed
    ones included), in input order; ``not_run`` the ids with no result (interrupted or stopped)."""

    results: list[ItemResult]
    ran: int = 0
    skipped: int = 0
    not_run: list[str] = field(default_factory=list)
    interrupted: bool = False
    stopped_early: bool = False
    elapsed_s: float = 0.0

    def summary(self) -> list[RouteStats]:
        return summarize(self.results)

    @property
    def all_passed(self) -> bool:
        return not self.not_run and all(r.passed for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 only if every line ran and passed; 130 when interrupted; else 1."""
        if self.interrupted:
            return 130
        return 0 if self.all_passed else 1


def _sum_attempts(attempts: Sequence[dict[str, Any]]) -> tuple[dict[str, int], float | None]:
    prompt = completion = 0
    cost: float | None = None
    for a in attempts:
        usage = a.get("usage") or {}
        prompt += int(usage.get("prompt_tokens") or 0)
        completion += int(usage.get("completion_tokens") or 0)
        if a.get("cost_usd") is not None:
            cost = (cost or 0.0) + float(a["cost_usd"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}, cost


def _status_of(rec: TaskRecord) -> str:
    if rec.status is TaskStatus.SUCCEEDED:
        return "passed"
    if rec.status is TaskStatus.NEEDS_REVIEW:
        return "needs_review"
    if rec.status is TaskStatus.CANCELLED:
        return "cancelled"
    if rec.status is TaskStatus.FAILED and (rec.error or {}).get("type") == "ValidationExhausted":
        return "failed_validation"
    return "error"


def result_from_record(item: BatchItem, rec: TaskRecord) -> ItemResult:
    """The output line for ``item`` from its final task record. Only a success is ``passed``."""
    latency = None
    if rec.started_at is not None and rec.finished_at is not None:
        latency = round(max(0.0, rec.finished_at - rec.started_at), 6)
    out = ItemResult(id=item.id, status=_status_of(rec), line=item.line, route=item.route, task_id=rec.id)
    if rec.status is TaskStatus.SUCCEEDED and rec.result is not None:
        res = rec.result
        out.model = res.get("model")
        out.text = res.get("text")
        out.parsed = res.get("parsed")
        out.attempts = list(res.get("attempts") or [])
        out.usage = dict(res.get("usage") or {})
        out.cost_usd = res.get("cost_usd")
        if out.attempts:
            usage, cost = _sum_attempts(out.attempts)
            if usage["total_tokens"] >= int(out.usage.get("total_tokens") or 0):
                out.usage = usage
            if cost is not None and (out.cost_usd is None or cost > out.cost_usd):
                out.cost_usd = cost
        out.latency_s = latency if latency is not None else res.get("latency_s")
        return out
    if rec.status is TaskStatus.SUCCEEDED:
        out.status = "error"
        out.error_type, out.error_message = "LLMCallError", f"task {rec.id} succeeded without a result"
        return out
    error = rec.error or {}
    fields = error.get("fields") or {}
    attempts = [a for a in fields.get("attempts") or [] if isinstance(a, dict)]
    out.attempts = attempts
    out.usage, out.cost_usd = _sum_attempts(attempts)
    out.model = attempts[-1].get("model") if attempts else item.model
    out.latency_s = latency
    out.error_type = str(error.get("type") or rec.status.value)
    out.error_message = str(error.get("message") or f"task ended {rec.status.value}")
    return out


async def _until_done(fut: asyncio.Future[None], timeout: float) -> None:
    """Wait until ``fut`` is done or ``timeout`` passed (as ``asyncio.wait((fut,), timeout=...)``
    without its sets, Task checks and second callback: a few µs per line less)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    handle = loop.call_later(timeout, wake)
    fut.add_done_callback(wake)
    try:
        await waiter
    finally:
        handle.cancel()
        fut.remove_done_callback(wake)


def _error_result(item: BatchItem, exc: BaseException) -> ItemResult:
    err = error_to_dict(exc)
    return ItemResult(
        id=item.id,
        status="error",
        line=item.line,
        route=item.route,
        model=item.model,
        error_type=err["type"],
        error_message=err["message"],
    )


class _Writer:
    """Appends result lines to the output file, each flushed at once."""

    def __init__(self, path: Path, *, append: bool) -> None:
        try:
            if path.parent != Path(""):
                path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: each line is one write() to the OS, as a flush after each line would do
            self._fh: IO[bytes] = path.open("ab" if append else "wb", buffering=0)
        except OSError as exc:
            raise UsageError(f"cannot write output file {path}: {exc.strerror or exc}") from None

    def write(self, result: ItemResult) -> None:
        line = (_encode(result.to_dict()) + "\n").encode()
        while line:  # a raw write may be partial
            line = line[self._fh.write(line) :]

    def close(self) -> None:
        self._fh.close()


class _BatchRun:
    """One batch run: the feeders, the in-flight tasks, the stop flag."""

    def __init__(
        self,
        manager: TaskManager,
        writer: _Writer,
        observer: BatchObserver | None,
        fail_fast: bool,
    ) -> None:
        self.manager = manager
        self.writer = writer
        self.observer = observer
        self.fail_fast = fail_fast
        self.results: dict[str, ItemResult] = {}
        self.inflight: dict[str, tuple[str, asyncio.Future[None]]] = {}  # item id -> (task id, ended)
        self.stopped = False

    def _listener(self, item: BatchItem, ended: asyncio.Future[None]) -> Any:
        observer = self.observer

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "started":
                if observer is not None:
                    observer.started(item)
            elif kind in _FINAL_KINDS and not ended.done():
                ended.set_result(None)

        return on_event

    async def run_one(self, item: BatchItem) -> None:
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            task_id = await self.manager.submit(item.kwargs, progress=self._listener(item, ended), reserve=False)
        except LLMCallError as exc:
            self.record(item, _error_result(item, exc))
            return
        self.inflight[item.id] = (task_id, ended)
        if self.stopped:
            await self._cancel(task_id, ended)
        rec = await self._final_record(task_id, ended)
        self.inflight.pop(item.id, None)
        if self.stopped and rec.status is TaskStatus.CANCELLED:
            return  # cancelled by this run's own stop: not a result, --resume runs it again
        self.record(item, result_from_record(item, rec))

    async def _final_record(self, task_id: str, ended: asyncio.Future[None]) -> TaskRecord:
        """The task's record once it ended. The manager tells this process when a task it runs
        ends (one store read then); a task another worker took is followed through the store."""
        while True:
            if not ended.done():
                await _until_done(ended, _POLL_S)
            rec = await self.manager.status(task_id)
            if rec.status.is_final or rec.status is TaskStatus.NEEDS_REVIEW:
                return rec
            if ended.done() or (rec.worker is not None and rec.worker != self.manager.worker_id):
                return await self.manager.wait(task_id)

    def record(self, item: BatchItem, result: ItemResult) -> None:
        self.writer.write(result)
        self.results[item.id] = result
        if self.observer is not None:
            self.observer.finished(item, result)
        if self.fail_fast and not result.passed:
            self.stopped = True

    async def feed(self, queue: asyncio.Queue[BatchItem]) -> None:
        while not self.stopped:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await self.run_one(item)

    async def _cancel(self, task_id: str, ended: asyncio.Future[None]) -> None:
        try:
            rec = await self.manager.cancel(task_id, timeout=10.0)
        except LLMCallError as exc:
            _log.warning("could not cancel task %s: %s", task_id, exc)
            return
        if (rec.status.is_final or rec.status is TaskStatus.NEEDS_REVIEW) and not ended.done():
            ended.set_result(None)

    async def cancel_inflight(self) -> None:
        """Cancel the tasks still in flight (recorded cancelled in the store, not written)."""
        pending = list(self.inflight.values())
        if pending:
            await asyncio.gather(*(self._cancel(task_id, ended) for task_id, ended in pending))


async def run_batch(
    items: Sequence[BatchItem],
    out: str | os.PathLike[str],
    *,
    concurrency: int = 8,
    fail_fast: bool = False,
    resume: bool = False,
    observer: BatchObserver | None = None,
    stop: asyncio.Event | None = None,
    store: TaskStore | str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
) -> BatchReport:
    """Run ``items`` (checked with :func:`~llm_call.batch.check_items`) and write ``out``.

    Without ``resume`` the output file is replaced; with it, ids already there are skipped and
    new results are appended. Setting ``stop`` (the CLI does on Ctrl-C) cancels the lines in
    flight and returns a report with ``interrupted``; everything that finished is already in
    ``out``. Cancelling the awaiting task does the same and re-raises.

    Example::

        report = await run_batch(items, "out.jsonl", concurrency=32)
        sys.exit(report.exit_code)
    """
    from ..tasks import TaskManager

    if concurrency < 1:
        raise UsageError(f"concurrency must be >= 1, not {concurrency}")
    started = time.perf_counter()
    out_path = Path(out)
    done = read_done(out_path, repair=True) if resume else {}
    todo = [item for item in items if item.id not in done]
    routes: dict[str, int] = {}
    for item in todo:
        routes[item.route or "?"] = routes.get(item.route or "?", 0) + 1
    report = BatchReport(results=[], skipped=len(items) - len(todo))
    writer = _Writer(out_path, append=resume)
    # the lines are left unreserved so any worker on the same store may help; this manager
    # claims them (and, while it runs, any other unreserved task: it is a worker too)
    manager = TaskManager(store, settings=settings, concurrency=concurrency, kind="batch", claims="all")
    run: _BatchRun | None = None
    try:
        if observer is not None:
            observer.begin(len(todo), routes, report.skipped)
        if todo:
            await manager.start()
            run = _BatchRun(manager, writer, observer, fail_fast)
            report.interrupted, report.stopped_early = await _drive(run, todo, concurrency, stop)
    except asyncio.CancelledError:
        report.interrupted = True
        raise
    finally:
        await asyncio.shield(manager.close())
        writer.close()
        new = run.results if run is not None else {}
        report.ran = len(new)
        for item in items:
            result = new.get(item.id) or done.get(item.id)
            if result is None:
                report.not_run.append(item.id)
            else:
                if not result.route:
                    result.route = item.route
                report.results.append(result)
        report.elapsed_s = time.perf_counter() - started
    return report


async def _drive(
    run: _BatchRun, todo: Sequence[BatchItem], concurrency: int, stop: asyncio.Event | None
) -> tuple[bool, bool]:
    """Feed ``todo`` through ``concurrency`` feeders until done, failed fast or stopped.

    Returns ``(interrupted, stopped_early)``.
    """
    queue: asyncio.Queue[BatchItem] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    feeders = {asyncio.create_task(run.feed(queue)) for _ in range(min(concurrency, len(todo)))}
    stop_wait = asyncio.create_task(stop.wait()) if stop is not None else None
    interrupted = False
    try:
        while feeders:
            waiting = feeders | ({stop_wait} if stop_wait is not None else set())
            finished, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if stop_wait is not None and stop_wait in finished:
                interrupted = True
                run.stopped = True
                stop_wait = None
            for task in finished & feeders:
                feeders.discard(task)
                task.result()  # a bug in a feeder surfaces here
            if run.stopped and feeders:
                # feeders see the flag: those waiting get their cancelled task back, those
                # submitting cancel what they submitted; none takes another line
                await run.cancel_inflight()
    except BaseException:
        run.stopped = True
        await asyncio.shield(run.cancel_inflight())
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
        raise
    finally:
        if stop_wait is not None:
            stop_wait.cancel()
    return interrupted, run.stopped and not interrupted
