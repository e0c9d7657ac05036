"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: the Anthropic Messages API on
every route (the translation is in :mod:`._anthropic`).

Like chat completions, ``/v1/messages`` is served on the gateway's fast path (no FastAPI stack);
its OpenAPI operation is added by the app factory from :class:`~._anthropic.MessagesRequest`.
Every failure answers in Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``).

Streaming sends Anthropic's event sequence: ``message_start``, ``ping``, then per content block
``content_block_start``, ``content_block_delta`` (``text_delta`` or ``input_json_delta``),
``content_block_stop``; then ``message_delta`` (stop reason, usage) and ``message_stop``. As on
chat, the first chunk is awaited before the response starts, so an early failure keeps its HTTP
status; a later one is an ``error`` event, after which the stream ends without ``message_stop``.

A streamed request with ``validation`` is answered from the validated call (``acall``) and then
streamed: an Anthropic stream cannot take back the text of a failed attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.responses import Response, StreamingResponse

from ..client import acall, astream
from ..errors import LLMCallError, StreamInterrupted
from ..types import Chunk, Usage
from ._anthropic import (
    CountTokensRequest,
    MessagesRequest,
    anthropic_error,
    call_parts,
    estimate_tokens,
    message_body,
    messages_call_args,
    stop_fields,
    usage_dict,
)
from ._chat import (
    Receive,
    call_failure,
    cancelled_on_disconnect,
    close_stream,
    llm_call_extra,
    timeout_failure,
    upstream_refusal,
)
from ._errors import HTTPFailure
from ._heartbeat import with_heartbeat
from ._schemas import parse_json_body

if TYPE_CHECKING:
    from ._middleware import RequestInfo
    from ._state import ServerState

__all__ = ["encode_failure", "handle_count_tokens", "handle_messages"]

_log = logging.getLogger("llm_call.server")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_STOP = b'event: message_stop\ndata: {"type": "message_stop"}\n\n'


def encode_failure(fail: HTTPFailure) -> bytes:
    """An HTTPFailure as an Anthropic error body."""
    return json.dumps(anthropic_error(fail.status_code, fail.message, fail.extra), ensure_ascii=False, default=str).encode()


def _json(data: Any) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, default=str), 200, media_type="application/json")


async def handle_count_tokens(state: ServerState, info: RequestInfo, raw: bytes) -> Response:
    """``{"input_tokens": N}``: an estimate (see :func:`._anthropic.estimate_tokens`)."""
    req = parse_json_body(CountTokensRequest, raw)
    info.model = req.model
    return _json({"input_tokens": estimate_tokens(req)})


async def handle_messages(state: ServerState, info: RequestInfo, raw: bytes, receive: Receive | None = None) -> Response:
    """One Messages request, from its raw JSON body to the response to send."""
    req = parse_json_body(MessagesRequest, raw)
    kwargs = messages_call_args(req, state.settings)
    info.model = req.model
    if state.settings.server.debug:
        info.prompt = kwargs["messages"]
    if req.stream and "validate" not in kwargs:
        return await _start_stream(state, info, req, kwargs, receive)
    try:
        async with cancelled_on_disconnect(receive), asyncio.timeout(state.settings.server.request_timeout):
            resp = await acall(**kwargs)
    except TimeoutError:
        raise timeout_failure(state, info) from None
    except LLMCallError as exc:
        raise call_failure(state, info, exc) from None
    info.attempts = len(resp.attempts) or 1
    state.metrics.observe_response(resp, info)
    try:
        body = message_body(resp, info.id, llm_call_extra(resp), upstream_refusal(resp.raw))
    except LLMCallError as exc:
        raise call_failure(state, info, exc) from None
    if req.stream:
        info.stream = True
        return StreamingResponse(_replay(body), media_type="text/event-stream", headers=_SSE_HEADERS)
    return _json(body)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, ensure_ascii=False, default=str).encode() + b"\n\n"


def _start_event(message_id: str, model: str, input_tokens: int) -> bytes:
    message: dict[str, Any] = {
        "id": f"msg_{message_id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_dict(input_tokens, 0),
    }
    return _event("message_start", {"type": "message_start", "message": message})


def _end_events(reason: str, usage: dict[str, int], sequence: str | None = None) -> bytes:
    delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
    return _event("message_delta", delta) + _STOP


async def _replay(body: dict[str, Any]) -> AsyncIterator[bytes]:
    """A finished message as the event stream that would have produced it."""
    usage = body["usage"]
    yield _start_event(body["id"][4:], body["model"], usage["input_tokens"]) + _PING
    for index, block in enumerate(body["content"]):
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)}
        yield (
            _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
            + _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            + _event("content_block_stop", {"type": "content_block_stop", "index": index})
        )
    yield _end_events(body["stop_reason"], usage, body["stop_sequence"])


