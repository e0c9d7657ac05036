"""The default task manager of each event loop, and the module helpers that use it.

``llm_call.tasks.submit(...)`` and friends (re-exported by ``llm_call.tasks``) run on the
running loop's default manager (:func:`get_manager`), opened on first use from the settings.
A module of its own so that ``tasks._sync`` (the blocking twins) imports the helpers without
importing the package that imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from ._handle import outcome_of
from .manager import TaskManager

if TYPE_CHECKING:
    from .._progress import ProgressListener
    from ..types import Response, TaskEvent, TaskRecord, TaskStatus

__all__ = [
    "cancel",
    "close_manager",
    "events",
    "get_manager",
    "list_tasks",
    "result",
    "review",
    "status",
    "submit",
    "use_manager",
    "wait",
    "wait_result",
]

_managers: dict[asyncio.AbstractEventLoop, asyncio.Future[TaskManager]] = {}


async def _open_default() -> TaskManager:
    return await TaskManager.open(None, lazy=True)


async def get_manager() -> TaskManager:
    """The default manager of the running event loop, opened on first use.

    It executes only what is submitted through it (``claims="own"``) and registers as a worker
    only at its first submit, so reading status from a script never starts work.
    """
    loop = asyncio.get_running_loop()
    for old in [lp for lp in _managers if lp.is_closed()]:
        del _managers[old]
    entry = _managers.get(loop)
    if entry is not None and entry.done() and (entry.cancelled() or entry.exception() is not None or entry.result().closed):
        entry = None
    if entry is None:
        entry = _managers[loop] = loop.create_task(_open_default())
    try:
        return await asyncio.shield(entry)
    except BaseException:
        if entry.done() and _managers.get(loop) is entry:
            del _managers[loop]
        raise


def use_manager(manager: TaskManager) -> None:
    """Make ``manager`` (started) the default of the running loop (e.g. the server's own)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[TaskManager] = loop.create_future()
    fut.set_result(manager)
    _managers[loop] = fut


async def close_manager(*, grace: float = 0.0) -> None:
    """Close the running loop's default manager (unfinished tasks go back to the queue)."""
    entry = _managers.pop(asyncio.get_running_loop(), None)
    if entry is None:
        return
    try:
        manager = await entry
    except Exception:
        return  # it never opened: nothing to close
    await manager.close(grace=grace)


async def submit(
    request: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    priority: int | None = None,
    progress: ProgressListener | None = None,
    **call_kwargs: Any,
) -> str:
    """Queue a call on the default manager; returns the task id once it is durable.

    ``submit({"model": "m", "prompt": "hi"})`` or ``submit(model="m", prompt="hi")``.
    """
    args = dict(request) if request is not None else {}
    args.update(call_kwargs)
    manager = await get_manager()
    return await manager.submit(args, idempotency_key=idempotency_key, priority=priority, progress=progress)


async def status(task_id: str) -> TaskRecord:
    return await (await get_manager()).status(task_id)


async def result(task_id: str) -> Response:
    """The Response of a finished task, its typed error, or TaskPending."""
    return await (await get_manager()).result(task_id)


async def wait(task_id: str, timeout: float | None = None) -> TaskRecord:
    """Wait for the task to end (or need a review); TaskPending after ``timeout``."""
    return await (await get_manager()).wait(task_id, timeout=timeout)


async def wait_result(task_id: str, timeout: float | None = None) -> Response:
    """:func:`wait`, then the Response (or the task's typed error)."""
    return outcome_of(await wait(task_id, timeout))


async def cancel(task_id: str) -> TaskRecord:
    return await (await get_manager()).cancel(task_id)


async def list_tasks(status: TaskStatus | str | None = None, limit: int = 100) -> list[TaskRecord]:
    return await (await get_manager()).list_tasks(status, limit)


async def events(task_id: str, after: int = 0, *, follow: bool = True) -> AsyncIterator[TaskEvent]:
    manager = await get_manager()
    async for event in manager.events(task_id, after, follow=follow):
        yield event


async def review(task_id: str, *, approve: bool = False, reply: str | None = None) -> TaskRecord:
    return await (await get_manager()).review(task_id, approve=approve, reply=reply)
