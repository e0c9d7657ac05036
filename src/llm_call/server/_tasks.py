"""The task API: everything the task manager does, over HTTP.

==========================================  ==============================================
``POST /v1/tasks``                           submit (202, the task record); idempotent with
                                             ``idempotency_key``
``GET /v1/tasks?status=&model=&before=``     list, newest first; ``model`` is a glob on the
                                             route, ``before`` the ``next_before`` of the
                                             previous page (``has_more`` says there is one)
``GET /v1/tasks/{id}``                       the record: status, progress, result, error
``GET /v1/tasks/{id}/events``                SSE, ``id:`` = the event's seq; resume with the
                                             ``Last-Event-ID`` header or ``?after=N``;
                                             ``?follow=false`` sends what exists and ends
``POST /v1/tasks/{id}/cancel``               cancel (queued: at once; running: stopped)
``POST /v1/tasks/{id}/review``               ``{"approve": true}`` or ``{"reply": "..."}``
==========================================  ==============================================

A task record is the store's record as JSON; the server's API keys are never part of it.

Each API key sees only its own tasks: a task records the tenant of the key that submitted it
(``tenant``, a hash of the key), the list shows only the caller's, and reading, following,
cancelling or reviewing another key's task is a 404 like an unknown id. Idempotency keys are
per tenant. ``server.admin_keys`` see and control every task; a server without keys has one tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Body, FastAPI, Header, Query, Request
from starlette.responses import Response, StreamingResponse

from ..errors import LLMCallError, TaskNotFound
from ..types import TaskEvent, TaskRecord, TaskStatus
from ._auth import opaque_worker, sees_operator_details
from ._background import manager
from ._errors import HTTPFailure, failure_for
from ._heartbeat import with_heartbeat
from ._schemas import ReviewRequest, TaskRequest, call_options

if TYPE_CHECKING:
    from ..config import Settings
    from ._middleware import RequestInfo
    from ._state import ServerState

__all__ = ["register", "task_body"]

_KEEPALIVE_S = 15.0
#: the largest event seq a request may name (the stores keep 64-bit integers)
_MAX_SEQ = 2**62
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_STATUSES = ", ".join(s.value for s in TaskStatus)


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, default=str), status, media_type="application/json")


def task_body(rec: TaskRecord, operator: bool = True) -> dict[str, Any]:
    """A task record on the wire; without ``operator`` its worker ids are opaque (they name the
    host and process that ran it)."""
    body = rec.to_dict()
    body["object"] = "llm_call.task"
    if not operator:
        body["worker"], body["owner"] = opaque_worker(rec.worker), opaque_worker(rec.owner)
    return body


def _operator(request: Request, state: ServerState) -> bool:
    return sees_operator_details(request.scope["llm_call"].caller, state.auth)


def _args(req: TaskRequest, settings: Settings) -> dict[str, Any]:
    if (req.prompt is None) == (req.messages is None):
        raise HTTPFailure(400, "give exactly one of prompt and messages", param="prompt")
    args: dict[str, Any] = {"model": req.model}
    if req.prompt is not None:
        args["prompt"] = req.prompt
    else:
        args["messages"] = req.messages
    for name in ("system", "temperature", "max_tokens", "timeout"):
        value = getattr(req, name)
        if value is not None:
            args[name] = value
    args.update(call_options(req, settings))
    if req.metadata:
        args["_meta"] = {"kind": "task", "metadata": req.metadata}
    return args


async def _record(state: ServerState, request: Request, task_id: str) -> TaskRecord:
    """The task, if the caller may see it; 404 (the same as for an unknown id) otherwise."""
    info: RequestInfo = request.scope["llm_call"]
    info.task_id = task_id
    try:
        rec: TaskRecord | None = await manager(state).status(task_id)
    except TaskNotFound:
        rec = None
    if rec is None or not info.caller.may_see(rec.tenant):
        raise HTTPFailure(404, f"no task with id {task_id!r}", param="task_id", code="task_not_found")
    return rec


def _sse(event: TaskEvent, operator: bool) -> bytes:
    body = event.to_dict()
    if not operator and isinstance(body.get("data"), dict) and "worker" in body["data"]:
        body["data"] = {**body["data"], "worker": opaque_worker(body["data"]["worker"])}
    data = json.dumps(body, ensure_ascii=False, default=str)
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()


async def _follow(mgr: Any, task_id: str, after: int, follow: bool, operator: bool) -> AsyncIterator[bytes]:
    """The task's events as SSE, with a keep-alive comment while nothing happens."""
    # unbounded: events are small and the manager throttles chunk events to two a second
    queue: asyncio.Queue[TaskEvent | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async with contextlib.aclosing(mgr.events(task_id, after, follow=follow)) as events:
                async for event in events:
                    queue.put_nowait(event)
        except LLMCallError as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    producer = asyncio.create_task(pump(), name=f"llm_call-sse:{task_id}")
    try:
        yield b"retry: 2000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), _KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                fail = failure_for(item) if isinstance(item, LLMCallError) else HTTPFailure(500, str(item))
                yield b"event: error\ndata: " + fail.encode() + b"\n\n"
                return
            yield _sse(item, operator)
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


def register(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/tasks", tags=["tasks"], summary="Submit a background task", status_code=202, response_model=None)
    async def submit_task(request: Request, req: TaskRequest = Body(...)) -> Response:
        info: RequestInfo = request.scope["llm_call"]
        info.model = req.model
        args = _args(req, state.settings)
        mgr = manager(state)
        task_id = await mgr.submit(
            args, idempotency_key=req.idempotency_key, priority=req.priority, tenant=info.caller.tenant
        )
        info.task_id = task_id
        return _json(task_body(await mgr.status(task_id), _operator(request, state)), 202)

    @app.get("/v1/tasks", tags=["tasks"], summary="List tasks, newest first", response_model=None)
    async def list_tasks(
        request: Request,
        status: str | None = Query(default=None, description=f"One of: {_STATUSES}"),
        model: str | None = Query(
            default=None, max_length=200, description="Only tasks whose route (the model after aliases) matches this glob"
        ),
        before: str | None = Query(
            default=None, max_length=100, description="A task id: the page of tasks created before it (next_before of the last page)"
        ),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> Response:
        if status is not None and status not in {s.value for s in TaskStatus}:
            raise HTTPFailure(400, f"unknown task status {status!r}; one of {_STATUSES}", param="status")
        caller = request.scope["llm_call"].caller
        tenant = None if caller.admin else caller.tenant
        if before and tenant is not None:
            try:
                mark = await manager(state).status(before)
            except TaskNotFound:
                mark = None
            if mark is None or not caller.may_see(mark.tenant):
                before = "tk_unknown"  # another key's task: a page as for an unknown id (empty)
        # one more than asked says whether there is a next page
        records = await manager(state).list_tasks(status, limit + 1, before=before or None, route=model or None, tenant=tenant)
        page = records[:limit]
        has_more = len(records) > limit
        return _json(
            {
                "object": "list",
                "data": [task_body(r, _operator(request, state)) for r in page],
                "has_more": has_more,
                "next_before": page[-1].id if has_more else None,
            }
        )

    @app.get("/v1/tasks/{task_id}", tags=["tasks"], summary="A task's record", response_model=None)
    async def get_task(request: Request, task_id: str) -> Response:
        return _json(task_body(await _record(state, request, task_id), _operator(request, state)))

    @app.get(
        "/v1/tasks/{task_id}/events",
        tags=["tasks"],
        summary="A task's events as Server-Sent Events (resumable with Last-Event-ID)",
        response_model=None,
        responses={200: {"description": "text/event-stream of task events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def task_events(
        request: Request,
        task_id: str,
        after: int | None = Query(default=None, ge=0, le=_MAX_SEQ, description="Send events after this seq"),
        follow: bool = Query(default=True, description="Keep the stream open until the task ends"),
        last_event_id: str | None = Header(default=None, description="Resume after this event id (seq)"),
    ) -> Response:
        start = after or 0
        if last_event_id is not None and after is None:
            try:
                start = min(max(0, int(last_event_id.strip())), _MAX_SEQ)  # past the last: nothing
            except ValueError:
                raise HTTPFailure(400, "Last-Event-ID must be an event seq number", param="Last-Event-ID") from None
        await _record(state, request, task_id)  # 404 before the stream starts
        body = with_heartbeat(_follow(manager(state), task_id, start, follow, _operator(request, state)),
                              state.settings.server.sse_heartbeat)
        return StreamingResponse(body, media_type="text/event-stream", headers=_SSE_HEADERS)

    @app.post("/v1/tasks/{task_id}/cancel", tags=["tasks"], summary="Cancel a task", response_model=None)
    async def cancel_task(request: Request, task_id: str) -> Response:
        await _record(state, request, task_id)
        return _json(task_body(await manager(state).cancel(task_id), _operator(request, state)))

    @app.post("/v1/tasks/{task_id}/review", tags=["tasks"], summary="Resolve a task waiting for a human review", response_model=None)
    async def review_task(request: Request, task_id: str, req: ReviewRequest = Body(...)) -> Response:
        if bool(req.approve) == (req.reply is not None):
            raise HTTPFailure(400, 'give either {"approve": true} or {"reply": "..."}', param="approve")
        await _record(state, request, task_id)
        rec = await manager(state).review(task_id, approve=bool(req.approve), reply=req.reply)
        return _json(task_body(rec, _operator(request, state)))
