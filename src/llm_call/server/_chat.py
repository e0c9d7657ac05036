"""``POST /v1/chat/completions``: the OpenAI chat format onto :func:`llm_call.acall`/``astream``.

This is the hot path: the gateway calls :func:`handle_chat` directly, past FastAPI's middleware
stack and router (~30 µs of CPU a request, measured); it validates the raw body with pydantic-core
in one pass and returns pre-encoded JSON. Its OpenAPI description is added by the app factory
from the same pydantic model.

Streaming: the first chunk is awaited before the response starts, so a failure that happens
before any text (unknown model, refused connection, 5xx) still gets its proper HTTP status.
After that a failure is sent as ``data: {"error": {...}}`` and the stream ends without
``data: [DONE]``: a client can always tell a cut stream from a finished one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..client import acall, astream
from ..errors import LLMCallError, MalformedResponse, StreamInterrupted
from ..types import Attempt, Chunk, Usage
from ._errors import HTTPFailure, failure_for
from ._heartbeat import with_heartbeat
from ._schemas import PASSTHROUGH, ChatCompletionRequest, call_options, parse_json_body

if TYPE_CHECKING:
    from ..config import Settings
    from ..types import Response as LLMResponse
    from ._middleware import RequestInfo
    from ._state import ServerState

__all__ = [
    "ClientGone",
    "attempt_dict",
    "call_failure",
    "cancelled_on_disconnect",
    "chat_completions",
    "close_stream",
    "completion_body",
    "handle_chat",
    "llm_call_extra",
    "timeout_failure",
    "upstream_refusal",
]

_log = logging.getLogger("llm_call.server")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"


def chat_call_args(req: ChatCompletionRequest, settings: Settings) -> dict[str, Any]:
    """acall keyword arguments for a chat completion request."""
    kwargs: dict[str, Any] = {"model": req.model, "messages": req.messages}
    if req.temperature is not None:
        kwargs["temperature"] = req.temperature
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    for name in PASSTHROUGH:
        value = getattr(req, name)
        if value is not None:
            kwargs[name] = value
    kwargs.update(call_options(req, settings))
    return kwargs


_ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(Attempt))


def attempt_dict(attempt: Attempt) -> dict[str, Any]:
    """``Attempt.to_dict()`` without its deep copy (the dict is serialised at once): ~4x faster."""
    d = {name: getattr(attempt, name) for name in _ATTEMPT_FIELDS}
    d["usage"] = attempt.usage.to_dict()
    return d


def llm_call_extra(resp: LLMResponse) -> dict[str, Any]:
    """The ``llm_call`` field: the attempt record and what the OpenAI shape has no place for."""
    attempts = [attempt_dict(a) for a in resp.attempts]
    if not attempts:
        attempts = [
            {
                "number": 1,
                "model": resp.model,
                "kind": "answer",
                "ok": True,
                "latency_s": resp.latency_s,
                "usage": resp.usage.to_dict(),
                "cost_usd": resp.cost_usd,
            }
        ]
    extra: dict[str, Any] = {
        "model": resp.model,
        "attempts": attempts,
        "latency_s": resp.latency_s,
        "cost_usd": resp.cost_usd,
    }
    if resp.parsed is not None:
        parsed = resp.parsed
        dump = getattr(parsed, "model_dump", None)
        extra["parsed"] = dump(mode="json") if callable(dump) else parsed
    if resp.extra:
        extra["extra"] = resp.extra
    return extra


def _upstream_choice(raw: Any) -> dict[str, Any]:
    """The answering route's first choice, when its payload is an OpenAI chat completion
    (OpenAI-compatible endpoints, LiteLLM); ``{}`` otherwise. What llm_call's Response has no
    field for (``logprobs``, ``refusal``) is taken from there."""
    choices = raw.get("choices") if isinstance(raw, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return {}
    return choices[0]


def upstream_refusal(raw: Any) -> str | None:
    """The model's refusal (OpenAI structured outputs: ``message.refusal``, content null), if any."""
    message = _upstream_choice(raw).get("message")
    refusal = message.get("refusal") if isinstance(message, dict) else None
    return refusal if isinstance(refusal, str) and refusal else None


