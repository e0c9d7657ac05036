"""The OpenAI Responses API, with background mode on the task manager.

``POST /v1/responses`` with ``background: true`` submits the call as a task and returns at once
(status ``queued``, id ``resp_<task id>``); ``GET /v1/responses/{id}`` reads the task and answers
the same object with status ``queued``, ``in_progress``, ``completed`` (``incomplete`` when the
answer was cut by ``max_output_tokens``), ``failed`` or ``cancelled`` (and ``output`` /
``output_text`` when done); ``POST /v1/responses/{id}/cancel``
cancels it. A ``max/*`` call that takes minutes survives any client timeout: the client polls.
Without ``background`` the call runs directly and the answer comes back in the same request (it
is not stored, so it cannot be retrieved later).

The object carries the fields the official SDK's ``Response`` model requires (``id``,
``created_at``, ``model``, ``object``, ``output``, ``parallel_tool_calls``, ``tool_choice``,
``tools``...), so ``client.responses.create(..., background=True)`` and
``client.responses.retrieve(id)`` work unmodified; llm_call's own record (task status, attempts,
the typed error) is in the extra field ``llm_call``.

The Responses fields a task cannot run with (``instructions`` as given, ``metadata``, the
kind of object) travel with the task under the ``_meta`` key of its stored arguments, which the
task runner drops before the call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Body, FastAPI, Query, Request
from starlette.responses import Response, StreamingResponse

from ..client import acall, astream
from ..errors import LLMCallError, RateLimited, TaskNotFound
from ..types import Chunk, TaskRecord, TaskStatus, ToolCall, ToolCallDelta
from ._background import manager
from ._chat import cancelled_on_disconnect
from ._errors import HTTPFailure, failure_for
from ._heartbeat import with_heartbeat
from ._responses_stream import (
    SSE_HEADERS,
    OutputEvents,
    finished,
    follow_task,
    output_items,
    stream_chunks,
)
from ._schemas import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputMessage,
    ResponsesRequest,
    call_options,
)

if TYPE_CHECKING:
    from ..config import Settings
    from ..types import Response as LLMResponse
    from ._middleware import RequestInfo
    from ._state import ServerState

__all__ = ["register"]

_STATUS = {
    TaskStatus.QUEUED: "queued",
    TaskStatus.RUNNING: "in_progress",
    TaskStatus.NEEDS_REVIEW: "in_progress",  # waits for a human: POST /v1/tasks/{id}/review
    TaskStatus.SUCCEEDED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.INTERRUPTED: "failed",
    TaskStatus.CANCELLED: "cancelled",
}
_PREFIX = "resp_"


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, default=str), status, media_type="application/json")


def task_id_of(response_id: str) -> str:
    return response_id[len(_PREFIX):] if response_id.startswith(_PREFIX) else response_id


def _part(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise HTTPFailure(400, f"{where}.image_url must be a URL or data URL string", param=f"{where}.image_url")
        return {"type": "image_url", "image_url": {"url": url}}
    raise HTTPFailure(400, f"{where}.type {kind!r} is not supported (input_text, input_image)", param=f"{where}.type")


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        if not req.input.strip():
            raise HTTPFailure(400, "input is empty", param="input")
        messages.append({"role": "user", "content": req.input})
        return messages
    if not req.input:
        raise HTTPFailure(400, "input is an empty list; give a prompt string or messages", param="input")
    for i, item in enumerate(req.input):
        if isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                # the text and the (parallel) calls of one turn: one assistant message, as the model
                # answered; two assistant turns in a row are refused by chat templates that alternate
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output
            if isinstance(output, list):
                output = "".join(str(p.get("text", "")) for p in output if isinstance(p, dict))
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        else:
            messages.append(_message(item, f"input.{i}"))
    return messages


def _message(item: InputMessage, where: str) -> dict[str, Any]:
    content: str | list[dict[str, Any]] = item.content
    if isinstance(content, list):
        content = [_part(p, f"{where}.content.{j}") for j, p in enumerate(content)]
    return {"role": item.role, "content": content}


def _chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses function tools (flat) as chat completion tools (nested under ``function``)."""
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise HTTPFailure(
                400,
                f"tools.{i}.type {tool.get('type')!r} is not supported: only function tools "
                "(hosted tools such as web_search run on OpenAI's servers)",
                param=f"tools.{i}.type",
            )
        if "function" in tool:  # already in the chat shape
            out.append({"type": "function", "function": tool["function"]})
            continue
        if not isinstance(tool.get("name"), str):
            raise HTTPFailure(400, f"tools.{i}.name is missing", param=f"tools.{i}.name")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as a chat ``response_format`` (None for plain text)."""
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": str(fmt["type"])}


def call_args(req: ResponsesRequest, settings: Settings) -> dict[str, Any]:
    """acall keyword arguments for a Responses request."""
    args: dict[str, Any] = {"model": req.model, "messages": _messages(req)}
    if req.temperature is not None:
        args["temperature"] = req.temperature
    if req.top_p is not None:
        args["top_p"] = req.top_p
    if req.max_output_tokens is not None:
        args["max_tokens"] = req.max_output_tokens
    if req.tools:
        args["tools"] = _chat_tools(req.tools)
    if req.tool_choice is not None:
        args["tool_choice"] = _chat_tool_choice(req.tool_choice)
    if req.parallel_tool_calls is not None:
        args["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = _response_format(req.text)
    if fmt is not None:
        args["response_format"] = fmt
    args.update(call_options(req, settings))
    return args


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    inp = int(usage.get("prompt_tokens") or 0)
    out = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inp + out,
    }


def _error(err: dict[str, Any] | None, status: TaskStatus) -> dict[str, Any] | None:
    if status not in (TaskStatus.FAILED, TaskStatus.INTERRUPTED):
        return None
    err = err or {}
    code = "rate_limit_exceeded" if err.get("type") == RateLimited.__name__ else "server_error"
    message = str(err.get("message") or f"the task ended {status.value}")
    if err.get("type"):
        message = f"{err['type']}: {message}"
    return {"code": code, "message": message}


def _base(
    response_id: str, model: str, created: float, meta: dict[str, Any], spec: dict[str, Any], background: bool
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created),
        "model": model,
        "background": background,
        "instructions": meta.get("instructions"),
        "metadata": meta.get("metadata") or {},
        "parallel_tool_calls": meta.get("parallel_tool_calls", True) is not False,
        "tool_choice": meta.get("tool_choice") or "auto",
        "tools": meta.get("tools") or [],
        "temperature": spec.get("temperature"),
        "top_p": spec.get("top_p"),
        "max_output_tokens": spec.get("max_tokens"),
        "previous_response_id": None,
        "reasoning": None,
        "store": background,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "user": None,
        "incomplete_details": None,
        "error": None,
        "output": [],
        "output_text": "",
        "usage": None,
    }


def response_meta(req: ResponsesRequest) -> dict[str, Any]:
    """The request fields the response object echoes (stored with a background task)."""
    meta: dict[str, Any] = {"instructions": req.instructions, "metadata": req.metadata}
    if req.tools:
        meta["tools"] = req.tools
    if req.tool_choice is not None:
        meta["tool_choice"] = req.tool_choice
    if req.parallel_tool_calls is not None:
        meta["parallel_tool_calls"] = req.parallel_tool_calls
    return meta


def response_from_task(rec: TaskRecord) -> dict[str, Any]:
    """The Responses object of a task (any task, not only those created through /v1/responses)."""
    spec = rec.request or {}
    raw_meta = spec.get("_meta")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    result = rec.result or {}
    model = str(result.get("model") or spec.get("model") or "")
    body = _base(_PREFIX + rec.id, model, rec.created_at, meta, spec, background=True)
    body["status"] = _STATUS.get(rec.status, "in_progress")
    if rec.status is TaskStatus.SUCCEEDED and rec.result is not None:
        text = str(result.get("text") or "")
        calls = [ToolCall.from_dict(c) for c in result.get("tool_calls") or ()]
        body["output"] = output_items(rec.id, text, calls)
        body["output_text"] = text
        body["usage"] = _usage(result.get("usage"))
        body = finished(body, result.get("finish_reason"))
    body["error"] = _error(rec.error, rec.status)
    body["llm_call"] = {
        "task_id": rec.id,
        "task_status": rec.status.value,
        "attempts": result.get("attempts") or (rec.error or {}).get("fields", {}).get("attempts") or [],
        "executions": rec.attempts,
        "progress": rec.progress,
        "error": rec.error,
        "cost_usd": result.get("cost_usd"),
    }
    return body


def response_from_answer(resp: LLMResponse, request_id: str, req: ResponsesRequest) -> dict[str, Any]:
    from ._chat import llm_call_extra

    spec = {"temperature": req.temperature, "top_p": req.top_p, "max_tokens": req.max_output_tokens}
    meta = response_meta(req)
    body = _base(_PREFIX + request_id, resp.model, time.time(), meta, spec, background=False)
    body["output"] = output_items(request_id, resp.text, resp.tool_calls)
    body["output_text"] = resp.text
    body["usage"] = _usage(resp.usage.to_dict())
    body["llm_call"] = llm_call_extra(resp)
    return finished(body, resp.finish_reason)


async def _start_stream(
    state: ServerState, info: RequestInfo, req: ResponsesRequest, args: dict[str, Any], receive: Any
) -> Response:
    """A direct streamed response: the first chunk is awaited first, so an early failure keeps
    its HTTP status; with validation the whole validated answer is awaited (see the stream module)."""
    from ._chat import ClientGone

    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.server.request_timeout

    def on_error(exc: BaseException) -> HTTPFailure:
        if isinstance(exc, LLMCallError):
            state.metrics.observe_error(exc)
            info.error = type(exc).__name__
            return failure_for(exc)
        info.error = "request_timeout"
        return HTTPFailure(504, "the call did not finish within server.request_timeout", type="timeout_error", code="request_timeout")

    meta = response_meta(req)
    spec = {"temperature": req.temperature, "top_p": req.top_p, "max_tokens": req.max_output_tokens}
    body = _base(_PREFIX + info.id, req.model or "", time.time(), meta, spec, background=False)
    chunks: AsyncIterator[Chunk]
    try:
        async with cancelled_on_disconnect(receive), asyncio.timeout_at(deadline):
            if "validate" in args:
                whole = await acall(**args)
                chunks = _whole(whole)
            else:
                # a client cannot take back text it was sent: never "restart" (the library default)
                chunks = astream(**args, stream_rescue=req.stream_rescue or state.settings.server.stream_rescue)
            try:
                first: Chunk | None = await anext(chunks)
            except StopAsyncIteration:
                first = None
    except ClientGone:
        raise
    except (TimeoutError, LLMCallError) as exc:
        raise on_error(exc) from None
    if first is not None and first.model:
        body["model"] = first.model

    def on_done(final: Chunk, out: OutputEvents) -> dict[str, Any]:
        done = finished({**body, "output": out.output(), "output_text": out.text}, final.finish_reason)
        done["usage"] = _usage(final.usage.to_dict()) if final.usage else None
        if final.model:
            done["model"] = final.model
        state.metrics.observe_usage(str(done["model"]), final.usage, info)
        info.attempts = final.attempt
        return done

    events = with_heartbeat(stream_chunks(body, info.id, first, chunks, deadline, on_error, on_done), state.settings.server.sse_heartbeat)
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


async def _whole(resp: LLMResponse) -> AsyncIterator[Chunk]:
    """A whole (validated) answer as the chunks of a stream."""
    deltas = [ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(resp.tool_calls)]
    if resp.text or deltas:
        yield Chunk(text=resp.text, model=resp.model, tool_calls=deltas)
    finish = resp.finish_reason or ("tool_calls" if deltas else "stop")
    yield Chunk(model=resp.model, finish_reason=finish, usage=resp.usage, attempt=len(resp.attempts) or 1)


async def _record(state: ServerState, request: Request, response_id: str) -> TaskRecord:
    """The background response, if the caller's key may see it (404 as for an unknown id otherwise)."""
    caller = request.scope["llm_call"].caller
    try:
        rec: TaskRecord | None = await manager(state).status(task_id_of(response_id))
    except TaskNotFound:
        rec = None
    if rec is None or not caller.may_see(rec.tenant):
        raise HTTPFailure(404, f"no response with id {response_id!r}", param="response_id", code="response_not_found")
    return rec


