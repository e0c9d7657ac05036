"""The task manager inside the server process.

The server runs one :class:`~llm_call.tasks.TaskManager` on its event loop with
``claims="all"``: it executes the tasks submitted through the API and any unowned queued task in
the store (so tasks queued by ``llm-call`` clients run here too), registers as a worker with a
heartbeat, and at start recovers the tasks of dead workers, including this server's previous run.
At shutdown the manager closes without grace: running tasks go back to the queue, durable, and
the next start (or another worker) runs them.

A store that cannot be opened at start is a startup failure (the server exits with the error);
a store that fails later makes ``/health`` report not ready and the task routes answer 503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import LLMCallError
from ._errors import HTTPFailure
from ._state import ServerState

__all__ = ["manager", "start_tasks", "stop_tasks", "store_check", "store_counts", "task_counts"]

_log = logging.getLogger("llm_call.server")
_CHECK_TIMEOUT_S = 5.0
#: how long one count of the store's tasks answers /health and /metrics
_COUNTS_TTL_S = 1.0


async def start_tasks(state: ServerState, given: Any = None) -> None:
    """Start the server's task manager (or adopt ``given``) and make it the loop's default."""
    from ..tasks import TaskManager, use_manager

    if given is not None:
        state.tasks = given
    else:
        mgr = TaskManager(state.settings.tasks.store, settings=state.settings, claims="all", kind="server")
        await mgr.start()
        state.tasks = mgr
        _log.info("task store %s open; this server runs background tasks", mgr.store.url)
    use_manager(state.tasks)


async def stop_tasks(state: ServerState, owned: bool) -> None:
    """Close the manager if the server created it: unfinished tasks go back to the queue."""
    mgr, state.tasks = state.tasks, None
    if mgr is None or not owned:
        return
    await mgr.close(grace=0.0)


def manager(state: ServerState) -> Any:
    """The running task manager, or a 503 saying why there is none."""
    mgr = state.tasks
    if mgr is None or getattr(mgr, "closed", False):
        raise HTTPFailure(
            503,
            "background tasks are not available: the task manager is not running (server starting or stopping)",
            type="server_error",
            code="tasks_unavailable",
        )
    return mgr


async def store_check(state: ServerState) -> tuple[bool, str, str]:
    """Readiness of the task store: a count query within a few seconds.

    Returns ``(ok, reason, detail)``: ``reason`` names no path or URL (keyless ``/health`` shows
    it), ``detail`` does (for callers with a key, and the log)."""
    mgr = state.tasks
    if mgr is None or getattr(mgr, "closed", False):
        return False, "task manager not running", "task manager not running"
    if mgr.store.broken() is not None:
        msg = "task store broken: its writer stopped; restart the server"
        return False, msg, msg
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            await store_counts(state)
    except TimeoutError:
        reason = f"task store did not answer within {_CHECK_TIMEOUT_S:g} s"
        return False, reason, f"task store {mgr.store.url} did not answer within {_CHECK_TIMEOUT_S:g} s"
    except LLMCallError as exc:
        _log.warning("task store check failed: %s", exc)
        return False, f"task store failed ({type(exc).__name__}; see the server log)", f"task store {mgr.store.url}: {exc}"
    return True, "ok", str(mgr.store.url)


async def store_counts(state: ServerState) -> dict[str, int]:
    """The store's tasks per status, read at most once per :data:`_COUNTS_TTL_S` however many
    requests ask: ``/health`` needs no key and neither it nor ``/metrics`` counts against a key's
    requests in flight, and a count reads every task (tens of milliseconds at a million), so a
    stream of cheap requests would otherwise keep the store busy. Requests that ask while a count
    runs share it; a failure is not kept (the next request tries again)."""
    cache = state.counts_cache
    loop = asyncio.get_running_loop()
    at = cache.get("at")
    if at is not None and loop.time() - at < _COUNTS_TTL_S:
        return dict(cache["value"])
    running: asyncio.Future[dict[str, int]] | None = cache.get("running")
    if running is None or running.done():
        mgr = state.tasks

        async def count() -> dict[str, int]:
            value = dict(await mgr.store.counts())
            cache["value"], cache["at"] = value, loop.time()
            return value

        running = loop.create_task(count(), name="llm_call-store-counts")
        running.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved if all gave up
        cache["running"] = running
    return dict(await asyncio.shield(running))


async def task_counts(state: ServerState) -> tuple[dict[str, int], int] | None:
    """Tasks per status and the queue depth, for /metrics (None when unavailable)."""
    mgr = state.tasks
    if mgr is None or getattr(mgr, "closed", False):
        return None
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            counts: dict[str, int] = dict(await store_counts(state))
    except (TimeoutError, LLMCallError) as exc:
        _log.warning("task counts for /metrics unavailable: %s", exc)
        return None
    return counts, int(counts.get("queued", 0))
