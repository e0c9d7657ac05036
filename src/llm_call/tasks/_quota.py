"""Scheduling ``max/*`` tasks on the Claude subscription's quota (the ``[claude]`` settings).

The quota state itself is read and kept by :mod:`llm_call.providers.claude_quota` (every
``rate_limit_event`` of the CLI, shared through the task store). The task manager acts on it:

- **Claims.** With ``on_quota_exhausted = "wait"``, while the account's quota blocks calls (a
  window ``rejected`` until its reset, or only overage left with ``allow_overage = false``) the
  dispatcher claims no ``max/*`` task: they stay ``queued`` (while only a window of one model
  family, ``seven_day_opus``, is used up: only the routes of that family, ``max/*opus*``). With
  ``"fallback"`` or ``"fail"`` nothing is held: each task is claimed and falls back or fails at
  once, as its policy says. Above ``slowdown_at`` a worker runs at most ``slowdown_concurrency``
  of them.
- **A task that meets a used-up window** (:class:`~llm_call.errors.QuotaExhausted`, from the
  provider's check before the call or from the subscription's 429) follows
  ``on_quota_exhausted``:

  - ``"wait"``: the task goes back to the queue (``queued``; the store's
    :class:`~llm_call.tasks.store.RequeuesWaiting`), releasing its worker slot and route slot.
    Its record shows ``progress.waiting`` (``reason``, ``window``, ``until``: when it may start)
    and its events ``quota_wait`` then ``requeued``. The claims hold (above) keeps every
    ``max/*`` task queued until the reset: the quota state says so, and this manager also holds
    them until the ``until`` it met (a state that does not say "blocked", e.g. overage open but
    refused, would otherwise claim it again at once). Then a worker claims it; its first step
    is a ``quota_resume`` event, and it calls again. The decisions so far travel in the stored
    request (key ``_quota``, removed before the call), so the answer's ``attempts`` still start
    with them. A cancel while it waits ends it ``cancelled`` at once (a queued task), and one
    requested just before the requeue ends it ``cancelled`` there: it never runs again. With a
    store that cannot requeue (or a requeue that failed), the task waits in its worker as
    ``running``, holding its worker slot but no CLI process and no route slot;
  - ``"fallback"``: the call runs on ``quota_fallback`` (``quota_fallback`` event), unless it
    uses options only the CLI has (``mcp_config``, tools ...): then it fails;
  - ``"fail"``: the task fails with the QuotaExhausted (``quota_fail`` event).

  Each decision is also an entry of the answer's ``attempts`` (``kind="quota_wait"`` or
  ``"quota_fallback"``, ``number=0``: no answer attempt, with the error that caused it).

A direct call (``mode="direct"``) is never held: it raises QuotaExhausted at once (with
``retry_after``), or goes to its own ``fallbacks=``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from ..errors import LLMCallError, QuotaExhausted, TaskStoreError, error_to_dict
from ..providers.base import CLAUDE_ONLY_OPTIONS
from ..providers.claude_quota import MODEL_WINDOWS, QUOTA, MetaStore, block_of, slow
from ..types import Attempt, Response
from .store import RequeuesWaiting, TaskStore

if TYPE_CHECKING:
    from ..config import ClaudeConfig
    from ._progress_sink import RunningTask

__all__ = ["CARRIED", "MAX_ROUTES", "QuotaScheduler", "Requeued"]

_log = logging.getLogger("llm_call.tasks")

#: the routes the quota governs (claim globs)
MAX_ROUTES = ("max", "max/*")
_MIN_WAIT_S = 0.5  # a reset already past (clock skew): look again shortly, never spin
_REFRESH_S = 2.0

#: the stored request's key that carries the quota decisions across a requeue
CARRIED = "_quota"

Note = Callable[[str, dict[str, Any]], None]
#: ``requeue(spec_to_store, event_data)``: True when the task left this worker (queued or cancelled)
Requeue = Callable[[dict[str, Any], dict[str, Any]], Awaitable[bool]]


class Requeued(Exception):  # a signal, not an error
    """The task went back to the queue to wait for the quota (or ended cancelled there): its
    worker records no outcome. Never leaves the task executor."""


def is_max_route(route: str) -> bool:
    return route == "max" or route.startswith("max/")


class QuotaScheduler:
    """The quota decisions of one task manager; see the module docstring."""

    def __init__(self) -> None:
        self.cfg: ClaudeConfig | None = None  # set by start(): inactive until then
        self._store: MetaStore | None = None
        self._requeues: tuple[TaskStore, RequeuesWaiting] | None = None
        self._refreshed = float("-inf")
        # waits this manager decided: hold max/* claims (of one model family, or None: all) until then
        self._hold_until: dict[str | None, float] = {}

    @property
    def active(self) -> bool:
        return self.cfg is not None

    async def start(self, cfg: ClaudeConfig, store: object) -> None:
        """Act on ``cfg``; share quota state through ``store`` (if it can hold it) and read what
        other processes stored there."""
        self.cfg = cfg
        self._requeues = (cast(TaskStore, store), store) if isinstance(store, RequeuesWaiting) else None
        if hasattr(store, "put_meta") and hasattr(store, "read_meta"):
            self._store = store  # type: ignore[assignment]
            QUOTA.attach(store)  # type: ignore[arg-type]
            await self.refresh()

    async def observe(self, cfg: ClaudeConfig, store: object) -> None:
        """Read only: know ``cfg`` and what the processes sharing ``store`` learnt about the
        quota, so that a manager which runs nothing (``llm-call tasks list``) shows why queued
        ``max/*`` tasks wait, as the executing ones do. Nothing is written to the store."""
        if self.cfg is None:
            self.cfg = cfg
            if hasattr(store, "read_meta"):
                self._store = store  # type: ignore[assignment]
        await self.refresh()

    def detach(self) -> None:
        if self._store is not None:
            QUOTA.detach(self._store)
            self._store = None

    async def refresh(self) -> None:
        """Read what other processes learnt about the quota (housekeeping; at most every 2 s)."""
        now = time.monotonic()
        if self._store is None or now - self._refreshed < _REFRESH_S:
            return
        self._refreshed = now
        try:
            await QUOTA.refresh(self._store)
        except LLMCallError as exc:  # keep scheduling on what this process knows
            _log.warning("reading the Claude quota from the task store failed: %s", exc)

    # -- claims ------------------------------------------------------------------------------

    async def hold(self) -> list[str]:
        """Route globs not to claim now: the ``max/*`` routes while the quota blocks calls (after
        reading what other processes stored, at most every 2 s)."""
        await self.refresh()
        return self.held()

    def held(self) -> list[str]:
        """:meth:`hold` from the state known in this process."""
        cfg = self.cfg
        if cfg is None or cfg.on_quota_exhausted != "wait":
            return []  # "fallback" and "fail" act on each task at once: holding them would make them wait
        now = time.time()
        state = QUOTA.get(cfg.account)
        if now < self._hold_until.get(None, 0.0) or block_of(state, allow_overage=cfg.allow_overage, model=""):
            return list(MAX_ROUTES)
        held: list[str] = []
        for family in dict.fromkeys(MODEL_WINDOWS.values()):  # a window of one model family: its routes
            if now < self._hold_until.get(family, 0.0) or block_of(state, allow_overage=cfg.allow_overage, model=family):
                # either case, in fnmatch and SQLite GLOB alike, as block_of compares model names
                held.append("max/*" + "".join(f"[{c.lower()}{c.upper()}]" for c in family) + "*")
                if family in cfg.default_model.lower():
                    held.append("max")
        return held

    def waiting_of(self, route: str) -> dict[str, Any] | None:
        """Why a queued task of ``route`` is not claimed now, as ``progress.waiting`` shows it
        (``reason``, ``window``, ``until``), or None when nothing holds it."""
        cfg = self.cfg
        if cfg is None or not is_max_route(route) or not any(fnmatch.fnmatchcase(route, g) for g in self.held()):
            return None
        model = route.split("/", 1)[1] if "/" in route else cfg.default_model
        block = block_of(QUOTA.get(cfg.account), allow_overage=cfg.allow_overage, model=model)
        if block is not None:
            window: str | None = block.window
            until = block.until
        else:  # held by a wait this manager decided
            scopes = [None, *(f for f in MODEL_WINDOWS.values() if f in model.lower())]
            window, until = None, max(self._hold_until.get(f, 0.0) for f in scopes)
        reason = f"Claude subscription quota: the {window or 'usage'} window is used up (held in the queue)"
        return {"reason": reason, "window": window, "until": until}

    def may_start_now(self, route: str) -> bool:
        """Whether a new task of ``route`` may skip the dispatcher (not while the quota holds
        or slows ``max/*``)."""
        cfg = self.cfg
        if cfg is None or not is_max_route(route):
            return True
        held = self.held()
        return not any(fnmatch.fnmatchcase(route, g) for g in held) and slow(QUOTA.get(cfg.account), cfg.slowdown_at) is None

    def cap(self, pattern: str, running: int, room: int, hold: list[str]) -> int:
        """How many tasks of the route-limit ``pattern`` may start, of ``room``: none of a
        ``max/*`` pattern while held, at most ``slowdown_concurrency`` running above ``slowdown_at``."""
        cfg = self.cfg
        if cfg is None or room <= 0 or not any(fnmatch.fnmatchcase(pattern, g) for g in MAX_ROUTES):
            return room
        if set(MAX_ROUTES) <= set(hold):
            return 0  # (a hold of one model family's routes is excluded from the claim instead)
        if slow(QUOTA.get(cfg.account), cfg.slowdown_at) is None:
            return room
        return min(room, cfg.slowdown_concurrency - running)

    # -- a task that meets a used-up window ---------------------------------------------------

    def requeuer(self, worker_id: str, run: RunningTask) -> Requeue | None:
        """How ``run`` goes back to the queue to wait (None: the store cannot; it waits here)."""
        if self._requeues is None:
            return None
        store, requeues = self._requeues

        async def requeue(spec: dict[str, Any], data: dict[str, Any]) -> bool:
            events, run.events = run.events, []  # stored before the requeued event, in order
            try:
                await store.append_events(events, {run.id: dict(run.progress)})
            except TaskStoreError:
                run.events[:0] = events
                _log.warning("task %s: storing its quota wait failed; it waits in its worker", run.id, exc_info=True)
                return False
            try:
                status = await requeues.requeue(run.id, worker_id, request=spec, data=data)
            except TaskStoreError:
                _log.warning("task %s: requeueing it for the quota failed; it waits in its worker", run.id, exc_info=True)
                return False
            if status is None:
                _log.warning("task %s: not requeued for the quota: this worker no longer runs it", run.id)
            return True

        return requeue

    async def run(
        self,
        spec: dict[str, Any],
        call: Callable[[dict[str, Any]], Awaitable[Response]],
        note: Note,
        progress: dict[str, Any],
        requeue: Requeue | None = None,
    ) -> Response:
        """``call(spec)``, applying ``on_quota_exhausted`` when it raises QuotaExhausted;
        ``progress`` (the task's) shows ``waiting`` while it waits. With ``requeue`` a wait puts
        the task back in the queue (raises :class:`Requeued`), else it waits here."""
        decisions: list[Attempt] = []
        carried = spec.get(CARRIED)
        if carried is not None:  # claimed again after a wait in the queue
            spec = {k: v for k, v in spec.items() if k != CARRIED}
            decisions = [Attempt.from_dict(a) for a in carried.get("attempts") or ()]
            waited = carried.get("waiting")
            if waited:
                progress["waiting"] = None
                note("quota_resume", {"model": str(spec.get("model") or ""), "window": waited.get("window")})
        while True:
            try:
                response = await call(spec)
            except QuotaExhausted as exc:
                spec = await self._decide(spec, exc, note, decisions, progress, requeue)
                continue
            if decisions:
                response.attempts[:0] = decisions
            return response

    async def _decide(
        self,
        spec: dict[str, Any],
        exc: QuotaExhausted,
        note: Note,
        decisions: list[Attempt],
        progress: dict[str, Any],
        requeue: Requeue | None,
    ) -> dict[str, Any]:
        assert self.cfg is not None
        model = str(spec.get("model") or "")
        policy = self.cfg.on_quota_exhausted
        info = {"model": model, "window": exc.window, "until": exc.resets_at, "retry_after": exc.retry_after}
        if policy == "fallback":
            target = self.cfg.quota_fallback
            claude_only = sorted(k for k in CLAUDE_ONLY_OPTIONS if spec.get(k) is not None)
            if target and not claude_only and model != target:
                note("quota_fallback", {**info, "to_model": target})
                decisions.append(self._attempt("quota_fallback", model, exc))
                return {**spec, "model": target}
            why = "claude.quota_fallback is not set" if not target else f"the call uses {claude_only}, which only max/* has"
            note("quota_fail", {**info, "reason": f"no fallback: {why}"})
            raise exc
        if policy == "fail":
            note("quota_fail", {**info, "reason": "claude.on_quota_exhausted = fail"})
            raise exc
        until = exc.resets_at if exc.resets_at is not None else time.time() + (exc.retry_after or 60.0)
        reason = f"Claude subscription quota: the {exc.window or 'usage'} window is used up"
        waiting = {"reason": reason, "window": exc.window, "until": until}
        progress["waiting"] = waiting
        note("quota_wait", {**info, "until": until, "reason": reason})
        decisions.append(self._attempt("quota_wait", model, exc))
        scope = MODEL_WINDOWS.get(exc.window or "")
        self._hold_until[scope] = max(self._hold_until.get(scope, 0.0), until, time.time() + _MIN_WAIT_S)
        _log.info("task waits for the Claude quota (%s window) until %s", exc.window, time.ctime(until))
        if requeue is not None:
            carry = {"attempts": [a.to_dict() for a in decisions], "waiting": waiting}
            if await requeue({**spec, CARRIED: carry}, {"reason": "quota_wait", "window": exc.window, "until": until}):
                raise Requeued
        await asyncio.sleep(max(until - time.time(), _MIN_WAIT_S))
        progress["waiting"] = None
        note("quota_resume", {"model": model, "window": exc.window})
        return spec

    @staticmethod
    def _attempt(kind: str, model: str, exc: QuotaExhausted) -> Attempt:
        return Attempt(number=0, model=model, kind=kind, error=error_to_dict(exc))
