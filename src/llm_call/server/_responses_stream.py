"""Streamed Responses: ``POST /v1/responses`` with ``stream: true``, and following a background
response with ``GET /v1/responses/{id}?stream=true&starting_after=N``.

The events are OpenAI's, each ``event: <type>`` + ``data: {..., "sequence_number": n}`` with
``n`` counting from 0::

    response.created, response.in_progress
    response.output_item.added            a message item (text) ...
      response.content_part.added
      response.output_text.delta ...
      response.output_text.done
      response.content_part.done
    response.output_item.done
    response.output_item.added            ... or a function_call item per tool call
      response.function_call_arguments.delta ...
      response.function_call_arguments.done
    response.output_item.done
    response.completed                    (or response.failed with the error)

Choices made here:

- A direct stream sends the text as the model writes it. With ``validation`` the answer must be
  whole before it can be checked, so the validated answer is sent as one delta (a client never
  sees the text of a rejected attempt).
- A background response is a task: its stored events hold progress, not text, so following it
  sends ``created``/``in_progress`` at once and the output when the task ends, in one delta.
  The sequence numbers of a task's stream are a function of its final record, so
  ``starting_after=N`` resumes exactly after event ``N`` on any server process.
- An answer cut short (``finish_reason`` ``length``, or ``content_filter``) ends with
  ``response.incomplete`` (status ``incomplete``, ``incomplete_details.reason``
  ``max_output_tokens`` or ``content_filter``) instead of ``response.completed``, as OpenAI's
  does, so a client can tell a truncated answer from a whole one.
- A failure before the first event is an HTTP error status, as on chat completions; after it,
  ``response.failed`` ends the stream. A task resting in ``needs_review`` ends its stream with
  ``response.incomplete`` (``incomplete_details.reason == "needs_review"``); follow again after
  the review.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import LLMCallError, StreamInterrupted
from ..types import Chunk, TaskStatus, ToolCall, ToolCallDelta
from ._errors import HTTPFailure, failure_for

if TYPE_CHECKING:
    from ..types import TaskRecord

__all__ = [
    "EventWriter",
    "OutputEvents",
    "finished",
    "follow_task",
    "function_call_item",
    "message_item",
    "output_items",
    "stream_chunks",
]

_KEEPALIVE_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


#: ``incomplete_details.reason`` of an answer that ended for this finish reason
_INCOMPLETE = {"length": "max_output_tokens", "max_tokens": "max_output_tokens", "content_filter": "content_filter"}


def finished(body: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """``body`` as a finished answer: status ``completed``, or ``incomplete`` with its reason when
    the answer was cut short (the model hit ``max_output_tokens``, or a content filter)."""
    reason = _INCOMPLETE.get(finish_reason or "")
    if reason is None:
        return {**body, "status": "completed"}
    return {**body, "status": "incomplete", "incomplete_details": {"reason": reason}}


def _end_event(response: dict[str, Any]) -> str:
    return "response.incomplete" if response.get("status") == "incomplete" else "response.completed"


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
    return {"type": "message", "id": f"msg_{item_id}", "status": status, "role": "assistant", "content": content}


def function_call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{item_id}",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if status == "completed" else "",
        "status": status,
    }


def output_items(item_id: str, text: str, calls: list[ToolCall]) -> list[dict[str, Any]]:
    """The ``output`` list: the message (if there is text or no call), then one item per call."""
    out = [message_item(item_id, text)] if text or not calls else []
    out += [function_call_item(f"{item_id}_{i}", c) for i, c in enumerate(calls)]
    return out


class EventWriter:
    """Numbers events from 0 and drops those at or before ``starting_after`` (a resume)."""

    def __init__(self, starting_after: int | None = None) -> None:
        self.seq = -1
        self.after = -1 if starting_after is None else starting_after

    def __call__(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        if self.seq <= self.after:
            return b""
        data = {"type": kind, "sequence_number": self.seq, **fields}
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


class OutputEvents:
    """Turns chunks (text deltas and tool-call deltas) into output item events.

    ``items`` collects the finished output items in order; ``text`` all text sent. Items finish
    one after another, as OpenAI sends them: the next item's ``output_item.added`` comes after the
    previous item's ``output_item.done``. Upstreams stream parallel tool calls one after another
    too; one that goes back to a call after the next began is a StreamInterrupted.
    """

    def __init__(self, emit: EventWriter, item_id: str) -> None:
        self._message_item = message_item
        self._function_call_item = function_call_item
        self.emit = emit
        self.item_id = item_id
        self.items: dict[int, dict[str, Any]] = {}
        self.text = ""
        self.calls: list[ToolCall] = []
        self._next = 0
        self._msg: tuple[int, str, list[str]] | None = None  # output index, item id, parts
        self._messages = 0
        self._tools: dict[int, tuple[int, str, list[Any]]] = {}  # delta index -> (index, id, [call_id, name, parts])
        self._closed: set[int] = set()  # delta indexes of the finished tool calls

    def _msg_open(self) -> Iterable[bytes]:
        yield from self._tools_close()
        index = self._next
        self._next += 1
        suffix = f"_{self._messages}" if self._messages else ""
        self._messages += 1
        item = self._message_item(self.item_id + suffix, "", status="in_progress")
        self._msg = (index, item["id"], [])
        yield self.emit("response.output_item.added", output_index=index, item=item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield self.emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part)

    def _msg_close(self) -> Iterable[bytes]:
        if self._msg is None:
            return
        index, item_id, parts = self._msg
        self._msg = None
        text = "".join(parts)
        ids = {"item_id": item_id, "output_index": index, "content_index": 0}
        yield self.emit("response.output_text.done", **ids, text=text, logprobs=[])
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        yield self.emit("response.content_part.done", **ids, part=part)
        item = self._message_item(item_id.removeprefix("msg_"), text)
        self.items[index] = item
        yield self.emit("response.output_item.done", output_index=index, item=item)

    def text_delta(self, delta: str) -> Iterable[bytes]:
        if self._msg is None:
            yield from self._msg_open()
        assert self._msg is not None
        index, item_id, parts = self._msg
        parts.append(delta)
        self.text += delta
        yield self.emit(
            "response.output_text.delta", item_id=item_id, output_index=index, content_index=0, delta=delta, logprobs=[]
        )

    def tool_delta(self, d: ToolCallDelta) -> Iterable[bytes]:
        state = self._tools.get(d.index)
        if state is None:
            if d.index in self._closed:
                raise StreamInterrupted(f"the stream went back to tool call {d.index} after the next output began")
            yield from self._msg_close()
            yield from self._tools_close()
            index = self._next
            self._next += 1
            call = ToolCall(id=d.id or f"call_{self.item_id}_{d.index}", name=d.name or "", arguments="")
            item = self._function_call_item(f"{self.item_id}_{d.index}", call, status="in_progress")
            state = self._tools[d.index] = (index, item["id"], [call.id, call.name, []])
            yield self.emit("response.output_item.added", output_index=index, item=item)
        elif d.name:
            state[2][1] += d.name
        if d.arguments:
            state[2][2].append(d.arguments)
            yield self.emit(
                "response.function_call_arguments.delta", item_id=state[1], output_index=state[0], delta=d.arguments
            )

    def chunk(self, chunk: Chunk) -> Iterable[bytes]:
        if self._tools:  # a call is being streamed: its fragments first, any text after it
            for d in chunk.tool_calls:
                yield from self.tool_delta(d)
            if chunk.text:
                yield from self.text_delta(chunk.text)
            return
        if chunk.text:
            yield from self.text_delta(chunk.text)
        for d in chunk.tool_calls:
            yield from self.tool_delta(d)

    def close(self) -> Iterable[bytes]:
        """Finish every open item (an answer with nothing in it still gets an empty message)."""
        if self._next == 0:
            yield from self._msg_open()
        yield from self._msg_close()
        yield from self._tools_close()

    def _tools_close(self) -> Iterable[bytes]:
        for key in sorted(self._tools):
            self._closed.add(key)
            index, item_id, (call_id, name, parts) = self._tools[key]
            call = ToolCall(id=call_id, name=name, arguments="".join(parts) or "{}")
            self.calls.append(call)
            yield self.emit(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=name,
                arguments=call.arguments,
            )
            item = self._function_call_item(item_id.removeprefix("fc_"), call)
            self.items[index] = item
            yield self.emit("response.output_item.done", output_index=index, item=item)
        self._tools.clear()

    @property
    def has_calls(self) -> bool:
        return bool(self._tools or self.calls)

    def output(self) -> list[dict[str, Any]]:
        return [self.items[i] for i in sorted(self.items)]


def _failed_body(body: dict[str, Any], fail: HTTPFailure, output: list[dict[str, Any]]) -> dict[str, Any]:
    err = json.loads(fail.encode()).get("error") or {}
    return {
        **body,
        "status": "failed",
        "output": output,
        "error": {"code": str(err.get("code") or err.get("type") or "server_error"), "message": str(err.get("message"))},
    }


async def stream_chunks(
    body: dict[str, Any],
    item_id: str,
    first: Chunk | None,
    chunks: AsyncIterator[Chunk],
    deadline: float,
    on_error: Any,
    on_done: Any,
) -> AsyncIterator[bytes]:
    """A direct stream: ``first`` (already awaited) and the rest of ``chunks`` as response events.

    ``on_error(exc) -> HTTPFailure`` records a failure; ``on_done(final_chunk, output_events)``
    returns the completed response object.
    """
    emit = EventWriter()
    out = OutputEvents(emit, item_id)
    yield emit("response.created", response={**body, "status": "in_progress"})
    yield emit("response.in_progress", response={**body, "status": "in_progress"})
    final: Chunk | None = None
    chunk = first
    try:
        while chunk is not None:
            if chunk.event is None:
                for event in out.chunk(chunk):
                    yield event
                if chunk.finish_reason:
                    final = chunk
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                chunk = None
        if final is None:
            raise StreamInterrupted("the stream ended without a finish reason", model=body.get("model"))
        if final.finish_reason == "tool_calls" and not out.has_calls:
            raise StreamInterrupted("the stream finished with tool_calls but carried no tool call", model=body.get("model"))
        for event in out.close():
            yield event
        done = on_done(final, out)
        yield emit(_end_event(done), response=done)
    except (TimeoutError, LLMCallError) as exc:
        fail: HTTPFailure = on_error(exc)
        yield emit("response.failed", response=_failed_body(body, fail, out.output()))
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _ticks(mgr: Any, task_id: str) -> AsyncIterator[str | None]:
    """The kinds of the task's events as they come, ``None`` every 15 s of quiet (keep-alive)."""
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async with contextlib.aclosing(mgr.events(task_id, 0, follow=True)) as events:
                async for event in events:
                    queue.put_nowait(event.kind)
        except LLMCallError as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    producer = asyncio.create_task(pump(), name=f"llm_call-responses-sse:{task_id}")
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), _KEEPALIVE_S)
            except TimeoutError:
                yield None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def follow_task(
    mgr: Any, rec: TaskRecord, starting_after: int | None, response_from_task: Callable[[TaskRecord], dict[str, Any]]
) -> AsyncIterator[bytes]:
    """A background response as events: lifecycle at once, the output when the task ends.

    ``response_from_task`` builds the response object of a task record.
    """
    emit = EventWriter(starting_after)
    body = response_from_task(rec)
    status = "queued" if rec.status is TaskStatus.QUEUED else "in_progress"
    start = {**body, "status": status, "output": [], "output_text": "", "usage": None, "error": None}
    yield emit("response.created", response=start)
    started = rec.status is not TaskStatus.QUEUED
    if started:
        yield emit("response.in_progress", response={**start, "status": "in_progress"})
    try:
        async for kind in _ticks(mgr, rec.id):
            if kind is None:
                yield b": keep-alive\n\n"
            elif not started and kind != "queued":
                started = True
                yield emit("response.in_progress", response={**start, "status": "in_progress"})
        rec = await mgr.status(rec.id)
    except LLMCallError as exc:
        yield emit("response.failed", response=_failed_body(start, failure_for(exc), []))
        return
    if not started:
        yield emit("response.in_progress", response={**start, "status": "in_progress"})
    body = response_from_task(rec)
    if rec.status is TaskStatus.SUCCEEDED:
        out = OutputEvents(emit, rec.id)
        result = rec.result or {}
        text = str(result.get("text") or "")
        calls = [ToolCall.from_dict(c) for c in result.get("tool_calls") or ()]
        if text:
            for event in out.text_delta(text):
                yield event
        for i, c in enumerate(calls):
            for event in out.tool_delta(ToolCallDelta(i, c.id, c.name, c.arguments)):
                yield event
        for event in out.close():
            yield event
        yield emit(_end_event(body), response=body)
    elif rec.status is TaskStatus.NEEDS_REVIEW:
        yield emit("response.incomplete", response={**body, "incomplete_details": {"reason": "needs_review"}})
    else:
        if body.get("error") is None:
            body["error"] = {"code": rec.status.value, "message": f"the task ended {rec.status.value}"}
        yield emit("response.failed", response=body)
