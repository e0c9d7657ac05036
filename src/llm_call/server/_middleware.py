"""The gateway: one pure ASGI middleware in front of every route.

In one pass over the request headers it assigns the request id (``X-Request-ID`` if the client
sent a sane one), checks the Host header (421), answers CORS preflights of configured origins,
refuses a keyless server's requests that arrive on a public address (403), checks the API key
(401), the JSON content type of request bodies (415; ``_browser.py``), the declared body size
(413) and the key's requests in flight (429); it counts bytes of bodies sent without a length (413 when too many),
bounds the time a body takes to arrive (408, ``server.body_timeout``), records the
Prometheus request metrics, writes the one structured log line per request, and answers 500 in
the OpenAI error shape (logged with its traceback) if a route fails in an unexpected way.

It is a plain ASGI callable rather than ``BaseHTTPMiddleware``: no extra task, no body copy,
a few microseconds per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from ._anthropic import anthropic_error
from ._auth import ANONYMOUS, OPEN, Caller, local_address_is_public, request_weight
from ._browser import BODY_METHODS, content_type_message, host_message
from ._errors import HTTPFailure, error_body
from ._ui import STATIC_PATHS

if TYPE_CHECKING:
    from ..types import Usage
    from ._state import ServerState

__all__ = ["MESSAGES_PREFIX", "BodyDeadlines", "GatewayMiddleware", "RequestInfo", "access_log"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("llm_call.server.access")
_log = logging.getLogger("llm_call.server")

#: paths served without an API key (nothing secret there)
PUBLIC_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                          # the dashboard's static files (the page then calls the API with a key)
                          *STATIC_PATHS})
#: paths not counted against a key's requests in flight
_UNLIMITED = PUBLIC_PATHS | {"/metrics"}
_QUIET = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})
_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_JSON_HEADERS = [(b"content-type", b"application/json")]
#: paths of the Anthropic Messages API: errors in Anthropic's shape, keys also as ``x-api-key``
MESSAGES_PREFIX = "/v1/messages"


class RequestInfo:
    """What a route tells the gateway about its request (for the log line and metrics)."""

    __slots__ = ("attempts", "caller", "cost_usd", "error", "id", "key_id", "model", "prompt", "stream", "task_id", "usage")

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.key_id = "anonymous"
        #: who is asking: their tenant and whether they see every tenant's tasks
        self.caller: Caller = OPEN
        self.model: str | None = None
        self.attempts: int | None = None
        self.stream = False
        self.error: str | None = None
        self.prompt: Any = None
        self.task_id: str | None = None
        #: the answer's tokens and cost, when it reported them
        self.usage: Usage | None = None
        self.cost_usd: float | None = None


def new_request_id() -> str:
    return os.urandom(8).hex()


class GatewayMiddleware:
    """The outermost ASGI layer. ``fast_routes`` maps ``(method, path)`` to an ASGI handler
    called directly, past the framework's middleware and router (the chat completions hot path);
    such a handler answers its own errors."""

    def __init__(
        self, app: ASGIApp, state: ServerState, fast_routes: dict[tuple[str, str], ASGIApp] | None = None
    ) -> None:
        self.app = app
        self.state = state
        self.fast_routes = fast_routes or {}
        self.body_deadlines = BodyDeadlines(state.settings.server.body_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = self.state
        authorization: bytes | None = None
        length: bytes | None = None
        given_id: bytes | None = None
        api_key: bytes | None = None
        host: bytes | None = None
        content_type: bytes | None = None
        origin: bytes | None = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"content-length":
                length = value
            elif name == b"x-request-id":
                given_id = value
            elif name == b"host":
                host = value
            elif name == b"content-type":
                content_type = value
            elif name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = True
        request_id = new_request_id()
        if given_id is not None:
            text = given_id.decode("latin-1")
            if _ID_OK.match(text):
                request_id = text
        info = RequestInfo(request_id)
        scope["llm_call"] = info
        rules = state.browser
        extra_headers = [(b"x-request-id", request_id.encode())]
        if rules.origin_allowed(origin):
            assert origin is not None
            extra_headers += rules.response_headers(origin)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra_headers]
            await send(message)

        path: str = scope["path"]
        anthropic = path.startswith(MESSAGES_PREFIX)
        template: str | None = None
        acquired: str | None = None
        acquired_weight = 1
        state.metrics.in_flight.inc()
        method: str = scope["method"]
        try:
            if not rules.host_ok(host):
                assert host is not None
                info.error = "host_not_allowed"
                await _answer(send_with_id, 421, _error(anthropic, 421, host_message(host), code="host_not_allowed"))
                return
            if method == "OPTIONS" and preflight and rules.origin_allowed(origin):
                assert origin is not None
                headers = [(b"x-request-id", request_id.encode()), *rules.preflight_headers(origin)]
                status = 204
                await send({"type": "http.response.start", "status": 204, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            if not state.auth.enabled and local_address_is_public(scope.get("server")):
                info.error = "no_api_keys"
                await _answer(send_with_id, 403, _error(
                    anthropic, 403, "this server has no API keys (server.api_keys) and answers only on loopback "
                    "addresses; set keys to serve other machines", code="no_api_keys"))
                return
            if state.auth.enabled and (path not in PUBLIC_PATHS or authorization is not None or api_key is not None):
                caller = None if authorization is None else state.auth.caller(authorization)
                if caller is None and api_key is not None:  # Anthropic clients send the key as x-api-key
                    caller = state.auth.caller_of_key(api_key)  # (some send both: either may hold it)
                if caller is None and path in PUBLIC_PATHS:
                    info.caller = ANONYMOUS  # a wrong key on a public path: served as without a key
                elif caller is None:
                    info.error = "invalid_api_key"
                    message = (
                        "missing API key: send the header 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"
                        if authorization is None and api_key is None
                        else "invalid API key"
                    )
                    await _answer(send_with_id, 401, _error(anthropic, 401, message, code="invalid_api_key"),
                                  [(b"www-authenticate", b"Bearer")])
                    return
                else:
                    info.caller = caller
                    info.key_id = caller.key_id
            elif state.auth.enabled:
                info.caller = ANONYMOUS  # a public path without a key: sees nothing of anyone's
            if method in BODY_METHODS and not rules.json_ok(content_type):
                info.error = "unsupported_media_type"
                await _answer(send_with_id, 415, _error(anthropic, 415, content_type_message(content_type), code="unsupported_media_type"))
                return
            limit = state.settings.server.max_body_bytes
            weight = 1  # requests in flight this one counts as: its body weighs (see KeyLimiter)
            if method in BODY_METHODS and length != b"0":
                receive = self.body_deadlines.wrap(receive)
            if length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await _answer(send_with_id, 400, _error(anthropic, 400, "invalid Content-Length header", code="invalid_request"))
                    return
                if declared > limit:
                    info.error = "request_too_large"
                    await _answer(send_with_id, 413, _error(anthropic, 413, _too_large(limit).message, code="request_too_large"))
                    return
                weight = request_weight(declared)
            elif method in ("POST", "PUT", "PATCH"):
                receive = _counting(receive, limit)
                weight = request_weight(limit)  # chunked: it may be as big as allowed
            if path not in _UNLIMITED:
                if not state.limiter.acquire(info.key_id, weight):
                    info.error = "concurrency_limit"
                    await _answer(
                        send_with_id,
                        429,
                        _error(
                            anthropic,
                            429,
                            f"too many requests in flight for this API key (limit {state.limiter.limit}, a request "
                            "counting once per 64 KiB of its body); retry when some have finished",
                            type="rate_limit_error",
                            code="concurrency_limit_exceeded",
                        ),
                        [(b"retry-after", b"1")],
                    )
                    return
                acquired, acquired_weight = info.key_id, weight
            fast = self.fast_routes.get((method, path))
            if fast is not None:
                template = path
                await fast(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            info.error = type(exc).__name__
            if status >= 500:
                # the framework's error handler has answered 500 already: record it once, done
                _log.error("request %s failed: %s", request_id, type(exc).__name__, exc_info=exc)
                return
            if status:
                _log.exception("request %s failed after its response started", request_id)
                raise
            _log.exception("request %s failed: %s", request_id, type(exc).__name__)
            await _answer(
                send_with_id,
                500,
                _error(anthropic, 500, f"internal server error ({type(exc).__name__}); request id {request_id}",
                       type="server_error", code="internal_error"),
            )
        finally:
            if acquired is not None:
                state.limiter.release(acquired, acquired_weight)
            state.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            if template is None:
                route = scope.get("route")
                template = getattr(route, "path", None) or state.endpoint_paths.get(scope.get("endpoint"), "unmatched")
            state.metrics.observe_request(template, scope["method"], status or 499, elapsed)
            level = logging.DEBUG if path in _QUIET else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(level, _log_line(info, scope, template, status or 499, elapsed))


def _error(anthropic: bool, status: int, message: str, type: str = "invalid_request_error", code: str | None = None) -> bytes:
    """An error body in the OpenAI shape, or Anthropic's for the Messages API."""
    if anthropic:
        return json.dumps(anthropic_error(status, message), ensure_ascii=False).encode()
    return error_body(message, type=type, code=code)


