"""The task executor's progress sink: events and progress of running tasks, batched into the store.

A mixin of :class:`~llm_call.tasks._executor.TaskExecutor` (split out to keep each module under
600 lines); it uses the executor's state and helpers, declared below for the type checker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._progress import ProgressListener
from ..errors import TaskStoreError
from ._spec import jsonable
from .store import EventIn, TaskStore

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ..types import TaskRecord

__all__ = ["ProgressSink", "RunningTask"]

_log = logging.getLogger("llm_call.tasks")

_CHUNK_EVERY_S = 0.5


#: progress events after which the text that comes belongs to a new answer
_NEW_ANSWER = frozenset({"attempt", "retry_wait", "fallback", "escalated", "quota_fallback"})


@dataclass(eq=False, slots=True)
class RunningTask:
    """A task executing in this manager."""

    id: str
    route: str
    patterns: tuple[str, ...]
    listeners: list[ProgressListener] | tuple[()] = ()
    work: asyncio.Task[Any] | None = None  # what cancel() cancels
    settler: asyncio.Task[None] | None = None  # records the outcome
    cancel_requested: bool = False
    begun: bool = False  # the settler has taken its first step (a Task cancelled before it never does)
    progress: dict[str, Any] = field(default_factory=dict)
    chars: int = 0
    last_chunk_at: float = 0.0
    rec: TaskRecord | None = None  # the claimed record (the final one is built from it)
    events: list[EventIn] = field(default_factory=list)  # progress events not sent to the store yet


class ProgressSink:
    """Progress events of running tasks: listeners first, then the store in batches."""

    _running: dict[str, RunningTask]
    _pending: list[EventIn]
    _dirty: set[str]
    _flush_handle: asyncio.Handle | None
    _events_lost: bool

    if TYPE_CHECKING:

        @property
        def store(self) -> TaskStore: ...

        def _spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]: ...

        def _touch(self, task_id: str, *, final: bool = False) -> None: ...

    def _sink(self, run: RunningTask) -> ProgressListener:
        return functools.partial(self._on_event, run)

    def _call_listeners(self, run: RunningTask, kind: str, data: dict[str, Any]) -> None:
        for listener in run.listeners:
            try:
                listener(kind, data)
            except Exception:
                _log.exception("progress callback failed on %s event; ignoring", kind)

    def _on_event(self, run: RunningTask, kind: str, data: dict[str, Any]) -> None:
        now = time.time()
        self._call_listeners(run, kind, data)
        prog = run.progress
        prog["last"] = kind
        prog["at"] = now
        if kind in _NEW_ANSWER and run.chars:
            # the next text is a new answer (validation retry, transient retry, other model):
            # progress counts what the answer being made has received, not every call's text
            run.chars = 0
            prog["chars"] = 0
        if kind == "attempt":
            prog["attempt"] = data.get("number", int(prog.get("attempt") or 0) + 1)
            prog["model"] = data.get("model")
        elif kind in ("escalated", "fallback", "quota_fallback"):
            prog["model"] = data.get("to_model")
        elif kind == "chunk":
            text = data.get("text")
            run.chars = int(data["chars"]) if "chars" in data else run.chars + (len(text) if isinstance(text, str) else 0)
            prog["chars"] = run.chars
            if "tokens" in data:
                prog["tokens"] = data["tokens"]
            self._dirty.add(run.id)
            if now - run.last_chunk_at < _CHUNK_EVERY_S:
                return  # throttled: the record's progress still gets the totals
            run.last_chunk_at = now
            data = {k: v for k, v in prog.items() if k in ("chars", "tokens")}
        if run.id not in self._running:
            return
        run.events.append(EventIn(run.id, kind, jsonable(data), now))
        self._dirty.add(run.id)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            # at once (in store order with what other processes write, e.g. a cancel request);
            # what is still pending when the task ends goes with its outcome
            self._flush_handle = asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        self._spawn(self._flush_events())

    async def _flush_events(self) -> bool:
        """Store the pending events and progress; False if that failed (they are lost)."""
        events, self._pending = self._pending, []
        dirty, self._dirty = self._dirty, set()
        progress = {}
        for tid in dirty:
            run = self._running.get(tid)
            if run is not None:
                events.extend(run.events)
                run.events = []
                progress[tid] = dict(run.progress)
        return await self._store_events(events, progress)

    async def _store_events(self, events: list[EventIn], progress: dict[str, dict[str, Any]]) -> bool:
        if not events and not progress:
            return True
        try:
            await self.store.append_events(events, progress)
        except TaskStoreError:
            self._events_lost = True
            _log.exception("storing %d progress event(s) failed; they are lost", len(events))
            return False
        for tid in {e.task_id for e in events}:
            self._touch(tid)
        return True

