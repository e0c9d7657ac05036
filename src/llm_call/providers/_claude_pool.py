"""The warm pool of Claude Code CLI processes (``max/*``): bookkeeping, with no SDK import.

A pooled process is started with the options that are fixed per process (model, system
prompt, tools, MCP servers, permission mode, environment ...) and serves one call after
another: a call sends its conversation as a stream-json user message, reads until the
``result`` line, and the process is reset with ``/clear`` before it goes back to the pool
(:mod:`._claude_worker` drives one process). Processes are keyed by a digest of those options
and of the environment the CLI inherits, so a call only ever lands on a process started
exactly as a fresh one would be.

Replacement rules (``replaced`` counts them by reason): after ``claude.pool_max_calls`` calls
(``max_calls``), after ``claude.pool_idle_ttl`` seconds idle (``idle``), when its memory is over
``claude.pool_max_rss_mb`` after a call (``memory``), after an error result, a watchdog, a
cancelled call or a failed reset (``error``, ``watchdog``, ``cancelled``, ``reset_failed``),
when it died while idle or before it took a call's message (``died``: the call then runs on
another process), and to make room for another key (``evicted``). At most
``claude.pool_size`` processes are kept; a call that finds them all busy gets a process of its
own that is stopped afterwards (``overflow``). :func:`pool_state` sums every live pool for the
server (``GET /v1/claude/pool``, ``/metrics``).

One pool per event loop: a process's pipes belong to the loop that started it. At interpreter
exit every pool still open is killed (:meth:`ClaudePool.kill_now`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import logging
import os
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import ClaudeConfig

__all__ = ["ClaudePool", "PoolWorker", "pool_key", "pool_state"]

_log = logging.getLogger("llm_call.providers.claude_cli")

#: reasons a process leaves the pool that call for a warm replacement
_REWARM = frozenset({"max_calls", "memory", "error", "watchdog", "cancelled", "reset_failed", "died"})


class PoolWorker(Protocol):
    """One pooled CLI process, as the pool sees it (:class:`._claude_worker.PooledCLI`)."""

    key: str
    calls: int
    last_used: float

    @property
    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...

    def rss_mb(self) -> float: ...

    async def stop(self) -> None: ...

    def kill_now(self) -> None: ...


Spawn = Callable[[str, dict[str, Any]], Awaitable[PoolWorker]]


def pool_key(sdk_options: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    """A digest of everything fixed at a CLI process's start: its options and environment."""
    env = dict(os.environ if environ is None else environ)
    blob = json.dumps({"options": sdk_options, "env": sorted(env.items())}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


_pools: weakref.WeakSet[ClaudePool] = weakref.WeakSet()


@atexit.register
def _kill_pools_at_exit() -> None:
    """A program that ends without closing the providers (``asyncio.run`` returned, as in
    ``llm-call worker`` or a script) leaves no pooled process or workspace behind."""
    for pool in list(_pools):
        pool.kill_now()


def pool_state() -> dict[str, Any]:
    """The state of every live pool in this process, summed (a plain dict, JSON-ready).

    ``processes``, ``idle``, ``busy``: pooled processes now; ``started``: processes started for
    pooled calls so far; ``replaced`` (and ``replaced_by_reason``): processes stopped other than
    at shutdown; ``calls``: calls served by pooled processes; ``rss_mb``: their memory now.
    """
    total: dict[str, Any] = {
        "pools": 0, "processes": 0, "idle": 0, "busy": 0, "started": 0, "replaced": 0, "calls": 0, "rss_mb": 0.0,
        "size_limit": 0,
    }
    reasons: Counter[str] = Counter()
    for pool in list(_pools):
        s = pool.state()
        total["pools"] += 1
        for k in ("processes", "idle", "busy", "started", "replaced", "calls", "rss_mb"):
            total[k] += s[k]
        total["size_limit"] = max(total["size_limit"], s["size_limit"])
        reasons.update(s["replaced_by_reason"])
    total["rss_mb"] = round(total["rss_mb"], 1)
    total["replaced_by_reason"] = dict(reasons)
    return total


class ClaudePool:
    """Warm CLI processes of one event loop, by key. See the module docstring."""

    def __init__(self, cfg: ClaudeConfig, spawn: Spawn) -> None:
        self._cfg = cfg
        self._spawn = spawn
        self._idle: dict[str, list[PoolWorker]] = {}
        self._busy: set[PoolWorker] = set()
        self._resetting: Counter[str] = Counter()  # key -> processes being reset after a call
        self._returned = asyncio.Condition()
        self._options: dict[str, dict[str, Any]] = {}  # key -> options, for warm replacements
        self._background: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.started = 0
        self.calls = 0
        self.replaced: Counter[str] = Counter()
        self.closed = False
        _pools.add(self)

    # -- state ----------------------------------------------------------------------------

    def _all(self) -> list[PoolWorker]:
        return [w for ws in self._idle.values() for w in ws] + list(self._busy)

    def state(self) -> dict[str, Any]:
        idle = sum(len(ws) for ws in self._idle.values())
        return {
            "size_limit": self._cfg.pool_size,
            "processes": idle + len(self._busy),
            "idle": idle,
            "busy": len(self._busy),
            "started": self.started,
            "replaced": sum(self.replaced.values()),
            "replaced_by_reason": dict(self.replaced),
            "calls": self.calls,
            "rss_mb": sum(w.rss_mb() for w in self._all()),
        }

    # -- taking and giving back -----------------------------------------------------------

    async def acquire(self, key: str, sdk_options: dict[str, Any]) -> PoolWorker:
        """A warm process for ``key`` (or a newly started one), marked busy."""
        if self.closed:
            raise RuntimeError("the Claude CLI pool is closed")
        self._options[key] = sdk_options
        await self._expire()
        idle = self._idle.get(key, [])
        while True:
            while idle:
                worker = idle.pop()
                if worker.alive():
                    self._busy.add(worker)
                    return worker
                await self._retire(worker, "died")
            if not self._resetting[key]:
                break
            # a process of this key is being reset after its call (tens of ms): wait for it
            # rather than start another one
            async with self._returned:
                await self._returned.wait()
            idle = self._idle.get(key, [])
        if len(self._all()) >= self._cfg.pool_size:
            victim = self._oldest_idle()
            if victim is not None:
                self._idle[victim.key].remove(victim)
                await self._retire(victim, "evicted")
        worker = await self._spawn(key, sdk_options)
        self.started += 1
        self._busy.add(worker)
        self._ensure_reaper()
        return worker

    def _oldest_idle(self) -> PoolWorker | None:
        idle = [w for ws in self._idle.values() for w in ws]
        return min(idle, key=lambda w: w.last_used) if idle else None

    async def give_back(self, worker: PoolWorker) -> None:
        """A call ended well and the process was reset: keep it warm, or replace it."""
        self._busy.discard(worker)
        self.calls += 1
        worker.last_used = self.loop.time()
        reason = None
        if self.closed:
            reason = "shutdown"
        elif not worker.alive():
            reason = "died"
        elif worker.calls >= self._cfg.pool_max_calls:
            reason = "max_calls"
        elif worker.rss_mb() > self._cfg.pool_max_rss_mb:
            reason = "memory"
        elif len(self._all()) >= self._cfg.pool_size:
            reason = "overflow"
        if reason is None:
            self._idle.setdefault(worker.key, []).append(worker)
            return
        await self._retire(worker, reason)

    async def discard(self, worker: PoolWorker, reason: str, *, served: bool = False) -> None:
        """Stop a process that may not serve another call (error, watchdog, cancellation)."""
        self._busy.discard(worker)
        if served:
            self.calls += 1
        await self._retire(worker, "shutdown" if self.closed else reason)

    async def _retire(self, worker: PoolWorker, reason: str) -> None:
        if reason != "shutdown":
            self.replaced[reason] += 1
            _log.debug("Claude CLI pool: replacing process %s (%s)", worker.pid, reason)
        try:
            await worker.stop()
        finally:
            if reason in _REWARM and not self.closed:
                self._rewarm(worker.key)

    def _rewarm(self, key: str) -> None:
        """Start a replacement for ``key`` in the background, so the next call finds it warm."""
        options = self._options.get(key)
        if options is None or len(self._all()) >= self._cfg.pool_size:
            return
        self.run_background(self._warm(key, options))

    async def _warm(self, key: str, options: dict[str, Any]) -> None:
        try:
            worker = await self._spawn(key, options)
        except Exception:
            _log.warning("Claude CLI pool: could not start a replacement process", exc_info=True)
            return
        self.started += 1
        if self.closed or len(self._all()) >= self._cfg.pool_size:
            await worker.stop()
            return
        worker.last_used = self.loop.time()
        self._idle.setdefault(key, []).append(worker)
        self._ensure_reaper()

    def reset_then_return(self, worker: PoolWorker, reset: Callable[[], Awaitable[bool]]) -> None:
        """After a good call: reset the process in the background, then keep or replace it.

        Until the reset is done the process counts as busy, and a call for the same key waits
        for it instead of starting another process.
        """
        self._resetting[worker.key] += 1

        async def run() -> None:
            try:
                ok = await reset()
                if ok:
                    await self.give_back(worker)
                else:
                    await self.discard(worker, "reset_failed", served=True)
            finally:
                self._resetting[worker.key] -= 1
                async with self._returned:
                    self._returned.notify_all()

        self.run_background(run())

    def run_background(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` (a reset, a replacement) as a task that :meth:`aclose` waits for."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- idle expiry ----------------------------------------------------------------------

    async def _expire(self) -> None:
        limit = self.loop.time() - self._cfg.pool_idle_ttl
        for workers in list(self._idle.values()):
            for worker in [w for w in workers if w.last_used < limit]:
                workers.remove(worker)
                await self._retire(worker, "idle")

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        while not self.closed and self._all():
            await asyncio.sleep(max(self._cfg.pool_idle_ttl / 4, 0.05))
            try:
                await self._expire()
            except Exception:
                _log.warning("Claude CLI pool: stopping idle processes failed", exc_info=True)

    # -- shutdown -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop every process (idle and busy) and wait for background work; leaves no orphan."""
        self.closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        workers = self._all()
        self._idle.clear()
        self._busy.clear()
        results = await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                _log.warning("Claude CLI pool: stopping a process failed: %r", result)
        if self._reaper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        _pools.discard(self)

    def kill_now(self) -> None:
        """SIGKILL every process at once (from another loop or thread, or at exit)."""
        self.closed = True
        for worker in self._all():
            worker.kill_now()
        _pools.discard(self)
