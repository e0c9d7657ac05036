"""The :class:`TaskStore` protocol between the task manager and its storage.

This is the interface for backend authors: implement it (and register the URL scheme in
``tasks/_stores.py``) and every manager, worker, server and CLI command works with the backend.

A store is the durable half of the task system: the queue, the task records, their events and the
registry of live workers. The manager never sees SQL (or Redis): it calls these methods, and any
backend that implements them (the embedded SQLite store, a distributed backend on a queue engine)
works with every manager, worker, server and CLI command.

Contract every backend keeps:

- **Durable on return.** When an awaited write returns, it survives a crash of this process.
- **Atomic state changes.** Each method that changes a task's status does it atomically together
  with the lifecycle event it implies (``submit`` → ``queued``; ``claim``/``adopt`` →
  ``started``; ``finish`` → ``finished``/``failed``/``cancelled``/``needs_review``; ``release``
  → ``released``; ``requeue`` (optional, :class:`RequeuesWaiting`) → ``requeued``;
  ``request_cancel`` of a waiting task → ``cancelled``; ``recover`` →
  ``requeued``/``interrupted``; ``resolve_review`` → ``finished``/``queued``). So a task has
  exactly one final state and exactly one final event.
- **Fenced finish.** ``finish``, ``release`` and ``requeue`` only apply while the task is ``running`` under
  the given worker id: a worker declared dead whose task was re-queued cannot overwrite the new
  execution's outcome.
- **Order.** Writes awaited one after the other by one caller are applied in that order.
- **Queue limits.** ``submit`` counts the queued tasks of each of ``NewTask.queue_limits`` and
  inserts in one atomic step, raising ``QueueFull`` (storing nothing) when one is reached.
- **Liveness.** ``recover`` declares a worker dead only when it cannot be alive: a wait for a
  lock (or any other delay of its heartbeats) must never pass for a death.
- **Event numbering.** ``seq`` counts from 1 per task, without gaps, in append order.

Life of a task::

    submit ──> queued ──claim──> running ──finish──> succeeded | failed | cancelled
                 ^  │                │      └──────> needs_review ──resolve_review──> succeeded
                 │  └─request_cancel─┤                    └──(reply)──> queued
                 │        (cancelled)│
                 └──recover/release──┘ (dead worker, executions left; shutdown)
                 └─────requeue───────┘ (a quota wait: RequeuesWaiting)
                                     └──recover──> interrupted (no executions left)

``owner`` reserves a queued task for one manager (the in-process manager that submitted it);
``None`` means any worker. Recovery hands the queued tasks of a dead owner to the recovering
manager (``adopter``) or to every worker.

Example::

    store = await llm_call.tasks.open_store("/tmp/tasks.db")   # or None for the default location
    rec, created = await store.submit(NewTask(request={"model": "openai/x", "messages": [...]},
                                              route="openai/x"))
    print((await store.get(rec.id)).status)        # queued
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import QueueFull, TaskStoreError
from ..types import TaskEvent, TaskRecord, TaskStatus

__all__ = [
    "FINAL_EVENT_KINDS",
    "EventIn",
    "FinishesWithEvents",
    "NewTask",
    "Outcome",
    "PushesNotices",
    "RecordsOutcomeTime",
    "RecoveryReport",
    "RequeuesWaiting",
    "SubmitsStarted",
    "TaskStore",
    "WorkerInfo",
    "final_event_data",
    "machine_name",
    "new_task_id",
    "pid_alive",
    "queue_full",
    "worker_process_alive",
]

#: event kinds that end a task's event stream (for now: ``needs_review`` rests until a review)
FINAL_EVENT_KINDS = frozenset({"finished", "failed", "cancelled", "interrupted", "needs_review"})


_ids = random.Random(secrets.randbits(128))


def new_task_id() -> str:
    """A fresh task id: ``tk_``, 8 hex digits of time (ids sort by creation second), 4 of the
    second's fraction, 12 random. Ids made close in time are close in the store's indexes, so a
    group commit writes a few pages, not one per task."""
    now = time.time()
    return f"tk_{int(now) & 0xFFFFFFFF:08x}{int(now % 1 * 65536):04x}{_ids.getrandbits(48):012x}"


@dataclass(slots=True)
class NewTask:
    """A task to create. ``request`` is the JSON dict of acall arguments (see the tasks docs)."""

    request: dict[str, Any]
    route: str
    priority: int = 0
    idempotency_key: str | None = None
    owner: str | None = None
    #: the API key's tenant (server submits); idempotency keys are unique per tenant
    tenant: str | None = None
    id: str = field(default_factory=new_task_id)
    created_at: float = field(default_factory=time.time)
    #: ``request`` already encoded as JSON, when the caller has it (a store may use it)
    request_json: str | None = field(default=None, repr=False, compare=False)
    #: (glob, most tasks waiting) pairs that match ``route`` (``tasks.queue_limits``): ``submit``
    #: counts the queued tasks of each glob and inserts in one atomic step, raising
    #: :func:`queue_full` (and storing nothing) when one is reached, so concurrent submitters
    #: never overshoot a limit
    queue_limits: tuple[tuple[str, int], ...] = field(default=(), repr=False, compare=False)


@dataclass(slots=True)
class Outcome:
    """How one execution ended: the final (or resting) status with its result or error."""

    status: TaskStatus
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    #: when the execution ended (time.time()); a store that records it as ``finished_at``
    #: says so with a true ``records_outcome_time`` attribute, others use their own clock
    at: float | None = None

    @property
    def event_kind(self) -> str:
        return {
            TaskStatus.SUCCEEDED: "finished",
            TaskStatus.FAILED: "failed",
            TaskStatus.CANCELLED: "cancelled",
            TaskStatus.NEEDS_REVIEW: "needs_review",
            TaskStatus.INTERRUPTED: "interrupted",
        }[self.status]


def final_event_data(outcome: Outcome) -> dict[str, Any]:
    """What a task's final event says: the answering model, latency and size, or the error."""
    data: dict[str, Any] = {}
    if outcome.result is not None:
        data["model"] = outcome.result.get("model")
        data["latency_s"] = outcome.result.get("latency_s")
        data["chars"] = len(outcome.result.get("text") or "")
    if outcome.error is not None:
        data["error"] = {"type": outcome.error.get("type"), "message": outcome.error.get("message")}
    return data