def completion_body(resp: LLMResponse, request_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": resp.text}
    refusal = upstream_refusal(resp.raw)
    if refusal is not None:
        message["refusal"] = refusal
        if not resp.text:
            message["content"] = None
    if resp.tool_calls:
        message["tool_calls"] = [c.to_openai() for c in resp.tool_calls]
        if not resp.text:
            message["content"] = None
    finish = resp.finish_reason or ("tool_calls" if resp.tool_calls else "stop")
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": resp.model,
        "choices": [{"index": 0, "message": message, "logprobs": _upstream_choice(resp.raw).get("logprobs"), "finish_reason": finish}],
        "usage": resp.usage.to_dict(),
        "system_fingerprint": None,
        "llm_call": llm_call_extra(resp),
    }


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, default=str), status, media_type="application/json")


def call_failure(state: ServerState, info: RequestInfo, exc: LLMCallError) -> HTTPFailure:
    info.error = type(exc).__name__
    attempts = getattr(exc, "attempts", None)
    if isinstance(attempts, list):
        info.attempts = len(attempts)
    state.metrics.observe_error(exc)
    return failure_for(exc)


def timeout_failure(state: ServerState, info: RequestInfo) -> HTTPFailure:
    info.error = "request_timeout"
    limit = state.settings.server.request_timeout
    return HTTPFailure(
        504,
        f"the call did not finish within the server's request timeout of {limit:g} s "
        "(server.request_timeout); use POST /v1/responses with background=true for long calls",
        type="timeout_error",
        code="request_timeout",
    )


class ClientGone(Exception):
    """The client disconnected before the answer; the call was cancelled."""


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(receive: Receive | None) -> AsyncIterator[None]:
    """Cancel the body of the block if the client disconnects meanwhile (raises ClientGone).

    A client that gives up (its timeout, Ctrl-C) must not leave a model call running: for a
    ``max/*`` call that is a CLI process working for minutes. Reads ``receive`` on a watcher task,
    which is only valid once the request body has been read.
    """
    if receive is None:
        yield
        return
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        if (await receive())["type"] != "http.disconnect":
            return  # not an ASGI server that blocks after the body: no watching, no spinning
        gone = True
        current.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


async def chat_completions(request: Request) -> Response:
    """The route endpoint (the app factory also calls :func:`handle_chat` directly, faster)."""
    body = await request.body()
    return await handle_chat(request.app.state.llm_call, request.scope["llm_call"], body, request.receive)


async def handle_chat(state: ServerState, info: RequestInfo, raw: bytes, receive: Receive | None = None) -> Response:
    """One chat completion request, from its raw JSON body to the response to send.

    ``receive`` (the ASGI receive callable, body already read) lets a client disconnect cancel
    the call.
    """
    req = parse_json_body(ChatCompletionRequest, raw)
    kwargs = chat_call_args(req, state.settings)
    info.model = req.model
    if state.settings.server.debug:
        info.prompt = req.messages
    if req.stream:
        if req.logprobs:
            raise HTTPFailure(
                400,
                "logprobs are not streamed by llm_call: ask with stream=false to get them (a stream would "
                "silently come without them)",
                param="logprobs",
                code="unsupported_parameter",
            )
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
    return _json(completion_body(resp, info.id))


