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

Layer: ``tasks`` sits above the validation loop, the retry layer and the pipeline, and below
``client``: a task runs the validated call (``_pipeline.execute``: validation, retries,
deadline), so the task manager imports them, and ``client`` imports ``tasks.auto`` for
``mode="background"``/``"auto"``. Nothing below imports ``tasks``.

Guarantee (details in docs/tasks.md): a submitted task is durable when ``submit`` returns; it is
executed at least once (more than once only if the process running it dies, up to
``settings.tasks.max_executions`` executions), and it ends in exactly one final state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._default import (
    cancel,
    close_manager,
    events,
    get_manager,
    list_tasks,
    result,
    review,
    status,
    submit,
    use_manager,
    wait,
    wait_result,
)
from ._handle import TaskHandle, outcome_of
from ._stores import default_store_path, make_store, open_store
from .manager import TaskManager
from .store import (
    EventIn,
    NewTask,
    Outcome,
    RecoveryReport,
    TaskStore,
    WorkerInfo,
)

if TYPE_CHECKING:
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