def _too_large(limit: int) -> HTTPFailure:
    return HTTPFailure(
        413,
        f"request body larger than the server's limit of {limit} bytes (server.max_body_bytes)",
        code="request_too_large",
    )


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that fails with 413 once a body without Content-Length passes ``limit``."""
    seen = 0

    async def counting_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return counting_receive


class BodyDeadlines:
    """The 408 of ``server.body_timeout``: a request body must arrive in full within ``timeout``
    seconds of its first read. A client dripping a declared body would otherwise hold its
    connection, a slot of its key and the bytes so far (up to ``max_body_bytes``) for ever.

    One sweeper task (alive only while some body is being read) cancels the reads that are past
    their deadline, so a request pays a dict insert and delete, not a timer of its own. Reads
    after the body (the disconnect watch of a long call) are not bounded."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def wrap(self, receive: Receive) -> Receive:
        deadline: float | None = None
        done = False

        async def timed_receive() -> Message:
            nonlocal deadline, done
            if done:
                return await receive()
            task = asyncio.current_task()
            if task is None:  # pragma: no cover - ASGI servers call receive from a task
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout
            self._reading[task] = deadline
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="llm_call-body-deadlines")
            try:
                message = await receive()
            except asyncio.CancelledError:
                if task not in self._expired:
                    raise
                self._expired.discard(task)
                task.uncancel()
                raise HTTPFailure(
                    408,
                    f"the request body did not arrive in full within {self.timeout:g} s (server.body_timeout); "
                    "send the whole body at once",
                    code="body_timeout",
                ) from None
            finally:
                self._reading.pop(task, None)
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return timed_receive

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        step = min(1.0, self.timeout / 4)
        try:
            while self._reading:
                await asyncio.sleep(step)
                now = loop.time()
                for task, deadline in list(self._reading.items()):
                    if deadline <= now and task not in self._expired:
                        self._expired.add(task)
                        task.cancel()
        finally:
            self._sweeper = None


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or ())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _log_line(info: RequestInfo, scope: Scope, route: str, status: int, elapsed: float) -> str:
    line: dict[str, Any] = {
        "event": "request",
        "id": info.id,
        "method": scope["method"],
        "route": route,
        "path": scope["path"],
        "status": status,
        "latency_ms": round(elapsed * 1000, 3),
        "key": info.key_id,
    }
    if info.model is not None:
        line["model"] = info.model
    if info.attempts is not None:
        line["attempts"] = info.attempts
    if info.stream:
        line["stream"] = True
    if info.usage is not None:
        line["tokens"] = {"prompt": info.usage.prompt_tokens, "completion": info.usage.completion_tokens}
    if info.cost_usd is not None:
        line["cost_usd"] = info.cost_usd
    if info.task_id is not None:
        line["task_id"] = info.task_id
    if info.error is not None:
        line["error"] = info.error
    if info.prompt is not None:
        line["prompt"] = info.prompt
    return json.dumps(line, ensure_ascii=False, default=str)