def final_record(rec: TaskRecord, outcome: Outcome, progress: dict[str, Any], worker: str) -> TaskRecord:
    """The record a store holds after ``finish(rec.id, worker, outcome)`` of the claimed ``rec``
    (``outcome.at`` as ``finished_at``), given the progress it stored."""
    return TaskRecord(
        id=rec.id,
        status=outcome.status,
        request=rec.request,
        route=rec.route,
        priority=rec.priority,
        idempotency_key=rec.idempotency_key,
        created_at=rec.created_at,
        started_at=rec.started_at,
        finished_at=outcome.at,
        attempts=rec.attempts,
        progress=progress,
        result=outcome.result,
        error=outcome.error,
        worker=worker,
        owner=rec.owner,
        cancel_requested=False,
        tenant=rec.tenant,
    )


@dataclass(slots=True)
class EventIn:
    """A progress event to append (the store assigns ``seq``)."""

    task_id: str
    kind: str
    data: dict[str, Any]
    at: float


@dataclass(slots=True)
class WorkerInfo:
    """A process that runs tasks. ``claims`` is ``all`` (workers, servers) or ``own``."""

    id: str
    kind: str = "manager"  # manager | worker | server
    claims: str = "own"
    concurrency: int = 0
    host: str = field(default_factory=lambda: machine_name())  # late-bound: tests simulate namespaces
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    heartbeat_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "claims": self.claims,
            "concurrency": self.concurrency,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
        }


@dataclass(slots=True)
class RecoveryReport:
    """What :meth:`TaskStore.recover` did."""

    requeued: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # running, cancel requested, worker dead
    reassigned: list[str] = field(default_factory=list)  # queued tasks of dead owners
    dead_workers: list[str] = field(default_factory=list)


