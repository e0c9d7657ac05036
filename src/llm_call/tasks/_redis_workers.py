"""The Redis task store's worker registry, recovery, retention and engine views.

A mixin of :class:`~llm_call.tasks.redis_store.RedisTaskStore` (split out to keep each module
under 600 lines); it uses the store's connection helpers (``_io``, ``_run``, ``_lanes``,
``_queue``), declared below for the type checker.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from ..errors import TaskInterrupted, TaskStoreError
from ._json import dumps
from ._redis_codec import CANCELLED, error_template
from .store import RecoveryReport, WorkerInfo, pid_alive

__all__ = ["BACKSTOP", "RedisWorkers"]

_PRUNE_BATCH = 1000
BACKSTOP = 3  # the registry declares a silent worker dead after this many times stale_after


class RedisWorkers:
    """Workers, recovery and retention of the Redis task store (see ``redis_store``)."""

    prefix: str
    host: str
    _machine: str
    url: str
    _opts: dict[str, str]
    _errors: tuple[type[BaseException], ...]

    if TYPE_CHECKING:

        def _io(self, what: str) -> AbstractAsyncContextManager[Any]: ...

        async def _run(self, script: str, *args: Any) -> Any: ...

        @property
        def _lease_ms(self) -> int: ...

        async def _lanes(self) -> dict[str, dict[str, Any]]: ...

        def _queue(self, lane: str) -> Any: ...

    # -- workers, recovery, retention ---------------------------------------------------------------

    async def heartbeat(self, worker: WorkerInfo) -> None:
        worker.heartbeat_at = time.time()
        if "host" in self._opts:
            worker.host = self._machine  # the host name given in the URL is this worker's host
        async with self._io("heartbeat") as r:
            pipe = r.pipeline(transaction=True)
            pipe.hset(f"{self.prefix}:workers", worker.id, dumps(worker.to_dict()))
            pipe.zadd(f"{self.prefix}:workers:hb", {worker.id: worker.heartbeat_at})
            await pipe.execute()
        await self._run("touch", worker.id, self._lease_ms)

    async def remove_worker(self, worker_id: str) -> None:
        async with self._io("remove worker") as r:
            pipe = r.pipeline(transaction=True)
            pipe.hdel(f"{self.prefix}:workers", worker_id)
            pipe.zrem(f"{self.prefix}:workers:hb", worker_id)
            await pipe.execute()

    async def put_meta(self, key: str, value: dict[str, Any]) -> None:
        """Shared state every process sees (the Claude quota): one hash field per key."""
        async with self._io("put meta") as r:
            await r.hset(f"{self.prefix}:meta", key, dumps(value))

    async def read_meta(self, prefix: str) -> dict[str, dict[str, Any]]:
        async with self._io("read meta") as r:
            raw = await r.hgetall(f"{self.prefix}:meta")
        return {k: json.loads(v) for k, v in raw.items() if k.startswith(prefix)}

    async def _registry(self) -> list[WorkerInfo]:
        async with self._io("workers") as r:
            raw = await r.hgetall(f"{self.prefix}:workers")
            beats = dict(await r.zrange(f"{self.prefix}:workers:hb", 0, -1, withscores=True))
        found = []
        for wid, text in raw.items():
            info = WorkerInfo(**json.loads(text))
            info.heartbeat_at = float(beats.get(wid, 0.0))
            found.append(info)
        return sorted(found, key=lambda w: w.started_at)

    def _alive(self, w: WorkerInfo, within: float, now: float) -> bool:
        return now - w.heartbeat_at <= within and (w.host != self._machine or pid_alive(w.pid))

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        now = time.time()
        return [w for w in await self._registry() if self._alive(w, alive_within, now)]

    async def recover(
        self, *, max_executions: int, stale_after: float, adopter: str | None = None
    ) -> RecoveryReport:
        report = RecoveryReport()
        interrupted = error_template(
            TaskInterrupted,
            f"task {{id}}: the process running it died (max_executions={max_executions}); "
            "its input is kept, re-submit it to run it again",
        )

        def note(task_id: str, outcome: str) -> None:
            if outcome == "requeued":
                report.requeued.append(task_id)
            elif outcome == "interrupted":
                report.interrupted.append(task_id)
            elif outcome == "cancelled":
                report.cancelled.append(task_id)

        # 1. the engine: SAQ's sweep re-queues (or aborts) jobs whose heartbeat went stale
        for lane in await self._lanes():
            queue = self._queue(lane)
            try:
                swept = await queue.sweep(lock=max(1, int(stale_after / 3)), abort=0.01)
            except self._errors as exc:
                raise TaskStoreError(f"task store {self.url}: sweep of {lane}: {exc}") from None
            prefix = f"saq:job:{lane}:"
            for job_id in swept:
                task_id = job_id[len(prefix):] if job_id.startswith(prefix) else job_id
                note(task_id, await self._run(
                    "settle", task_id, "swept", lane, max_executions, adopter or "", interrupted, CANCELLED, ""
                ))
        # 2. the registry, the backstop: a worker whose process is gone from this host is dead now;
        # one silent for BACKSTOP x stale_after is dead too (by then SAQ's sweep has normally
        # re-queued its jobs). Running tasks are read first: a worker registers before it claims,
        # so the registry read after knows every worker of those tasks; the script checks the
        # silence again, atomically.
        async with self._io("recover") as r:
            running = await r.zrange(f"{self.prefix}:s:running", 0, -1)
            pipe = r.pipeline(transaction=False)
            for task_id in running:
                pipe.hget(f"{self.prefix}:t:{task_id}", "worker")
            owners = await pipe.execute()
        now = time.time()
        registry = await self._registry()
        alive = {w.id for w in registry if self._alive(w, stale_after, now)}
        gone = {w.id for w in registry if w.host == self._machine and not pid_alive(w.pid)}
        silent = BACKSTOP * stale_after
        dead = gone | {w.id for w in registry if now - w.heartbeat_at > silent}
        known = {w.id for w in registry}
        report.dead_workers = sorted(dead)
        for task_id, worker in zip(running, owners, strict=True):
            if worker is not None and (worker in dead or worker not in known):
                note(task_id, await self._run(
                    "settle", task_id, "dead", worker, max_executions, adopter or "", interrupted, CANCELLED,
                    "" if worker in gone else repr(silent),
                ))
        # 3. queued tasks reserved for a dead owner go to the adopter (or to any worker)
        gone_owners = {str(m.get("owner")) for m in (await self._lanes()).values() if m.get("owner")}
        for owner in sorted(gone_owners - alive - {adopter or ""}):
            report.reassigned += list(await self._run("move_owner", owner, adopter or ""))
        if report.dead_workers:
            async with self._io("recover") as r:
                pipe = r.pipeline(transaction=True)
                pipe.hdel(f"{self.prefix}:workers", *report.dead_workers)
                pipe.zrem(f"{self.prefix}:workers:hb", *report.dead_workers)
                pipe.delete(*(f"{self.prefix}:w:{w}:run" for w in report.dead_workers))
                await pipe.execute()
        return report

    async def _prune(self, older_than: float, *, delete: bool) -> int:
        total = 0
        while True:
            n = int(await self._run("prune", repr(older_than), "1" if delete else "0", _PRUNE_BATCH))
            total += n
            if n < _PRUNE_BATCH:
                return total

    async def cleanup(self, older_than: float) -> int:
        return await self._prune(older_than, delete=True)

    # -- engine views (diagnostics, benchmarks) --------------------------------------------------

    async def queue_info(self) -> dict[str, dict[str, Any]]:
        """SAQ's ``Queue.info()`` per lane: workers, queued, active (for ``llm-call doctor``, docs)."""
        out = {}
        for lane in await self._lanes():
            try:
                out[lane] = await self._queue(lane).info()
            except self._errors as exc:
                raise TaskStoreError(f"task store {self.url}: info of {lane}: {exc}") from None
        return out
