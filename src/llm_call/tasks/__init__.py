"""Background tasks: long calls that never die on a timeout, persisted so a crash loses nothing.

Public API:

- :class:`TaskManager` — submit / status / result / wait / cancel / list_tasks / events / review,
  running tasks as asyncio tasks on the current loop (see ``manager.py``);
- :class:`TaskHandle` — what ``acall(..., mode="background")`` returns: ``await`` it, or poll it;
- :class:`TaskStore` — the storage protocol (``store.py``); :class:`SQLiteTaskStore` is the
  embedded default; :func:`open_store` picks one from a path or URL;
- module helpers on the **default manager** of the running loop (:func:`get_manager`): created on
  first use from the settings (``settings.tasks.store``, ``LLM_CALL_TASKS``, default
  ``$XDG_DATA_HOME/llm_call/tasks.db``); it runs the tasks it submits, in this process;
- :data:`sync` — the same helpers for synchronous code (``llm_call.tasks.sync.submit(...)``).

Example::

    from llm_call import tasks

    task_id = await tasks.submit({"model": "max/sonnet", "prompt": "Write a haiku."})
    async for event in tasks.events(task_id):
        print(event.kind, event.data)
    print((await tasks.result(task_id)).text)

Guarantee (details in docs/tasks.md): a submitted task is durable when ``submit`` returns; it is
executed at least once (more than once only if the process running it dies, up to
``settings.tasks.max_executions`` executions), and it ends in exactly one final state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from ._handle import TaskHandle, outcome_of
from .manager import TaskManager
from .store import (
    EventIn,
    NewTask,
    Outcome,
    RecoveryReport,
    TaskStore,
    WorkerInfo,
    default_store_path,
    make_store,
    open_store,
)

if TYPE_CHECKING:
    from .._progress import ProgressListener
    from ..types import Response, TaskEvent, TaskRecord, TaskStatus
    from ._sync import SyncTasks
    from .sqlite_store import SQLiteTaskStore

__all__ = [
    "EventIn",
    "NewTask",
    "Outcome",
    "RecoveryReport",
    "SQLiteTaskStore",
    "TaskHandle",
    "TaskManager",
    "TaskStore",
    "WorkerInfo",
    "cancel",
    "close_manager",
    "default_store_path",
    "events",
    "get_manager",
    "list_tasks",
    "make_store",
    "open_store",
    "outcome_of",
    "result",
    "review",
    "status",
    "submit",
    "sync",
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


def __getattr__(name: str) -> Any:
    if name == "sync":
        from ._sync import SyncTasks

        value: Any = SyncTasks()
    elif name == "SyncTasks":
        from ._sync import SyncTasks as value
    elif name == "SQLiteTaskStore":
        from .sqlite_store import SQLiteTaskStore as value
    else:
        raise AttributeError(f"module 'llm_call.tasks' has no attribute {name!r}")
    globals()[name] = value
    return value


if TYPE_CHECKING:
    sync: SyncTasks
