"""The worker loop: run queued tasks from a store until stopped (or, in burst mode, until idle).

``llm-call worker`` runs it; ``llm-call serve`` runs the same loop inside the server process
(``run_worker(..., kind="server", stop=event)`` as a background task, or a
``TaskManager(claims="all", kind="server")`` installed with ``llm_call.tasks.use_manager``).

A worker is a :class:`TaskManager` with ``claims="all"``: it claims every unowned queued task
atomically (several workers on one store never run the same task), heartbeats so that others
can recover its tasks if it dies, and on start recovers the tasks of dead workers. On stop it
stops claiming, gives running tasks ``grace`` seconds, and puts the rest back in the queue.

Example::

    stats = await run_worker("/tmp/tasks.db", concurrency=8, burst=True)
    print(stats)          # {'succeeded': 12, 'failed': 1}
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .manager import TaskManager

if TYPE_CHECKING:
    from ..config import Settings
    from .store import TaskStore

__all__ = ["run_worker"]

_log = logging.getLogger("llm_call.tasks")


async def run_worker(
    store: TaskStore | str | os.PathLike[str] | None = None,
    *,
    concurrency: int | None = None,
    burst: bool = False,
    stop: asyncio.Event | None = None,
    grace: float = 10.0,
    kind: str = "worker",
    settings: Settings | None = None,
    handle_signals: bool = False,
    on_ready: Callable[[TaskManager], None] | None = None,
    routes: Sequence[str] | None = None,
) -> dict[str, int]:
    """Run tasks until ``stop`` is set (or, with ``burst``, until nothing is left to do).

    Returns the number of tasks that ended per status. ``handle_signals`` makes SIGINT/SIGTERM
    set ``stop`` (for the CLI). ``on_ready`` is called once the worker is registered. ``routes``
    (globs such as ``max/*``) restricts the worker to those routes.
    """
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    manager = TaskManager(
        store, settings=settings, claims="all", concurrency=concurrency, kind=kind, poll_interval=0.2, routes=routes
    )
    await manager.start()
    try:
        if on_ready is not None:
            on_ready(manager)
        stopper = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(manager.store_failed.wait())
        waits: set[asyncio.Task[Any]] = {stopper, failed}
        drain = asyncio.create_task(manager.drain()) if burst else None
        if drain is not None:
            waits.add(drain)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                if not t.done():
                    t.cancel()
        if drain is not None and drain.done():
            drain.result()
        if manager.store_failure is not None:  # exit non-zero: the supervisor restarts us
            raise manager.store_failure
    finally:
        await manager.close(grace=grace)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    _log.info("worker %s stopped: %s", manager.worker_id, manager.finished)
    return dict(manager.finished)
