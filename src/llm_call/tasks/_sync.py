"""The task helpers for synchronous code: ``llm_call.tasks.sync``.

They run on llm_call's private event loop thread (the one ``llm_call.call`` uses), whose default
manager executes the tasks submitted here. Calling them inside a running event loop is a
UsageError (use the async helpers there).

Example::

    from llm_call import tasks

    task_id = tasks.sync.submit({"model": "openai/gpt-4o-mini", "prompt": "Hi"})
    print(tasks.sync.wait_result(task_id).text)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._portal import portal

if TYPE_CHECKING:
    from ..types import Response, TaskEvent, TaskRecord, TaskStatus

__all__ = ["SyncTasks"]


class SyncTasks:
    """Blocking twins of the ``llm_call.tasks`` helpers."""

    def submit(
        self,
        request: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        priority: int | None = None,
        **call_kwargs: Any,
    ) -> str:
        from ._default import submit

        return portal.run(submit(request, idempotency_key=idempotency_key, priority=priority, **call_kwargs), "tasks.submit")

    def status(self, task_id: str) -> TaskRecord:
        from ._default import status

        return portal.run(status(task_id), "tasks.status")

    def result(self, task_id: str) -> Response:
        from ._default import result

        return portal.run(result(task_id), "tasks.result")

    def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        from ._default import wait

        return portal.run(wait(task_id, timeout), "tasks.wait")

    def wait_result(self, task_id: str, timeout: float | None = None) -> Response:
        from ._default import wait_result

        return portal.run(wait_result(task_id, timeout), "tasks.wait_result")

    def cancel(self, task_id: str) -> TaskRecord:
        from ._default import cancel

        return portal.run(cancel(task_id), "tasks.cancel")

    def list_tasks(self, status: TaskStatus | str | None = None, limit: int = 100) -> list[TaskRecord]:
        from ._default import list_tasks

        return portal.run(list_tasks(status, limit), "tasks.list_tasks")

    def events(self, task_id: str, after: int = 0, *, follow: bool = True) -> Iterator[TaskEvent]:
        from ._default import events

        return portal.iterate(events(task_id, after, follow=follow), "tasks.events")

    def review(self, task_id: str, *, approve: bool = False, reply: str | None = None) -> TaskRecord:
        from ._default import review

        return portal.run(review(task_id, approve=approve, reply=reply), "tasks.review")