@runtime_checkable
class TaskStore(Protocol):
    """Durable task records, queue, events and worker registry. See the module docstring."""

    url: str

    async def open(self) -> None:
        """Connect, create or check the schema. Raises ConfigError when the store is unusable."""
        ...

    async def close(self) -> None: ...

    async def submit(self, task: NewTask) -> tuple[TaskRecord, bool]:
        """Create a queued task; with an ``idempotency_key`` already used by the same ``tenant``
        return that task instead (another tenant's use of the key does not count).

        Returns ``(record, created)``.
        """
        ...

    async def adopt(self, task: NewTask, worker_id: str) -> TaskRecord:
        """Create a task that is already running under ``worker_id`` (a direct call handed over)."""
        ...

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
        """Atomically move up to ``limit`` queued tasks to running under ``worker_id``.

        Highest priority first, FIFO within a priority. ``include``/``exclude`` are glob patterns
        on the route; ``routes`` (globs, None = all) is what this worker serves at all (``llm-call
        worker --routes``): a route must match one of them. With ``claim_all`` unowned tasks and the worker's own are eligible, else only
        its own. Each claim counts one execution (``attempts``).
        """
        ...

    async def finish(self, task_id: str, worker_id: str, outcome: Outcome) -> bool:
        """Record how the execution ended; False (and no change) if ``worker_id`` lost the task."""
        ...

    async def release(self, task_ids: Sequence[str], worker_id: str) -> list[str]:
        """Put running tasks back in the queue without counting the execution (clean shutdown)."""
        ...

    async def request_cancel(self, task_id: str) -> TaskRecord:
        """Cancel a queued or needs_review task now; flag a running one for its worker.

        Final tasks are returned unchanged. Raises TaskNotFound.
        """
        ...

    async def cancel_requests(self, worker_id: str) -> list[str]:
        """Ids of tasks running under ``worker_id`` whose cancellation was requested."""
        ...

    async def resolve_review(
        self,
        task_id: str,
        *,
        result: dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
        note: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> TaskRecord:
        """Resolve a needs_review task: with ``result`` it succeeds; with ``request`` it is queued
        again for ``owner`` (None: any worker) with executions reset. ``note`` goes into the event.
        Raises TaskNotFound, or TaskError when it is not in review.
        """
        ...

    async def append_events(
        self, events: Sequence[EventIn], progress: Mapping[str, dict[str, Any]] | None = None
    ) -> None:
        """Append progress events; ``progress`` (task id → summary) replaces ``record.progress``."""
        ...

    async def read_events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[TaskEvent]:
        """Events with ``seq > after``, oldest first."""
        ...

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        limit: int = 100,
        before: str | None = None,
        route: str | None = None,
        tenant: str | None = None,
    ) -> list[TaskRecord]:
        """Newest first. ``before`` (a task id) pages: only tasks created before that one (none
        when it is unknown); ``route`` is a glob on the task's route (the model after aliases);
        with ``tenant``, only that tenant's tasks (None: everyone's)."""
        ...

    async def counts(self) -> dict[str, int]:
        """Number of tasks per status."""
        ...

    def broken(self) -> TaskStoreError | None:
        """Why this store can make no more writes (its writer died), or None while it can.
        Transient failures are not "broken": they raise from the call that met them."""
        ...

    async def queued_count(self, route_pattern: str) -> int:
        """Number of queued tasks whose route matches the glob ``route_pattern`` (queue limits)."""
        ...

    async def heartbeat(self, worker: WorkerInfo) -> None:
        """Register the worker or refresh its liveness (``heartbeat_at`` = now)."""
        ...

    async def remove_worker(self, worker_id: str) -> None: ...

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        """Workers whose last heartbeat is younger than ``alive_within`` seconds."""
        ...

    async def recover(
        self, *, max_executions: int, stale_after: float, adopter: str | None = None
    ) -> RecoveryReport:
        """Find dead workers (no heartbeat for ``stale_after`` s, or a vanished process on this
        host) and settle their tasks: running → queued if executions < ``max_executions``, else
        interrupted (input kept); their queued tasks go to ``adopter`` (None: any worker).
        """
        ...

    async def cleanup(self, older_than: float) -> int:
        """Delete final tasks (and their events) finished before the epoch time ``older_than``."""
        ...


# -- optional capabilities ---------------------------------------------------------------------
# A store may offer these fast paths on top of TaskStore; the manager checks for them once per
# store (isinstance) and otherwise uses the plain protocol methods.


