"""TaskHandle (what a background call returns) and the mapping from a task record to its outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any

from ..errors import (
    HumanReviewNeeded,
    LLMCallError,
    TaskCancelled,
    TaskError,
    TaskInterrupted,
    TaskPending,
    error_from_dict,
)
from ..types import Response, TaskEvent, TaskRecord, TaskStatus

if TYPE_CHECKING:
    from .manager import TaskManager

__all__ = ["TaskHandle", "outcome_of"]


def _stored_error(rec: TaskRecord, expected: type[LLMCallError], message: str) -> LLMCallError:
    if rec.error:
        err = error_from_dict(rec.error)
        if isinstance(err, expected):
            return err
    if issubclass(expected, TaskError):
        return expected(message, task_id=rec.id)
    return expected(message)


def outcome_of(rec: TaskRecord) -> Response:
    """The Response of a succeeded task; any other state raises its typed error.

    failed → the stored error (e.g. ProviderHTTPError, ValidationExhausted); cancelled →
    TaskCancelled; interrupted → TaskInterrupted; needs_review → HumanReviewNeeded (with history);
    queued/running → TaskPending.
    """
    status = rec.status
    if status is TaskStatus.SUCCEEDED:
        if rec.result is None:
            raise LLMCallError(f"task {rec.id} succeeded but its result is missing from the store")
        return Response.from_dict(rec.result)
    if status is TaskStatus.FAILED:
        raise _stored_error(rec, LLMCallError, f"task {rec.id} failed")
    if status is TaskStatus.CANCELLED:
        raise _stored_error(rec, TaskCancelled, f"task {rec.id} was cancelled")
    if status is TaskStatus.INTERRUPTED:
        raise _stored_error(rec, TaskInterrupted, f"task {rec.id} was interrupted")
    if status is TaskStatus.NEEDS_REVIEW:
        err = _stored_error(rec, HumanReviewNeeded, f"task {rec.id} needs a human review")
        err.hint = f"resolve it: llm-call tasks review {rec.id} --approve | --reply TEXT"
        raise err
    raise TaskPending(
        f"task {rec.id} is {status.value}",
        hint=f"wait for it: llm-call tasks wait {rec.id}",
        task_id=rec.id,
    )


class TaskHandle:
    """A background call: await it for the Response, or poll it.

    Example::

        handle = await llm_call.acall("max/sonnet", "Write a poem.", mode="background")
        print(handle.task_id, (await handle.status()).status)
        resp = await handle            # same as await handle.wait()
    """

    __slots__ = ("manager", "task_id")

    def __init__(self, manager: TaskManager, task_id: str) -> None:
        self.manager = manager
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_id!r})"

    async def status(self) -> TaskRecord:
        """The task's current record."""
        return await self.manager.status(self.task_id)

    async def wait(self, timeout: float | None = None) -> Response:
        """Wait until the task ends and return its Response (or raise its typed error).

        With ``timeout`` seconds it raises TaskPending if the task is still going (it goes on).
        """
        rec = await self.manager.wait(self.task_id, timeout=timeout)
        return outcome_of(rec)

    async def result(self) -> Response:
        """The Response now: TaskPending if it has not finished."""
        return await self.manager.result(self.task_id)

    async def cancel(self) -> TaskRecord:
        return await self.manager.cancel(self.task_id)

    def events(self, after: int = 0, *, follow: bool = True) -> AsyncIterator[TaskEvent]:
        return self.manager.events(self.task_id, after=after, follow=follow)

    def __await__(self) -> Generator[Any, None, Response]:
        return self.wait().__await__()
