"""The distributed task store: tasks are SAQ jobs in Redis, run by workers on any number of hosts.

Selected by a ``redis://`` (or ``rediss://``, ``unix://``) location wherever a task store is
chosen: ``--tasks redis://HOST:PORT/DB`` on ``serve``, ``ask --background``, ``tasks ...`` and
``worker``, ``LLM_CALL_TASKS`` or ``settings.tasks.store``. The manager, server and CLI see only
the :class:`~llm_call.tasks.store.TaskStore` protocol, so they work unchanged on either backend.

What lives where (nothing is cached in the process, so nothing can go stale):

- each task is a SAQ job (``saq.Job``; key = task id) in a SAQ queue per (priority, owner, route),
  next to a record hash and an events list; transitions are atomic scripts (see ``_saq.py``);
- **liveness** is SAQ's: every job carries ``heartbeat`` seconds; the worker's heartbeat touches
  the jobs it runs; :meth:`recover` runs SAQ's ``Queue.sweep``, which aborts and re-queues jobs
  whose heartbeat went stale (a worker killed with ``kill -9``), then settles their records
  (``requeued``, or ``interrupted`` after ``max_executions``). A worker registry (heartbeat zset)
  adds the protocol's view: workers, dead owners' queued tasks, processes gone on this host;
- **exactly one final state**: ``finish`` is fenced on the worker id in the same script that
  finishes the SAQ job, so a swept worker that comes back cannot overwrite the new execution;
- **route limits across hosts**: a claim takes a lease in a Redis semaphore per matching pattern,
  per host (``host_limits``, default ``settings.tasks.route_limits``, e.g. ``max/*=4``) and
  cluster-wide (``global_limits``); leases are renewed by heartbeats and expire with a dead worker;
- **progress events** are appended to a Redis list (and published on ``{prefix}:ev:{id}``), so
  ``/v1/tasks/{id}/events`` on any server reads what a worker on any host reported;
- **cancel** sets a flag and publishes on ``{prefix}:cancel:{worker}``, which the worker running
  the task is subscribed to (the flag is still polled every ``tasks.fallback_poll_s``, in case a
  notice was lost); followers subscribe to ``{prefix}:ev:{id}`` the same way; the worker cancels the asyncio task, which closes the HTTP call
  or kills the Claude process;
- **expiry**: final records, events, idempotency keys and SAQ jobs expire after
  ``settings.tasks.retention_s`` (Redis TTLs); indexes are pruned by :meth:`cleanup`.

URL options (query string, removed before connecting): ``prefix`` (default ``llm_call``),
``host_limits`` / ``global_limits`` (``max/*=4,openai/*=200``; empty disables), ``lease_s``,
``job_heartbeat_s``, ``retention_s``, ``host`` (the name for per-host limits), ``max_connections``
(per process and client, default 64; callers beyond it wait for a free connection).

Example::

    store = await open_store("redis://127.0.0.1:6379/0?global_limits=max/*=8")
    rec, created = await store.submit(NewTask(request={...}, route="openai/x"))
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import (
    ConfigError,
    TaskError,
    TaskNotFound,
    TaskStoreError,
)
from ..types import TaskEvent, TaskRecord, TaskStatus
from ._json import dumps, loads
from ._redis_codec import CANCELLED, glob_to_lua, parse_limits, record
from ._redis_notices import RedisNotices
from ._redis_workers import RedisWorkers
from ._saq import JOB_FUNCTION, LIB, SCRIPTS, lane_name
from .store import (
    EventIn,
    NewTask,
    Outcome,
    final_event_data,
    machine_name,
    queue_full,
)

__all__ = ["RedisTaskStore", "parse_limits"]

_log = logging.getLogger("llm_call.tasks")

_OPTIONS = (
    "prefix", "host_limits", "global_limits", "lease_s", "job_heartbeat_s", "retention_s", "host", "max_connections"
)
_SAQ_STATUS = {
    TaskStatus.SUCCEEDED: "complete",
    TaskStatus.NEEDS_REVIEW: "complete",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "aborted",
    TaskStatus.INTERRUPTED: "aborted",
}


class RedisTaskStore(RedisWorkers):
    """A :class:`~llm_call.tasks.store.TaskStore` on SAQ + Redis; see the module docstring."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        opts = {k: v for k, v in query if k in _OPTIONS}
        # what logs, /health and error messages show: the URL without its password
        self.url = urlunsplit(parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}")) if parts.password else url
        self._redis_url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in _OPTIONS])))
        self.prefix = opts.get("prefix") or "llm_call"
        if any(c in self.prefix for c in "|:{}") or not self.prefix:
            raise ConfigError(f"task store URL {self.url}: prefix {self.prefix!r} may not contain | : {{ }}")
        self._opts = opts
        self.host = opts.get("host") or socket.gethostname()
        # where a worker's pid can be checked (registered as its host): this host name (the URL's
        # if given) and PID namespace; containers may share a host name, never pids
        self._machine = machine_name(opts.get("host"))
        self.host_limits: dict[str, int] = {}
        self.global_limits: dict[str, int] = parse_limits(opts.get("global_limits", ""), "global_limits")
        self.lease_s = 30.0
        self.job_heartbeat_s = 15
        self.retention_s = 7 * 86400.0
        self.max_executions = 3
        self._r: Any = None  # redis.asyncio.Redis (text)
        self._raw: Any = None  # redis.asyncio.Redis (bytes), for SAQ's queues
        self._scripts: dict[str, Any] = {}
        self._queues: dict[str, Any] = {}
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._pending: list[tuple[str, list[Any], asyncio.Future[Any]]] = []
        self._notices: RedisNotices | None = None
        self._flushes: set[asyncio.Future[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------------------

    def _number(self, name: str, default: float) -> float:
        text = self._opts.get(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ConfigError(f"task store URL {self.url}: {name}={text!r} is not a positive number")
        return value

    async def open(self) -> None:
        if self._r is not None:
            return
        try:
            import redis.asyncio as aioredis
            import redis.exceptions
            import saq  # noqa: F401  (checked now: the scripts keep SAQ's job format)
        except ImportError as exc:
            raise ConfigError(
                f"task store {self.url}: the Redis backend needs saq and redis ({exc})",
                hint="pip install 'llm-call[redis]'",
            ) from None
        from ..config import get_settings

        cfg = get_settings().tasks
        self.host_limits = (
            parse_limits(self._opts["host_limits"], "host_limits") if "host_limits" in self._opts else dict(cfg.route_limits)
        )
        self.retention_s = self._number("retention_s", cfg.retention_s)
        self.max_executions = cfg.max_executions
        self.job_heartbeat_s = max(1, math.ceil(self._number("job_heartbeat_s", 3 * cfg.heartbeat_s)))
        self.lease_s = self._number("lease_s", max(10.0, 6 * cfg.heartbeat_s))
        self._errors = (redis.exceptions.RedisError, OSError)
        try:
            # a bounded pool that waits for a free connection: thousands of concurrent calls in
            # one process share a few dozen connections instead of failing past redis-py's limit
            size = int(self._number("max_connections", 64))
            pool = aioredis.BlockingConnectionPool.from_url(
                self._redis_url, max_connections=size, timeout=30, decode_responses=True
            )
            self._r = aioredis.Redis(connection_pool=pool)
            raw_pool = aioredis.BlockingConnectionPool.from_url(self._redis_url, max_connections=size, timeout=30)
            self._raw = aioredis.Redis(connection_pool=raw_pool)
            info = await self._r.info("server")
        except (ValueError, *self._errors) as exc:
            await self._close_clients()
            raise ConfigError(
                f"task store {self.url}: cannot reach Redis: {type(exc).__name__}: {exc}",
                hint="start redis-server, or fix --tasks / LLM_CALL_TASKS / settings.tasks.store",
            ) from None
        version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
        if version < (6, 2):
            await self._close_clients()
            raise ConfigError(f"task store {self.url}: Redis {info.get('redis_version')} is too old (need >= 6.2)")
        self._scripts = {name: self._r.register_script(LIB + body) for name, body in SCRIPTS.items()}

    async def watch_cancels(self, worker_id: str, on_cancel: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Call ``on_cancel(task_id)`` as soon as a cancel of a task running on ``worker_id`` is requested."""
        return await self._watch(f"{self.prefix}:cancel:{worker_id}", on_cancel)

    async def watch_events(self, task_id: str, on_event: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Call ``on_event(count)`` as soon as an event of ``task_id`` is stored."""
        return await self._watch(f"{self.prefix}:ev:{task_id}", on_event)

    async def _watch(self, channel: str, callback: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        try:
            return await self._notice_hub().watch(channel, callback)
        except self._errors as exc:  # the caller polls instead (TaskStoreError is what it expects)
            raise TaskStoreError(f"task store {self.url}: watch {channel}: {type(exc).__name__}: {exc}") from None

    def _notice_hub(self) -> RedisNotices:
        if self._r is None:
            raise TaskStoreError(f"task store {self.url} is not open")
        if self._notices is None:
            self._notices = RedisNotices(self._r, self.url)
        return self._notices

    async def _close_clients(self) -> None:
        if self._notices is not None:
            await self._notices.close()
            self._notices = None
        for client in (self._r, self._raw):
            if client is not None:
                try:
                    await client.aclose()
                    await client.connection_pool.disconnect()
                except self._errors as exc:  # closing anyway: nothing left to lose
                    _log.warning("task store %s: closing a Redis connection failed: %s", self.url, exc)
        self._r = self._raw = None

    async def close(self) -> None:
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        for queue in self._queues.values():
            try:
                await queue._pubsub.close()  # SAQ's pub/sub multiplexer (used by its sweep)
            except self._errors as exc:
                _log.warning("task store %s: closing SAQ's pub/sub failed: %s", self.url, exc)
        self._queues.clear()
        await self._close_clients()

    # -- plumbing -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _io(self, what: str) -> AsyncIterator[Any]:
        """The text client; Redis failures become TaskStoreError (the manager retries those)."""
        if self._r is None:
            raise TaskStoreError(f"task store {self.url} is not open")
        try:
            yield self._r
        except self._errors as exc:
            raise TaskStoreError(f"task store {self.url}: {what}: {type(exc).__name__}: {exc}") from None

    async def _run(self, script: str, *args: Any) -> Any:
        """Run one script. Calls made in the same turn of the event loop (a gather of submits, the
        finishes of many tasks) go to Redis in one pipeline: one round trip, in call order."""
        if self._r is None:
            raise TaskStoreError(f"task store {self.url} is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, [self.prefix, int(self.retention_s * 1000), *args], fut))
        if len(self._pending) == 1:
            loop.call_soon(self._start_flush)
        return await fut

    def _start_flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            flush = asyncio.ensure_future(self._flush(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[str, list[Any], asyncio.Future[Any]]]) -> None:
        results: list[Any]
        errors: tuple[type[BaseException], ...] = (*self._errors, RuntimeError)  # RuntimeError: closed meanwhile
        try:
            if len(batch) == 1:
                name, args, _ = batch[0]
                results = [await self._scripts[name](keys=[], args=args)]
            else:
                async with self._r.pipeline(transaction=False) as pipe:
                    for name, args, _ in batch:
                        await self._scripts[name](keys=[], args=args, client=pipe)
                    results = await pipe.execute(raise_on_error=False)
        except errors as exc:
            results = [exc] * len(batch)
        for (name, _, fut), got in zip(batch, results, strict=True):
            if fut.done():
                continue  # the caller went away; the write happened (or failed) all the same
            if isinstance(got, BaseException):
                fut.set_exception(TaskStoreError(f"task store {self.url}: {name}: {type(got).__name__}: {got}"))
            else:
                fut.set_result(got)

    @property
    def _lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    def _queue(self, lane: str) -> Any:
        """SAQ's queue object for a lane (a handle on Redis keys: it holds no task state)."""
        queue = self._queues.get(lane)
        if queue is None:
            from saq.queue.redis import RedisQueue

            queue = self._queues[lane] = RedisQueue(self._raw, name=lane)
        return queue

    def _job_json(self, task_id: str, lane: str, status: str) -> str:
        from saq.job import Job, Status

        job = Job(
            function=JOB_FUNCTION,
            kwargs={"task_id": task_id},
            queue=self._queue(lane),
            key=task_id,
            timeout=0,
            heartbeat=self.job_heartbeat_s,
            retries=self.max_executions,
            ttl=max(1, int(self.retention_s)),
            status=Status(status),
            queued=int(time.time() * 1000),
        )
        return str(self._queue(lane).serialize(job))

    def _sems(self, route: str) -> list[tuple[str, int]]:
        """Semaphores a task on ``route`` holds a lease in: per host, then cluster-wide."""
        sems = [
            (f"{self.prefix}:sem:h:{self.host}:{p}", n) for p, n in self.host_limits.items() if fnmatch.fnmatchcase(route, p)
        ]
        sems += [(f"{self.prefix}:sem:g:{p}", n) for p, n in self.global_limits.items() if fnmatch.fnmatchcase(route, p)]
        return sems

    async def _lanes(self) -> dict[str, dict[str, Any]]:
        async with self._io("lanes") as r:
            raw = await r.hgetall(f"{self.prefix}:lanes")
        return {name: json.loads(meta) for name, meta in raw.items()}

    async def _records(self, ids: Sequence[str]) -> list[TaskRecord | None]:
        if not ids:
            return []
        async with self._io("read") as r:
            pipe = r.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(f"{self.prefix}:t:{task_id}")
            rows = await pipe.execute()
        return [record(h) if h else None for h in rows]

    async def _must_get(self, task_id: str) -> TaskRecord:
        rec = await self.get(task_id)
        if rec is None:
            raise TaskNotFound(f"no task {task_id} in {self.url}", task_id=task_id)
        return rec

    # -- submit / claim / finish ------------------------------------------------------------------

    async def submit(self, task: NewTask) -> tuple[TaskRecord, bool]:
        got = await self._run(
            "submit", task.id, task.idempotency_key or "", task.priority, task.owner or "", task.route,
            dumps(task.request), repr(task.created_at), dumps({"route": task.route, "priority": task.priority}),
            self._job_json(task.id, f"{self.prefix}|new", "queued"), task.tenant or "", len(task.queue_limits),
            *(x for pattern, limit in task.queue_limits for x in (glob_to_lua(pattern), limit)),
        )
        if got[0] == 2:
            pattern, limit = task.queue_limits[int(got[1]) - 1]
            raise queue_full(task.route, pattern, limit)
        if got[0]:
            rec = TaskRecord(
                id=task.id, status=TaskStatus.QUEUED, request=task.request, route=task.route, priority=task.priority,
                idempotency_key=task.idempotency_key, created_at=task.created_at, owner=got[2] or None,
                tenant=task.tenant,
            )
            return rec, True
        return await self._must_get(got[1]), False

    async def adopt(self, task: NewTask, worker_id: str) -> TaskRecord:
        lane = lane_name(self.prefix, task.priority, task.owner, task.route)
        job = json.loads(self._job_json(task.id, lane, "active"))
        job.update(attempts=1, started=int(time.time() * 1000), touched=int(time.time() * 1000), worker_id=worker_id)
        sems = [key for key, _ in self._sems(task.route)]
        await self._run(
            "adopt", task.id, worker_id, task.priority, task.owner or "", task.route, dumps(task.request),
            repr(task.created_at), task.idempotency_key or "", dumps(job), self._lease_ms, len(sems), *sems,
        )
        return await self._must_get(task.id)

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        include: str | None = None,
        exclude: Sequence[str] = (),
        claim_all: bool = True,
        routes: Sequence[str] | None = None,
    ) -> list[TaskRecord]:
        """See the protocol; ``routes`` (globs, any of them) restricts a worker to some routes."""
        if limit <= 0:
            return []
        eligible = []
        for name, meta in (await self._lanes()).items():
            owner, route = meta.get("owner") or "", str(meta.get("route"))
            if owner != worker_id and (owner or not claim_all):
                continue
            if include is not None and not fnmatch.fnmatchcase(route, include):
                continue
            if any(fnmatch.fnmatchcase(route, p) for p in exclude):
                continue
            if routes is not None and not any(fnmatch.fnmatchcase(route, p) for p in routes):
                continue
            eligible.append((-int(meta.get("priority") or 0), name, route))
        if not eligible:
            return []
        eligible.sort()
        args: list[Any] = [worker_id, self._lease_ms, limit, len(eligible), self.job_heartbeat_s]
        for neg_priority, name, route in eligible:
            sems = self._sems(route)
            args += [name, -neg_priority, len(sems)]
            for key, n in sems:
                args += [key, n]
        ids = await self._run("claim", *args)
        return [rec for rec in await self._records(ids) if rec is not None]

    async def finish(self, task_id: str, worker_id: str, outcome: Outcome) -> bool:
        error = outcome.error or {}
        saq_error = f"{error.get('type')}: {error.get('message')}" if outcome.error else ""
        done = await self._run(
            "finish", task_id, worker_id, outcome.status.value,
            "" if outcome.result is None else dumps(outcome.result),
            "" if outcome.error is None else dumps(outcome.error),
            outcome.event_kind, dumps(final_event_data(outcome)), _SAQ_STATUS[outcome.status], saq_error,
        )
        return bool(done)

    async def release(self, task_ids: Sequence[str], worker_id: str) -> list[str]:
        done: list[str] = list(await self._run("release", worker_id, CANCELLED, *task_ids)) if task_ids else []
        await self._run("move_owner", worker_id, "")
        return done

    async def requeue(
        self, task_id: str, worker_id: str, *, request: dict[str, Any], data: dict[str, Any]
    ) -> TaskStatus | None:
        data = {"worker": worker_id, **data}
        got = await self._run("requeue", task_id, worker_id, dumps(request), dumps(data), CANCELLED)
        return TaskStatus(got) if got else None

    # -- cancel / review --------------------------------------------------------------------------

    async def request_cancel(self, task_id: str) -> TaskRecord:
        was = await self._run("cancel", task_id, CANCELLED)
        if not was:
            raise TaskNotFound(f"no task {task_id} in {self.url}", task_id=task_id)
        return await self._must_get(task_id)

    async def cancel_requests(self, worker_id: str) -> list[str]:
        return list(await self._run("cancels", worker_id))

    async def resolve_review(
        self,
        task_id: str,
        *,
        result: dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
        note: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> TaskRecord:
        if (result is None) == (request is None):
            raise TaskError("resolve_review needs exactly one of result and request", task_id=task_id)
        if result is not None:
            got = await self._run(
                "resolve", task_id, "result", dumps(result), dumps({"review": "approved", **(note or {})}), "", ""
            )
        else:
            got = await self._run(
                "resolve", task_id, "request", dumps(request), dumps({"review": "reply", **(note or {})}),
                owner or "", self._job_json(task_id, f"{self.prefix}|review", "queued"),
            )
        if not got:
            raise TaskNotFound(f"no task {task_id} in {self.url}", task_id=task_id)
        if got != "ok":
            raise TaskError(f"task {task_id} is {got}, not waiting for a review", task_id=task_id)
        return await self._must_get(task_id)

    # -- events ------------------------------------------------------------------------------------

    async def append_events(
        self, events: Sequence[EventIn], progress: Mapping[str, dict[str, Any]] | None = None
    ) -> None:
        by_task: dict[str, list[EventIn]] = {}
        for ev in events:
            by_task.setdefault(ev.task_id, []).append(ev)
        for task_id in progress or {}:
            by_task.setdefault(task_id, [])
        if not by_task:
            return
        args: list[Any] = [len(by_task)]
        for task_id, items in by_task.items():
            prog = (progress or {}).get(task_id)
            args += [task_id, "" if prog is None else dumps(prog), len(items)]
            for ev in items:
                args += [ev.kind, dumps(ev.data), repr(ev.at)]
        await self._run("append", *args)

    async def read_events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[TaskEvent]:
        if limit <= 0:
            return []
        async with self._io("read events") as r:
            rows = await r.lrange(f"{self.prefix}:e:{task_id}", after, after + limit - 1)
        out = []
        for i, raw in enumerate(rows):
            d = loads(raw)
            out.append(TaskEvent(task_id=task_id, seq=after + 1 + i, kind=d["kind"], data=d.get("data") or {}, at=float(d["at"])))
        return out

    # -- reads -------------------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._io("get") as r:
            h = await r.hgetall(f"{self.prefix}:t:{task_id}")
        return record(h) if h else None

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        limit: int = 100,
        before: str | None = None,
        route: str | None = None,
        tenant: str | None = None,
    ) -> list[TaskRecord]:
        """See the protocol. A tenant's list is the index filtered by tenant (no index per tenant)."""
        key = f"{self.prefix}:all" if status is None else f"{self.prefix}:s:{status.value}"
        top = "+inf"
        if before is not None:
            async with self._io("list") as r:
                score = await r.zscore(f"{self.prefix}:all", before)
            if score is None:
                return []  # an unknown cursor (expired): nothing is older
            top = f"({float(score)!r}"
        out: list[TaskRecord] = []
        start = 0
        while len(out) < limit:
            async with self._io("list") as r:
                ids = await r.zrevrangebyscore(key, top, "-inf", start=start, num=limit)
            if not ids:
                break
            start += len(ids)
            gone = []
            for task_id, rec in zip(ids, await self._records(ids), strict=True):
                if rec is None:
                    gone.append(task_id)  # expired by TTL
                elif (
                    (status is None or rec.status is status)
                    and (route is None or fnmatch.fnmatchcase(rec.route, route))
                    and (tenant is None or rec.tenant == tenant)
                ):
                    out.append(rec)
            if gone:
                async with self._io("list") as r:
                    await r.zrem(key, *gone)
                start -= len(gone)
        return out[:limit]

    async def queued_count(self, route_pattern: str) -> int:
        lanes = [name for name, meta in (await self._lanes()).items() if fnmatch.fnmatchcase(str(meta.get("route")), route_pattern)]
        if not lanes:
            return 0
        async with self._io("queued count") as r:
            pipe = r.pipeline(transaction=False)
            for lane in lanes:
                pipe.llen(f"saq:{lane}:queued")
            got = await pipe.execute()
        return sum(int(n) for n in got)

    def broken(self) -> TaskStoreError | None:
        return None  # no writer thread to lose: every call reconnects or raises on its own

    async def counts(self) -> dict[str, int]:
        await self._prune(time.time() - self.retention_s, delete=False)
        async with self._io("counts") as r:
            pipe = r.pipeline(transaction=False)
            for st in TaskStatus:
                pipe.zcard(f"{self.prefix}:s:{st.value}")
            got = await pipe.execute()
        return {st.value: int(n) for st, n in zip(TaskStatus, got, strict=True) if n}
