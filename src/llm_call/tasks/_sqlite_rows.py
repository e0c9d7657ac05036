"""Rows and statements of the SQLite task store shared by its operations: decoding a task row,
appending an event, the checks made inside a write transaction (idempotency key, queue limits,
a requested cancel), and recovery of dead workers' tasks. Each function runs on the connection
it is given, inside the caller's transaction; ``sqlite_store.py`` wires them to the writer.

Liveness (the invariant "a worker is declared dead only when it cannot be alive"): a worker of
this host (host name and PID namespace, ``store.machine_name``) is dead exactly when its process
is gone, its pid checked together with the process's start time so that a reused pid does not
pass for it. A live process whose heartbeats wait
behind a lock (another process's long transaction) is alive. A worker of another host sharing
the file is dead when silent longer than the stale window plus the longest wait for the lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from ..errors import QueueFull, TaskCancelled, TaskInterrupted, error_to_dict
from ..types import TaskRecord, TaskStatus
from ._json import dumps, loads
from .store import NewTask, RecoveryReport, queue_full, worker_process_alive

__all__ = [
    "BUSY_TIMEOUT_S",
    "COLS",
    "FINAL_SQL",
    "append_event",
    "cancelled_error",
    "finish_cancelled",
    "full_queue",
    "record",
    "recover_op",
    "requeue_op",
    "same_key",
]

COLS = (
    "id, status, request, route, priority, idempotency_key, created_at, started_at, finished_at, "
    "attempts, progress, result, error, worker, owner, cancel_requested, tenant"
)
FINAL_SQL = "('succeeded', 'failed', 'cancelled', 'interrupted')"
BUSY_TIMEOUT_S = 30.0  # as in _sqlite_db: the longest a write waits for the lock


def _loads(text: str | None) -> Any:
    return None if text is None else loads(text)


def same_key(conn: sqlite3.Connection, task: NewTask) -> Sequence[Any] | None:
    """The task of the same tenant with ``task``'s idempotency key, if any."""
    row: Sequence[Any] | None = conn.execute(
        f"SELECT {COLS} FROM tasks WHERE coalesce(tenant, '') = ? AND idempotency_key = ?",
        (task.tenant or "", task.idempotency_key),
    ).fetchone()
    return row


def full_queue(conn: sqlite3.Connection, task: NewTask) -> QueueFull | None:
    """The refusal when a queue limit of ``task`` is reached, counted inside the submit's own
    write transaction, so that concurrent submitters (in any process) never overshoot it."""
    for pattern, limit in task.queue_limits:
        row = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE status = 'queued' AND route GLOB ? LIMIT ?)",
            (pattern, limit),
        ).fetchone()
        if row[0] >= limit:
            return queue_full(task.route, pattern, limit)
    return None


def record(row: Sequence[Any]) -> TaskRecord:
    """A task row (the columns of :data:`COLS`) as a record."""
    return TaskRecord(
        id=row[0],
        status=TaskStatus(row[1]),
        request=loads(row[2]),
        route=row[3],
        priority=row[4],
        idempotency_key=row[5],
        created_at=row[6],
        started_at=row[7],
        finished_at=row[8],
        attempts=row[9],
        progress=_loads(row[10]) or {},
        result=_loads(row[11]),
        error=_loads(row[12]),
        worker=row[13],
        owner=row[14],
        cancel_requested=bool(row[15]),
        tenant=row[16],
    )


def append_event(conn: sqlite3.Connection, task_id: str, kind: str, data: dict[str, Any], at: float) -> None:
    """Bump the task's event counter and append one event (inside a write transaction)."""
    row = conn.execute(
        "UPDATE tasks SET event_seq = event_seq + 1 WHERE id = ? RETURNING event_seq", (task_id,)
    ).fetchone()
    if row is not None:
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (task_id, row[0], kind, dumps(data), at))


def cancelled_error(task_id: str) -> str:
    return dumps(error_to_dict(TaskCancelled(f"task {task_id} was cancelled", task_id=task_id)))