async def _start_stream(
    state: ServerState, info: RequestInfo, req: ChatCompletionRequest, kwargs: dict[str, Any], receive: Receive | None
) -> Response:
    info.stream = True
    kwargs["stream_rescue"] = req.stream_rescue or state.settings.server.stream_rescue
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    deadline = asyncio.get_running_loop().time() + state.settings.server.request_timeout
    chunks = astream(**kwargs)
    try:
        async with cancelled_on_disconnect(receive), asyncio.timeout_at(deadline):
            first = await anext(chunks)
    except ClientGone:
        await close_stream(chunks)
        raise
    except StopAsyncIteration:
        await close_stream(chunks)
        exc = StreamInterrupted("the stream ended before its first chunk", model=req.model)
        raise call_failure(state, info, exc) from None
    except TimeoutError:
        await close_stream(chunks)
        raise timeout_failure(state, info) from None
    except LLMCallError as exc:
        await close_stream(chunks)
        raise call_failure(state, info, exc) from None
    body = _sse(state, info, first, chunks, include_usage, deadline, req.model)
    body = with_heartbeat(body, state.settings.server.sse_heartbeat)
    return StreamingResponse(body, media_type="text/event-stream", headers=_SSE_HEADERS)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, default=str).encode() + b"\n\n"


async def _sse(
    state: ServerState,
    info: RequestInfo,
    first: Chunk,
    chunks: AsyncIterator[Chunk],
    include_usage: bool,
    deadline: float,
    requested: str | None,
) -> AsyncIterator[bytes]:
    base: dict[str, Any] = {
        "id": f"chatcmpl-{info.id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": first.model or requested or "",
    }
    finish: str | None = None
    refusal: str | None = None
    usage: Usage | None = None
    role_sent = False
    tool_deltas = 0
    attempt = 1
    chunk: Chunk | None = first
    try:
        while chunk is not None:
            if chunk.event is not None:
                attempt = max(attempt, chunk.attempt)
                yield _event({**base, "choices": [], "llm_call": {"event": chunk.event, "attempt": chunk.attempt, "data": chunk.data}})
            else:
                if chunk.model:
                    base["model"] = chunk.model
                if chunk.text or chunk.tool_calls or not role_sent:
                    delta: dict[str, Any] = {"content": chunk.text}
                    if not role_sent:
                        delta["role"] = "assistant"
                        role_sent = True
                    if chunk.tool_calls:
                        delta["tool_calls"] = [d.to_openai() for d in chunk.tool_calls]
                        tool_deltas += len(chunk.tool_calls)
                        if not chunk.text:
                            delta["content"] = None
                    yield _event({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]})
                if chunk.finish_reason:
                    finish, refusal = chunk.finish_reason, (chunk.data or {}).get("refusal")
                    usage = chunk.usage or usage
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                chunk = None
        if finish is None:
            raise StreamInterrupted("the stream ended without a finish reason", model=requested)
        if finish == "tool_calls" and not tool_deltas:
            raise MalformedResponse(
                "the model's stream finished with tool_calls but carried no tool call", model=requested
            )
        info.attempts = attempt
        state.metrics.observe_usage(str(base["model"]), usage, info)
        if isinstance(refusal, str) and refusal:
            yield _event({**base, "choices": [{"index": 0, "delta": {"content": None, "refusal": refusal}, "logprobs": None, "finish_reason": None}]})
        yield _event({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]})
        if include_usage:
            yield _event({**base, "choices": [], "usage": (usage or Usage()).to_dict()})
        yield _DONE
    except TimeoutError:
        yield _error_event(timeout_failure(state, info))
    except LLMCallError as exc:
        yield _error_event(call_failure(state, info, exc))
    except Exception as exc:
        _log.exception("request %s: stream failed", info.id)
        info.error = type(exc).__name__
        yield _error_event(
            HTTPFailure(500, f"internal server error during the stream ({type(exc).__name__})", type="server_error", code="internal_error")
        )
    finally:
        await close_stream(chunks)


async def close_stream(chunks: AsyncIterator[Chunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def _error_event(fail: HTTPFailure) -> bytes:
    """The stream's last event when it fails: the OpenAI error shape, no ``[DONE]`` after it."""
    return b"data: " + fail.encode() + b"\n\n"
