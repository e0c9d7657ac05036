"""The embedded task store: one SQLite file in WAL mode, shared by the processes of one machine.

Writes go through **one writer thread** that applies every operation waiting at that moment in one
transaction (group commit): thousands of submits and state changes per second cost a handful of
fsyncs. An awaited write returns only after its transaction committed with ``synchronous=FULL``,
so it survives a crash of the process and of the machine. Several processes may open the same
file: SQLite serialises their write transactions (``BEGIN IMMEDIATE`` with a busy timeout).

Reads (``get``, ``read_events``, ``list_tasks`` ...) run inline on a per-thread read connection:
WAL readers never wait for the writer, and a primary-key read costs tens of microseconds, far less
than a hop to another thread. Everything SQLite-specific lives here; the manager sees only the
:class:`~llm_call.tasks.store.TaskStore` protocol.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import QueueFull, TaskError, TaskNotFound, TaskStoreError
from ..types import TaskEvent, TaskRecord, TaskStatus
from ._json import dumps, loads
from ._sqlite_db import GroupCommitDB
from ._sqlite_rows import (
    COLS,
    FINAL_SQL,
    append_event,
    cancelled_error,
    finish_cancelled,
    full_queue,
    record,
    recover_op,
    requeue_op,
    same_key,
)
from ._sqlite_schema import init_schema
from .store import (
    EventIn,
    NewTask,
    Outcome,
    RecoveryReport,
    WorkerInfo,
    final_event_data,
    machine_name,
    worker_process_alive,
)

__all__ = ["SQLiteTaskStore"]

T = TypeVar("T")
_log = logging.getLogger("llm_call.tasks")

_CLEANUP_CHUNK = 500  # tasks deleted per transaction: a retention sweep never holds the lock long


_dumps = dumps


def _loads(text: str | None) -> Any:
    return None if text is None else loads(text)


class SQLiteTaskStore:
    """A :class:`~llm_call.tasks.store.TaskStore` on a SQLite file (WAL, group commit).

    Example::

        store = SQLiteTaskStore("/tmp/tasks.db")
        await store.open()          # ConfigError now if the file is unusable
        ...
        await store.close()
    """

    #: ``finish`` stores ``Outcome.at`` as ``finished_at`` (the manager may then keep the record)
    records_outcome_time = True

    def __init__(self, path: str | os.PathLike[str], *, batch_max: int = 5000) -> None:
        self.path = Path(path).expanduser()
        self.url = str(self.path)
        self._db = GroupCommitDB(self.path, init_schema, batch_max=batch_max)
        self._host = machine_name()  # workers registered under it are judged by their pid

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    def broken(self) -> TaskStoreError | None:
        return self._db.broken

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db.write(op)

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return self._db.read(op)

    @staticmethod
    def _get(conn: sqlite3.Connection, task_id: str) -> TaskRecord | None:
        row = conn.execute(f"SELECT {COLS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else record(row)

    # -- submit / claim / finish -----------------------------------------------------------------

    async def submit(self, task: NewTask) -> tuple[TaskRecord, bool]:
        request = task.request_json or _dumps(task.request)
        created_data = _dumps({"route": task.route, "priority": task.priority})
        got = await self._write(self._submit_op(task, request, created_data))
        if isinstance(got, QueueFull):
            raise got
        return got

    def _submit_op(
        self, task: NewTask, request: str, created_data: str
    ) -> Callable[[sqlite3.Connection], tuple[TaskRecord, bool] | QueueFull]:
        def op(conn: sqlite3.Connection) -> tuple[TaskRecord, bool] | QueueFull:
            full = full_queue(conn, task)
            if full is not None:  # returned: raising would roll back and replay the group commit
                return full
            if task.idempotency_key is not None:
                row = same_key(conn, task)
                if row is not None:
                    return record(row), False
            conn.execute(
                "INSERT INTO tasks (id, status, request, route, priority, idempotency_key, owner, created_at, event_seq, "
                "tenant) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, 1, ?)",
                (task.id, request, task.route, task.priority, task.idempotency_key, task.owner, task.created_at, task.tenant),
            )
            conn.execute("INSERT INTO events VALUES (?, 1, 'queued', ?, ?)", (task.id, created_data, task.created_at))
            return self._newrecord(task, TaskStatus.QUEUED), True

        return op

    def submit_started(self, task: NewTask, worker_id: str, *, claim_all: bool) -> asyncio.Future[tuple[TaskRecord, bool]]:
        """``submit``, and in the same transaction ``claim`` it for ``worker_id`` when nothing
        this worker may claim is queued (nothing would run before it): one commit instead of
        two, with both events (``queued``, ``started``). The record says which happened.
        Queued at once; the future is done when the transaction committed."""
        request = task.request_json or _dumps(task.request)
        created_data = _dumps({"route": task.route, "priority": task.priority})
        started_data = _dumps({"worker": worker_id, "execution": 1})
        where, params = self._queue_filter(worker_id, None, (), claim_all)

        def op(conn: sqlite3.Connection) -> tuple[TaskRecord, bool]:
            if conn.execute(f"SELECT 1 FROM tasks WHERE {where} LIMIT 1", params).fetchone() is not None:
                got = submit_op(conn)  # others wait: queue it behind them
                if isinstance(got, QueueFull):
                    raise got
                return got
            if task.idempotency_key is not None:
                row = same_key(conn, task)
                if row is not None:
                    return record(row), False
            now = time.time()
            conn.execute(
                "INSERT INTO tasks (id, status, request, route, priority, idempotency_key, owner, worker, attempts, "
                "created_at, started_at, event_seq, tenant) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, 1, ?, ?, 2, ?)",
                (task.id, request, task.route, task.priority, task.idempotency_key, task.owner, worker_id, task.created_at,
                 now, task.tenant),
            )
            conn.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                [(task.id, 1, "queued", created_data, task.created_at), (task.id, 2, "started", started_data, now)],
            )
            return self._newrecord(task, TaskStatus.RUNNING, started_at=now, attempts=1, worker=worker_id), True

        submit_op = self._submit_op(task, request, created_data)
        return self._db.enqueue(op)

    @staticmethod
    def _newrecord(task: NewTask, status: TaskStatus, **extra: Any) -> TaskRecord:
        return TaskRecord(
            id=task.id,
            status=status,
            request=task.request,
            route=task.route,
            priority=task.priority,
            idempotency_key=task.idempotency_key,
            created_at=task.created_at,
            owner=task.owner,
            tenant=task.tenant,
            **extra,
        )

    async def adopt(self, task: NewTask, worker_id: str) -> TaskRecord:
        request = task.request_json or _dumps(task.request)
        now = time.time()

        def op(conn: sqlite3.Connection) -> TaskRecord:
            conn.execute(
                "INSERT INTO tasks (id, status, request, route, priority, idempotency_key, owner, worker, attempts, "
                "created_at, started_at, event_seq, tenant) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, 1, ?, ?, 2, ?)",
                (task.id, request, task.route, task.priority, task.idempotency_key, task.owner, worker_id, task.created_at,
                 now, task.tenant),
            )
            conn.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                [
                    (task.id, 1, "queued", _dumps({"route": task.route, "handoff": True}), task.created_at),
                    (task.id, 2, "started", _dumps({"worker": worker_id, "execution": 1, "handoff": True}), now),
                ],
            )
            return self._newrecord(task, TaskStatus.RUNNING, started_at=now, attempts=1, worker=worker_id)

        return await self._write(op)

    @staticmethod
    def _queue_filter(
        worker_id: str, include: str | None, exclude: Sequence[str], claim_all: bool, routes: Sequence[str] | None = None
    ) -> tuple[str, list[Any]]:
        conds = ["status = 'queued'", "(owner IS NULL OR owner = ?)" if claim_all else "owner = ?"]
        params: list[Any] = [worker_id]
        if include is not None:
            conds.append("route GLOB ?")
            params.append(include)
        for pattern in exclude:
            conds.append("NOT (route GLOB ?)")
            params.append(pattern)
        if routes is not None:
            conds.append("(" + (" OR ".join("route GLOB ?" for _ in routes) or "0") + ")")
            params.extend(routes)
        return " AND ".join(conds), params

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
        if limit <= 0:
            return []
        where, params = self._queue_filter(worker_id, include, exclude, claim_all, routes)
        # a read first: an idle poll must not take the write lock
        if self._read(lambda c: c.execute(f"SELECT 1 FROM tasks WHERE {where} LIMIT 1", params).fetchone()) is None:
            return []

        def op(conn: sqlite3.Connection) -> list[TaskRecord]:
            now = time.time()
            rows = conn.execute(
                "UPDATE tasks SET status = 'running', worker = ?, attempts = attempts + 1, started_at = ?, "
                "event_seq = event_seq + 1 "
                f"WHERE seq IN (SELECT seq FROM tasks WHERE {where} ORDER BY priority DESC, seq LIMIT ?) "
                f"RETURNING seq, event_seq, {COLS}",
                [worker_id, now, *params, limit],
            ).fetchall()
            rows.sort(key=lambda r: (-r[6], r[0]))
            conn.executemany(
                "INSERT INTO events VALUES (?, ?, 'started', ?, ?)",
                [(r[2], r[1], _dumps({"worker": worker_id, "execution": r[11]}), now) for r in rows],
            )
            return [record(r[2:]) for r in rows]

        return await self._write(op)

    async def finish(self, task_id: str, worker_id: str, outcome: Outcome) -> bool:
        result = None if outcome.result is None else _dumps(outcome.result)
        error = None if outcome.error is None else _dumps(outcome.error)
        data = _dumps(final_event_data(outcome))

        def op(conn: sqlite3.Connection) -> bool:
            now = outcome.at if outcome.at is not None else time.time()
            finished = None if outcome.status is TaskStatus.NEEDS_REVIEW else now
            row = conn.execute(
                "UPDATE tasks SET status = ?, result = ?, error = ?, finished_at = ?, cancel_requested = 0, "
                "event_seq = event_seq + 1 WHERE id = ? AND worker = ? AND status = 'running' RETURNING event_seq",
                (outcome.status.value, result, error, finished, task_id, worker_id),
            ).fetchone()
            if row is None:
                return False
            conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (task_id, row[0], outcome.event_kind, data, now))
            return True

        return await self._write(op)

    async def release(self, task_ids: Sequence[str], worker_id: str) -> list[str]:
        ids = list(task_ids)

        def op(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            done = []
            for task_id in ids:
                if finish_cancelled(conn, task_id, {"worker": worker_id}, now, worker=worker_id):
                    continue
                row = conn.execute(
                    "UPDATE tasks SET status = 'queued', worker = NULL, owner = NULL, started_at = NULL, "
                    "attempts = MAX(attempts - 1, 0) WHERE id = ? AND worker = ? AND status = 'running' RETURNING id",
                    (task_id, worker_id),
                ).fetchone()
                if row is not None:
                    append_event(conn, task_id, "released", {"worker": worker_id}, now)
                    done.append(task_id)
            conn.execute("UPDATE tasks SET owner = NULL WHERE owner = ? AND status = 'queued'", (worker_id,))
            return done

        return await self._write(op)

    async def requeue(
        self, task_id: str, worker_id: str, *, request: dict[str, Any], data: dict[str, Any]
    ) -> TaskStatus | None:
        text = _dumps(request)
        return await self._write(lambda conn: requeue_op(conn, task_id, worker_id, text, data, time.time()))

    # -- cancel / review ------------------------------------------------------------------------

    async def request_cancel(self, task_id: str) -> TaskRecord:
        error = cancelled_error(task_id)

        def op(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            now = time.time()
            status = row[0]
            if status in ("queued", "needs_review"):
                conn.execute(
                    "UPDATE tasks SET status = 'cancelled', finished_at = ?, error = ? WHERE id = ?", (now, error, task_id)
                )
                append_event(conn, task_id, "cancelled", {"was": status}, now)
            elif status == "running":
                conn.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
                append_event(conn, task_id, "cancel_requested", {}, now)
            return self._get(conn, task_id)

        rec = await self._write(op)
        if rec is None:
            raise TaskNotFound(f"no task {task_id} in {self.path}", task_id=task_id)
        return rec

    async def cancel_requests(self, worker_id: str) -> list[str]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT id FROM tasks WHERE status = 'running' AND worker = ? AND cancel_requested = 1", (worker_id,)
            ).fetchall()
        )
        return [r[0] for r in rows]

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
        result_json = None if result is None else _dumps(result)
        request_json = None if request is None else _dumps(request)

        def op(conn: sqlite3.Connection) -> TaskRecord | str | None:
            row = conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            if row[0] != "needs_review":
                return str(row[0])
            now = time.time()
            if result_json is not None:
                conn.execute(
                    "UPDATE tasks SET status = 'succeeded', result = ?, finished_at = ? WHERE id = ?",
                    (result_json, now, task_id),
                )
                append_event(conn, task_id, "finished", {"review": "approved", **(note or {})}, now)
            else:
                conn.execute(
                    "UPDATE tasks SET status = 'queued', request = ?, attempts = 0, worker = NULL, owner = ?, "
                    "started_at = NULL, error = NULL WHERE id = ?",
                    (request_json, owner, task_id),
                )
                append_event(conn, task_id, "queued", {"review": "reply", **(note or {})}, now)
            return self._get(conn, task_id)

        got = await self._write(op)
        if got is None:
            raise TaskNotFound(f"no task {task_id} in {self.path}", task_id=task_id)
        if isinstance(got, str):
            raise TaskError(f"task {task_id} is {got}, not waiting for a review", task_id=task_id)
        return got

    # -- events ------------------------------------------------------------------------------

    async def append_events(
        self, events: Sequence[EventIn], progress: Mapping[str, dict[str, Any]] | None = None
    ) -> None:
        by_task: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
        for ev in events:
            by_task[ev.task_id].append((ev.kind, _dumps(ev.data), ev.at))
        prog = {k: _dumps(v) for k, v in (progress or {}).items()}
        for task_id in prog:
            by_task.setdefault(task_id, [])

        def op(conn: sqlite3.Connection) -> None:
            rows: list[tuple[str, int, str, str, float]] = []
            for task_id, items in by_task.items():
                self._append(conn, rows, task_id, items, prog.get(task_id))
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)

        await self._write(op)

    @staticmethod
    def _append(
        conn: sqlite3.Connection, rows: list[tuple[str, int, str, str, float]], task_id: str,
        items: Sequence[tuple[str, str, float]], progress: str | None,
    ) -> None:
        got = conn.execute(
            "UPDATE tasks SET event_seq = event_seq + ?, progress = COALESCE(?, progress) WHERE id = ? RETURNING event_seq",
            (len(items), progress, task_id),
        ).fetchone()
        if got is not None:
            first = got[0] - len(items) + 1
            rows.extend((task_id, first + i, kind, data, at) for i, (kind, data, at) in enumerate(items))

    async def finish_with_events(
        self, task_id: str, worker_id: str, outcome: Outcome, events: Sequence[EventIn], progress: dict[str, Any] | None
    ) -> bool:
        """``append_events`` of one task's events and progress, then ``finish``, in one transaction
        (one op of the group commit). The events are stored even if the finish is fenced off."""
        items = [(ev.kind, _dumps(ev.data), ev.at) for ev in events]
        prog = None if progress is None else _dumps(progress)
        result = None if outcome.result is None else _dumps(outcome.result)
        error = None if outcome.error is None else _dumps(outcome.error)
        data = _dumps(final_event_data(outcome))

        def op(conn: sqlite3.Connection) -> bool:
            now = outcome.at if outcome.at is not None else time.time()
            finished = None if outcome.status is TaskStatus.NEEDS_REVIEW else now
            rows: list[tuple[str, int, str, str, float]] = []
            row = conn.execute(
                "UPDATE tasks SET status = ?, result = ?, error = ?, finished_at = ?, cancel_requested = 0, "
                "event_seq = event_seq + ?, progress = COALESCE(?, progress) "
                "WHERE id = ? AND worker = ? AND status = 'running' RETURNING event_seq",
                (outcome.status.value, result, error, finished, len(items) + 1, prog, task_id, worker_id),
            ).fetchone()
            if row is None:
                if items or prog is not None:
                    self._append(conn, rows, task_id, items, prog)
                    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
                return False
            first = row[0] - len(items)
            rows.extend((task_id, first + i, kind, d, at) for i, (kind, d, at) in enumerate(items))
            rows.append((task_id, row[0], outcome.event_kind, data, now))
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
            return True

        return await self._write(op)

    async def read_events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[TaskEvent]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT seq, kind, data, at FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (task_id, after, limit),
            ).fetchall()
        )
        return [TaskEvent(task_id=task_id, seq=r[0], kind=r[1], data=loads(r[2]), at=r[3]) for r in rows]

    # -- reads --------------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        return self._read(lambda c: self._get(c, task_id))

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        limit: int = 100,
        before: str | None = None,
        route: str | None = None,
        tenant: str | None = None,
    ) -> list[TaskRecord]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if route is not None:
            where.append("route GLOB ?")
            args.append(route)
        if before is not None:
            # an unknown cursor (deleted by retention) pages from the end: nothing is older
            where.append("seq < coalesce((SELECT seq FROM tasks WHERE id = ?), 0)")
            args.append(before)
        sql = f"SELECT {COLS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        rows = self._read(lambda c: c.execute(sql, args).fetchall())
        return [record(r) for r in rows]

    async def queued_count(self, route_pattern: str) -> int:
        row = self._read(
            lambda c: c.execute(
                "SELECT count(*) FROM tasks WHERE status = 'queued' AND route GLOB ?", (route_pattern,)
            ).fetchone()
        )
        return int(row[0])

    async def counts(self) -> dict[str, int]:
        rows = self._read(lambda c: c.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
        return {str(r[0]): int(r[1]) for r in rows}

    # -- workers, recovery, retention ------------------------------------------------------------

    async def heartbeat(self, worker: WorkerInfo) -> None:
        worker.heartbeat_at = time.time()
        values = (
            worker.id, worker.kind, worker.claims, worker.concurrency, worker.host, worker.pid,
            worker.started_at, worker.heartbeat_at,
        )

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at, concurrency = excluded.concurrency",
                values,
            )

        await self._write(op)

    async def put_meta(self, key: str, value: dict[str, Any]) -> None:
        """Shared state every process sees (the Claude quota), in the ``meta`` table."""
        text = _dumps(value)
        await self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text)).rowcount)

    async def read_meta(self, prefix: str) -> dict[str, dict[str, Any]]:
        sql = "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?"
        rows = self._read(lambda c: c.execute(sql, (len(prefix), prefix)).fetchall())
        return {k: _loads(v) for k, v in rows}

    async def remove_worker(self, worker_id: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM workers WHERE id = ?", (worker_id,)) and None)

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        since = time.time() - alive_within
        rows = self._read(
            lambda c: c.execute(
                "SELECT id, kind, claims, concurrency, host, pid, started_at, heartbeat_at FROM workers "
                "WHERE heartbeat_at >= ? ORDER BY started_at",
                (since,),
            ).fetchall()
        )
        found = [WorkerInfo(*r) for r in rows]
        return [w for w in found if w.host != self._host or worker_process_alive(w.pid, w.started_at)]

    async def recover(
        self, *, max_executions: int, stale_after: float, adopter: str | None = None
    ) -> RecoveryReport:
        return await self._write(lambda conn: recover_op(conn, self._host, max_executions, stale_after, adopter))

    async def cleanup(self, older_than: float) -> int:
        """Delete finished tasks older than ``older_than``, in transactions of a few hundred
        tasks, so that heartbeats and other writes (of any process) never wait long behind it."""
        where = f"finished_at IS NOT NULL AND finished_at < ? AND status IN {FINAL_SQL}"

        def op(conn: sqlite3.Connection) -> int:
            ids = [(r[0],) for r in conn.execute(f"SELECT id FROM tasks WHERE {where} LIMIT ?", (older_than, _CLEANUP_CHUNK))]
            conn.executemany("DELETE FROM events WHERE task_id = ?", ids)
            conn.executemany("DELETE FROM tasks WHERE id = ?", ids)
            return len(ids)

        removed = 0
        while (n := await self._write(op)) > 0:
            removed += n
            if n < _CLEANUP_CHUNK:
                break
        return removed