def finish_cancelled(
    conn: sqlite3.Connection, task_id: str, data: dict[str, Any], now: float, *, worker: str | None = None
) -> bool:
    """End a running task whose cancellation was requested as ``cancelled`` (inside a write
    transaction). A cancelled task never starts again: recovery and release come here before
    they would put it back in the queue."""
    sql = (
        "UPDATE tasks SET status = 'cancelled', finished_at = ?, error = ?, worker = NULL "
        "WHERE id = ? AND status = 'running' AND cancel_requested = 1"
    )
    params: list[Any] = [now, cancelled_error(task_id), task_id]
    if worker is not None:
        sql += " AND worker = ?"
        params.append(worker)
    if conn.execute(sql + " RETURNING id", params).fetchone() is None:
        return False
    append_event(conn, task_id, "cancelled", {"was": "running", **data}, now)
    return True


def requeue_op(
    conn: sqlite3.Connection, task_id: str, worker_id: str, request: str, data: dict[str, Any], now: float
) -> TaskStatus | None:
    """``RequeuesWaiting.requeue`` inside a write transaction: back to the queue with its new
    request, owner kept, the execution not counted; ``cancelled`` if its cancel was requested."""
    if finish_cancelled(conn, task_id, {"worker": worker_id}, now, worker=worker_id):
        return TaskStatus.CANCELLED
    row = conn.execute(
        "UPDATE tasks SET status = 'queued', worker = NULL, started_at = NULL, request = ?, "
        "attempts = MAX(attempts - 1, 0) WHERE id = ? AND worker = ? AND status = 'running' RETURNING id",
        (request, task_id, worker_id),
    ).fetchone()
    if row is None:
        return None
    append_event(conn, task_id, "requeued", {"worker": worker_id, **data}, now)
    return TaskStatus.QUEUED


def _dead(this_host: str, host: str, pid: int, started: float, silent_for: float, stale_after: float) -> bool:
    """Whether a worker cannot be alive (see the module docstring)."""
    if host == this_host:
        return not worker_process_alive(pid, started)
    return silent_for > stale_after + BUSY_TIMEOUT_S


def recover_op(
    conn: sqlite3.Connection, this_host: str, max_executions: int, stale_after: float, adopter: str | None
) -> RecoveryReport:
    """``TaskStore.recover`` inside one write transaction."""
    now = time.time()
    report = RecoveryReport()
    alive: set[str] = set()
    rows = conn.execute("SELECT id, host, pid, started_at, heartbeat_at FROM workers").fetchall()
    for wid, host, pid, started, beat in rows:
        if _dead(this_host, host, pid, started, now - beat, stale_after):
            report.dead_workers.append(wid)
        else:
            alive.add(wid)
    running = conn.execute("SELECT id, worker, attempts FROM tasks WHERE status = 'running'").fetchall()
    for task_id, worker, attempts in running:
        if worker in alive:
            continue
        data = {"dead_worker": worker, "executions": attempts}
        if finish_cancelled(conn, task_id, data, now):
            report.cancelled.append(task_id)
        elif attempts < max_executions:
            conn.execute(
                "UPDATE tasks SET status = 'queued', worker = NULL, owner = ?, started_at = NULL WHERE id = ?",
                (adopter, task_id),
            )
            append_event(conn, task_id, "requeued", data, now)
            report.requeued.append(task_id)
        else:
            err = TaskInterrupted(
                f"task {task_id}: the process running it died after {attempts} execution(s) "
                f"(max_executions={max_executions}); its input is kept, re-submit it to run it again",
                task_id=task_id,
            )
            conn.execute(
                "UPDATE tasks SET status = 'interrupted', finished_at = ?, error = ? WHERE id = ?",
                (now, dumps(error_to_dict(err)), task_id),
            )
            append_event(conn, task_id, "interrupted", data, now)
            report.interrupted.append(task_id)
    owned = conn.execute("SELECT id, owner FROM tasks WHERE status = 'queued' AND owner IS NOT NULL").fetchall()
    for task_id, owner in owned:
        if owner not in alive and owner != adopter:
            conn.execute("UPDATE tasks SET owner = ? WHERE id = ?", (adopter, task_id))
            report.reassigned.append(task_id)
    conn.executemany("DELETE FROM workers WHERE id = ?", [(w,) for w in report.dead_workers])
    return report