@runtime_checkable
class SubmitsStarted(Protocol):
    """Submit a task and, in the same transaction, claim it for ``worker_id`` when nothing this
    worker may claim is queued (one commit instead of two). Queued at once; the future is done
    when the write committed. The returned record's status says which happened."""

    def submit_started(
        self, task: NewTask, worker_id: str, *, claim_all: bool
    ) -> asyncio.Future[tuple[TaskRecord, bool]]: ...


@runtime_checkable
class FinishesWithEvents(Protocol):
    """``append_events`` of one task's events and progress, then ``finish``, in one transaction."""

    async def finish_with_events(
        self, task_id: str, worker_id: str, outcome: Outcome, events: Sequence[EventIn], progress: dict[str, Any] | None
    ) -> bool: ...


@runtime_checkable
class PushesNotices(Protocol):
    """Cancel requests and new events pushed as they happen (Redis pub/sub); each ``watch_*``
    returns the coroutine function that stops it, or raises TaskStoreError. A callback gets
    ``""`` when notices may have been lost (a dropped connection came back). Polling stays as
    the fallback."""

    async def watch_cancels(self, worker_id: str, on_cancel: Callable[[str], None]) -> Callable[[], Awaitable[None]]: ...

    async def watch_events(self, task_id: str, on_event: Callable[[str], None]) -> Callable[[], Awaitable[None]]: ...


@runtime_checkable
class RecordsOutcomeTime(Protocol):
    """``records_outcome_time = True``: ``finish`` stores ``outcome.at`` as the finish time, so
    the manager may keep the final record it builds instead of reading it back."""

    records_outcome_time: bool


@runtime_checkable
class RequeuesWaiting(Protocol):
    """Put a task running under ``worker_id`` back in the queue to wait (a ``max/*`` task that
    met a used-up subscription window, ``claude.on_quota_exhausted = "wait"``), in one atomic
    step: the stored request replaced by ``request`` (what the next execution needs), the
    owner kept (a manager that claims only its own tasks runs it again), the execution not
    counted, and a ``requeued`` event with ``data``. Fenced like ``finish``. If its cancel was
    requested it ends ``cancelled`` instead and never starts again (like ``release``).

    Returns ``QUEUED``, ``CANCELLED``, or None when ``worker_id`` no longer runs the task."""

    async def requeue(
        self, task_id: str, worker_id: str, *, request: dict[str, Any], data: dict[str, Any]
    ) -> TaskStatus | None: ...


def queue_full(route: str, pattern: str, limit: int) -> QueueFull:
    """The error of a submit refused because ``pattern``'s queue holds ``limit`` tasks."""
    return QueueFull(
        f"the queue for {pattern} is full ({limit} tasks waiting); nothing was queued",
        hint="retry later, or raise tasks.queue_limits",
        route=route,
        limit=limit,
    )


_INITIAL_PID_NAMESPACE = "pid:[4026531836]"  # the kernel's own (PROC_PID_INIT_INO): no container


def machine_name(host: str | None = None) -> str:
    """The name a worker registers as its host: where its pid can be checked. The host name (or
    ``host``), plus the PID namespace when this process has one of its own (a container):
    containers that share a host name (host networking) see different processes under the same
    pid, so a worker must not judge another's liveness by a pid from another namespace."""
    name = host or socket.gethostname()
    namespace = _pid_namespace()
    return name if namespace in (None, _INITIAL_PID_NAMESPACE) else f"{name}#{namespace}"


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux, or /proc hidden: the host name alone, as before
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


_START_SLACK_S = 2.0  # /proc/stat's boot time has whole seconds (and NTP may move it a little)


def _process_started_at(pid: int) -> float | None:
    """When a process of this host started (wall clock), from /proc; None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        return float(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def worker_process_alive(pid: int, registered_at: float) -> bool:
    """Whether the process that registered a worker at ``registered_at`` still runs on this host:
    its pid is alive and was not taken over by a process started later (pid reuse)."""
    if not pid_alive(pid):
        return False
    started = _process_started_at(pid)
    return started is None or started <= registered_at + _START_SLACK_S