async def _start_stream(
    state: ServerState, info: RequestInfo, req: MessagesRequest, kwargs: dict[str, Any], receive: Receive | None
) -> Response:
    info.stream = True
    kwargs["stream_rescue"] = req.stream_rescue or state.settings.server.stream_rescue
    deadline = asyncio.get_running_loop().time() + state.settings.server.request_timeout
    chunks = astream(**kwargs)
    try:
        async with cancelled_on_disconnect(receive), asyncio.timeout_at(deadline):
            first = await anext(chunks)
    except StopAsyncIteration:
        await close_stream(chunks)
        raise call_failure(state, info, StreamInterrupted("the stream ended before its first chunk", model=req.model)) from None
    except TimeoutError:
        await close_stream(chunks)
        raise timeout_failure(state, info) from None
    except LLMCallError as exc:
        await close_stream(chunks)
        raise call_failure(state, info, exc) from None
    except BaseException:
        await close_stream(chunks)
        raise
    body = _MessageStream(state, info, req.model).events(first, chunks, deadline)
    body = with_heartbeat(body, state.settings.server.sse_heartbeat, _PING)  # Anthropic's keep-alive
    return StreamingResponse(body, media_type="text/event-stream", headers=_SSE_HEADERS)


class _MessageStream:
    """Turns llm_call chunks into Anthropic stream events, one content block at a time."""

    def __init__(self, state: ServerState, info: RequestInfo, requested: str | None) -> None:
        self.state = state
        self.info = info
        self.requested = requested
        self.index = -1  # the open block's index
        self.open: Any = None  # "text", or the tool call index of the open tool_use block
        self.tool_calls = 0

    def _close_block(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open_block(self, key: Any, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self.index += 1
        self.open = key
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block})

    def _text(self, text: str) -> bytes:
        out = b"" if self.open == "text" else self._open_block("text", {"type": "text", "text": ""})
        delta = {"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": text}}
        return out + _event("content_block_delta", delta)

    def _tool_delta(self, delta: Any) -> bytes:
        out = b""
        if self.open != ("tool", delta.index):
            call_id, name, _ = call_parts(delta)
            if not name:
                raise StreamInterrupted(f"a streamed tool call (index {delta.index}) came without its name", model=self.requested)
            self.tool_calls += 1
            block = {"type": "tool_use", "id": call_id or f"toolu_{self.info.id}_{delta.index}", "name": name, "input": {}}
            out = self._open_block(("tool", delta.index), block)
        if delta.arguments:
            json_delta = {"type": "input_json_delta", "partial_json": delta.arguments}
            out += _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": json_delta})
        return out

    async def events(self, first: Chunk, chunks: AsyncIterator[Chunk], deadline: float) -> AsyncIterator[bytes]:
        state, info = self.state, self.info
        finish: str | None = None
        details: dict[str, Any] | None = None
        usage: Usage | None = first.usage
        model = first.model or self.requested or ""
        chunk: Chunk | None = first
        try:
            yield _start_event(info.id, model, usage.prompt_tokens if usage else 0) + _PING
            while chunk is not None:
                if chunk.event is None:
                    out = b""
                    for delta in getattr(chunk, "tool_calls", None) or ():
                        out += self._tool_delta(delta)
                    if chunk.text:
                        out += self._text(chunk.text)
                    if chunk.finish_reason:
                        finish, details = chunk.finish_reason, chunk.data
                        usage = chunk.usage or usage
                    if out:
                        yield out
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    chunk = None
            if finish is None:
                raise StreamInterrupted("the stream ended without a finish reason", model=self.requested)
            reason, sequence = stop_fields(finish, self.tool_calls > 0, details)
            if reason == "tool_use" and not self.tool_calls:
                raise StreamInterrupted("the stream ended for tool calls but carried none", model=self.requested)
            refusal = (details or {}).get("refusal")
            if self.index < 0 and isinstance(refusal, str) and refusal:  # as message_body answers one
                yield self._text(refusal)
                reason = "refusal"
            if self.index < 0:
                yield self._text("")
            state.metrics.observe_usage(model, usage, info)
            info.attempts = info.attempts or 1
            u = usage or Usage()
            yield self._close_block() + _end_events(reason, usage_dict(u.prompt_tokens, u.completion_tokens), sequence)
        except TimeoutError:
            yield _error_event(timeout_failure(state, info))
        except LLMCallError as exc:
            yield _error_event(call_failure(state, info, exc))
        except Exception as exc:
            _log.exception("request %s: stream failed", info.id)
            info.error = type(exc).__name__
            yield _error_event(HTTPFailure(500, f"internal server error during the stream ({type(exc).__name__})", type="server_error"))
        finally:
            await close_stream(chunks)


def _error_event(fail: HTTPFailure) -> bytes:
    return b"event: error\ndata: " + encode_failure(fail) + b"\n\n"