def register(app: FastAPI, state: ServerState) -> None:
    @app.post(
        "/v1/responses",
        tags=["responses"],
        summary="Create a response (background: true runs it as a task and returns at once)",
        response_model=None,
    )
    async def create_response(request: Request, req: ResponsesRequest = Body(...)) -> Response:
        info: RequestInfo = request.scope["llm_call"]
        info.model = req.model
        args = call_args(req, state.settings)
        if state.settings.server.debug:
            info.prompt = args["messages"]
        if req.stream and not req.background:
            info.stream = True
            return await _start_stream(state, info, req, args, request.receive)
        if not req.background:
            try:
                async with cancelled_on_disconnect(request.receive), asyncio.timeout(state.settings.server.request_timeout):
                    resp = await acall(**args)
            except TimeoutError:
                raise HTTPFailure(504, "the call did not finish within server.request_timeout; "
                                  "use background=true for long calls", type="timeout_error", code="request_timeout") from None
            except LLMCallError as exc:
                state.metrics.observe_error(exc)
                info.error = type(exc).__name__
                raise failure_for(exc) from None
            state.metrics.observe_response(resp, info)
            info.attempts = len(resp.attempts) or 1
            return _json(response_from_answer(resp, info.id, req))
        args["_meta"] = {"kind": "response", **response_meta(req)}
        mgr = manager(state)
        task_id = await mgr.submit(args, priority=req.priority, tenant=info.caller.tenant)
        info.task_id = task_id
        rec = await mgr.status(task_id)
        if req.stream:
            info.stream = True
            body = with_heartbeat(follow_task(mgr, rec, None, response_from_task), state.settings.server.sse_heartbeat)
            return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
        return _json(response_from_task(rec))

    @app.get(
        "/v1/responses/{response_id}",
        tags=["responses"],
        summary="Retrieve a background response (stream=true follows it as events)",
        response_model=None,
    )
    async def retrieve_response(
        request: Request,
        response_id: str,
        stream: bool = Query(default=False, description="Follow the response as Server-Sent Events"),
        starting_after: int | None = Query(default=None, ge=0, description="With stream: resume after this sequence_number"),
    ) -> Response:
        rec = await _record(state, request, response_id)
        request.scope["llm_call"].task_id = rec.id
        if stream:
            request.scope["llm_call"].stream = True
            body = with_heartbeat(follow_task(manager(state), rec, starting_after, response_from_task), state.settings.server.sse_heartbeat)
            return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
        if starting_after is not None:
            raise HTTPFailure(400, "starting_after applies only with stream=true", param="starting_after")
        return _json(response_from_task(rec))

    @app.post("/v1/responses/{response_id}/cancel", tags=["responses"], summary="Cancel a background response", response_model=None)
    async def cancel_response(request: Request, response_id: str) -> Response:
        rec = await _record(state, request, response_id)
        request.scope["llm_call"].task_id = rec.id
        if not rec.status.is_final:
            rec = await manager(state).cancel(rec.id)
        return _json(response_from_task(rec))
