"""``acall(mode="background" | "auto")``: when a call becomes a task.

- ``background``: the call is stored as a task and run by this process's task manager; acall
  returns a :class:`TaskHandle` at once (``await handle`` for the Response). ``timeout`` is the
  task's own time limit, as in a direct call.
- ``auto``: a call that is long-running by nature (a ``max/*`` model, an agent validator, an
  ``mcp_config``, tools escalation, or ``long_running=True``) goes to the background as above; any
  other runs directly. In auto mode ``timeout`` never kills the work: a direct call still running
  after ``timeout`` seconds is **handed to the task manager as it is** (not cancelled, not re-run:
  the provider request in flight goes on) and the caller gets :class:`TaskPending` with the task
  id to poll. A background-by-nature call ignores ``timeout`` (its provider's own limits apply).

A call whose arguments cannot be stored as JSON (a validator function, a pydantic
``response_model``) cannot become a task: in ``background`` mode that is a UsageError; in ``auto``
mode it runs directly and ``timeout`` is a plain time limit.

Example::

    try:
        resp = await llm_call.acall("openai/gpt-4o", "Summarise ...", mode="auto", timeout=20)
    except llm_call.TaskPending as pending:
        resp = await llm_call.tasks.wait_result(pending.task_id)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .._progress import ProgressListener, listening
from ..errors import TaskPending, UsageError
from ._handle import TaskHandle
from ._spec import call_spec, is_long_running

if TYPE_CHECKING:
    from .._request import CallOptions
    from ..types import Request, Response

__all__ = ["run_with_mode"]

_log = logging.getLogger("llm_call.tasks")
_BUFFERED_EVENTS = 500


class _Relay:
    """The progress listener of a direct call that may be handed over: it forwards to the caller's
    callback, keeps the events until a task exists, then sends them to the task."""

    def __init__(self, user: ProgressListener | None) -> None:
        self.user = user
        self.buffer: deque[tuple[str, dict[str, Any]]] = deque(maxlen=_BUFFERED_EVENTS)
        self.sink: ProgressListener | None = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.user is not None:
            try:
                self.user(kind, data)
            except Exception:
                _log.exception("progress callback failed on %s event; ignoring", kind)
        if self.sink is not None:
            self.sink(kind, data)
        else:
            self.buffer.append((kind, data))

    def attach(self, sink: ProgressListener) -> None:
        while self.buffer:
            kind, data = self.buffer.popleft()
            sink(kind, data)
        self.sink = sink


async def _background(request: Request, opts: CallOptions) -> TaskHandle:
    from ._default import get_manager

    spec = call_spec(request, opts)
    manager = await get_manager()
    task_id = await manager.submit_spec(
        spec, idempotency_key=opts.idempotency_key, priority=opts.priority, progress=opts.progress
    )
    return manager.handle(task_id)


async def _direct(request: Request, opts: CallOptions, listener: ProgressListener | None) -> Response:
    from .._pipeline import execute

    with listening(listener):
        return await execute(request, opts)


async def _direct_with_handoff(request: Request, opts: CallOptions, timeout: float) -> Response:
    """Run directly; past ``timeout`` hand the running work to the task manager."""
    try:
        spec = call_spec(request, opts)
    except UsageError as exc:
        _log.debug("auto mode: the call cannot become a task (%s); running it directly", exc)
        return await _direct(request.replace(timeout=timeout), opts, opts.progress)
    relay = _Relay(opts.progress)
    started = time.monotonic()
    work: asyncio.Task[Response] = asyncio.create_task(_direct(request, opts, relay))
    try:
        done, _ = await asyncio.wait({work}, timeout=timeout)
    except asyncio.CancelledError:
        work.cancel()
        raise
    if work in done or work.done():
        return work.result()
    from ._default import get_manager

    try:
        manager = await get_manager()
        task_id, sink = await manager.adopt(
            work, spec, priority=opts.priority, idempotency_key=opts.idempotency_key
        )
    except BaseException:
        work.cancel()
        raise
    relay.attach(sink)
    raise TaskPending(
        f"the call was still running after {timeout}s ({time.monotonic() - started:.1f}s); it goes on as task "
        f"{task_id}",
        hint=f"poll it: await llm_call.tasks.wait_result({task_id!r}) or `llm-call tasks wait {task_id}`",
        task_id=task_id,
    )


async def run_with_mode(request: Request, opts: CallOptions) -> Response | TaskHandle:
    """The ``mode`` layer of acall (``direct`` never comes here); see the module docstring."""
    if opts.mode == "background":
        return await _background(request, opts)
    if opts.mode != "auto":
        raise UsageError(f"mode must be 'direct', 'background' or 'auto', not {opts.mode!r}")
    if is_long_running(request, opts):
        try:
            return await _background(request.replace(timeout=None), opts)
        except UsageError as exc:
            _log.debug("auto mode: long-running call cannot become a task (%s); running it directly", exc)
            return await _direct(request, opts, opts.progress)
    if request.timeout is None:
        return await _direct(request, opts, opts.progress)
    return await _direct_with_handoff(request.replace(timeout=None), opts, request.timeout)
