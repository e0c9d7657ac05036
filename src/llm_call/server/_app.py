"""The app factory: routes, the gateway middleware, error handlers, lifespan and OpenAPI.

FastAPI serves every route except the hot one and generates the OpenAPI document, to which
:func:`_openapi` adds the chat completions operation from its pydantic model and the error
responses every operation can give (so schemathesis and client generators see the real contract:
errors are 400, not FastAPI's 422). ``POST /v1/chat/completions`` is registered as a plain
Starlette route (for 405s and ``GET``), but the gateway middleware, installed outside FastAPI's
own stack, hands it straight to :func:`_fast_chat` (see ``_chat.py``). Measured choice: FastAPI
for everything would cost ~30 µs of CPU more per chat request, and a FastAPI endpoint ~85 µs of
latency more in the prototype; plain Starlette for everything would need a hand-written OpenAPI
document.

The lifespan installs the settings process-wide (``acall`` reads them), starts the task manager
and its worker inside this process, and on shutdown stops it (running tasks stay in the store,
to be resumed by the next start) and closes the providers.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from .._settings import without_saved_sessions
from ..errors import LLMCallError
from ._anthropic import CountTokensRequest, MessagesRequest
from ._auth import check_public_bind
from ._chat import ClientGone, chat_completions, handle_chat
from ._embeddings import EmbeddingsRequest, handle_embeddings
from ._errors import HTTPFailure, failure_for, pydantic_failure
from ._messages import encode_failure, handle_count_tokens, handle_messages
from ._middleware import MESSAGES_PREFIX, GatewayMiddleware
from ._schemas import ChatCompletionRequest
from ._state import ServerState

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["create_app"]

_log = logging.getLogger("llm_call.server")


def _error_response(fail: HTTPFailure, encode: Callable[[HTTPFailure], bytes] | None = None) -> Response:
    body = fail.encode() if encode is None else encode(fail)
    return Response(body, fail.status_code, headers=fail.headers, media_type="application/json")


def _shape(request: Request) -> Callable[[HTTPFailure], bytes] | None:
    """The error body encoder for this request's API: Anthropic's under /v1/messages."""
    return encode_failure if request.url.path.startswith(MESSAGES_PREFIX) else None


async def _on_failure(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPFailure)
    info = request.scope.get("llm_call")
    if info is not None and info.error is None and exc.code:
        info.error = exc.code
    return _error_response(exc, _shape(request))


async def _on_llm_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LLMCallError)
    info = request.scope.get("llm_call")
    if info is not None:
        info.error = type(exc).__name__
    return _error_response(failure_for(exc), _shape(request))


async def _on_request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    body = getattr(request.scope.get("route"), "body_field", None)  # the route's body model, for "did you mean"
    model = getattr(getattr(body, "field_info", None), "annotation", None)
    return _error_response(pydantic_failure(list(exc.errors()), model=model))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no route {request.method} {request.url.path}; see /docs for the API"
        code = "not_found"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        code = "method_not_allowed"
    else:
        message = str(exc.detail)
        code = None
    return _error_response(HTTPFailure(status, message, code=code, headers=dict(exc.headers or {}) or None), _shape(request))


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    info = request.scope.get("llm_call")
    if info is not None:
        info.error = "client_disconnected"
    return Response(b"", 499)  # nobody reads it: the client is gone


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    request_id = getattr(request.scope.get("llm_call"), "id", "?")
    return _error_response(
        HTTPFailure(500, f"internal server error ({type(exc).__name__}); request id {request_id}",
                    type="server_error", code="internal_error"),
        _shape(request),
    )


class _ClientGone(Exception):
    """The client disconnected before sending its whole body."""


async def _read_body(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


Handler = Callable[..., Awaitable[Response]]


def _fast_route(state: ServerState, handler: Handler, encode: Callable[[HTTPFailure], bytes] | None = None) -> Callable[..., Awaitable[None]]:
    """A POST handler (chat completions, messages) as a bare ASGI app: the body read straight
    from ``receive``, llm_call errors answered here (``encode`` gives the error body's shape), a
    plain response sent as two ASGI messages."""

    async def app(scope: MutableMapping[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        info = scope["llm_call"]
        try:
            response = await handler(state, info, await _read_body(receive), receive)
        except (_ClientGone, ClientGone):
            info.error = "client_disconnected"
            return
        except HTTPFailure as exc:
            if info.error is None and exc.code:
                info.error = exc.code
            response = _error_response(exc, encode)
        except LLMCallError as exc:
            info.error = type(exc).__name__
            response = _error_response(failure_for(exc), encode)
        if type(response) is Response:
            await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
            await send({"type": "http.response.body", "body": response.body})
        else:
            await response(scope, receive, send)

    return app


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint for a fast-path handler (the gateway serves POST itself; the route
    gives 405s and serves embedders that build the stack without the gateway)."""

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        return await handler(request.app.state.llm_call, request.scope["llm_call"], body, request.receive)

    return endpoint


async def _count_tokens(state: ServerState, info: Any, raw: bytes, receive: Any) -> Response:
    return await handle_count_tokens(state, info, raw)


def _mcp_mount() -> Callable[[Any, ServerState], Callable[[], Any]] | None:
    """``mount_mcp`` of the MCP server module, or None (logged) without the ``mcp`` package."""
    try:
        from ._mcp import mount_mcp
    except ImportError as exc:
        _log.warning("/mcp is not served: the mcp package is missing (pip install 'llm-call[mcp]'): %s", exc)
        return None
    return mount_mcp


class _App(FastAPI):
    """FastAPI, with HTTP requests handed straight to the middleware stack (the gateway first):
    FastAPI's own ``__call__`` checks for OpenTelemetry on every request (~30 µs)."""

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        await self.middleware_stack(scope, receive, send)


def create_app(settings: Settings | None = None, *, task_manager: Any = None) -> FastAPI:
    """The ASGI app of ``llm-call serve``.

    ``settings`` default to the process-wide ones; ``task_manager`` is for tests and embedding
    (by default the lifespan creates one on ``settings.tasks.store``).

    Raises ConfigError when ``settings.server.host`` is not a loopback address and no API keys
    are set (the public-bind rule of ``llm-call serve``), or a key is blank. Whatever address the
    app is then run on, a server without keys answers only requests that arrive on a loopback
    address (403 otherwise).

    Example::

        import uvicorn
        from llm_call.server import create_app

        uvicorn.run(create_app(), host="127.0.0.1", port=8000)
    """
    if settings is None:
        from ..config import get_settings

        settings = get_settings()
    settings = without_saved_sessions(settings)
    state = ServerState.from_settings(settings)  # ConfigError for a blank key
    check_public_bind(settings.server.host, state.auth)
    state.tasks = task_manager
    #: the MCP SDK's session manager runner, set once /mcp is mounted (below)
    mcp_sessions: Callable[[], Any] | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from ..config import set_settings

        set_settings(settings)
        from ._background import start_tasks, stop_tasks

        await start_tasks(state, given=task_manager)
        try:
            async with mcp_sessions() if mcp_sessions is not None else contextlib.nullcontext():
                yield
        finally:
            await stop_tasks(state, owned=task_manager is None)
            from ..providers.router import close_providers

            await close_providers()

    app = _App(
        title="llm_call",
        version=__version__,
        description="One OpenAI-compatible endpoint for every LLM, with validation, retries and background tasks.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.llm_call = state
    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"], include_in_schema=False)
    fast = {
        ("POST", "/v1/chat/completions"): _fast_route(state, handle_chat),
        ("POST", "/v1/messages"): _fast_route(state, handle_messages, encode_failure),
        ("POST", "/v1/messages/count_tokens"): _fast_route(state, _count_tokens, encode_failure),
        ("POST", "/v1/embeddings"): _fast_route(state, handle_embeddings),
    }
    app.add_route("/v1/embeddings", _endpoint(handle_embeddings), methods=["POST"], include_in_schema=False)
    app.add_route("/v1/messages", _endpoint(handle_messages), methods=["POST"], include_in_schema=False)
    app.add_route("/v1/messages/count_tokens", _endpoint(_count_tokens), methods=["POST"], include_in_schema=False)

    from . import _routes

    _routes.register(app, state)
    mount_mcp = _mcp_mount()
    if mount_mcp is not None:
        mcp_sessions = mount_mcp(app, state)
    for route in app.routes:
        endpoint, path = getattr(route, "endpoint", None), getattr(route, "path", None)
        if endpoint is not None and isinstance(path, str):
            state.endpoint_paths[endpoint] = path

    app.add_exception_handler(HTTPFailure, _on_failure)
    app.add_exception_handler(LLMCallError, _on_llm_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(ClientGone, _on_client_gone)
    app.add_exception_handler(Exception, _on_unexpected)

    # The gateway goes outside everything FastAPI builds (error middleware included), and takes
    # POST /v1/chat/completions straight to its handler: ~100 µs less per call than the stack.
    build_stack = app.build_middleware_stack

    def build_middleware_stack() -> Any:
        return GatewayMiddleware(build_stack(), state, fast)

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        },
        "llm_call": {"type": "object"},
    },
}
_ERROR_TEXT = {
    "400": "Bad request: the body is not JSON, or a field is invalid (param names it)",
    "401": "Missing or wrong API key",
    "404": "Unknown model, response or task",
    "409": "The task is in a state that does not allow this",
    "413": "Request body too large",
    "422": "Bad validation spec (param names it)",
    "429": "Too many requests in flight for this key, a full queue, or an upstream rate limit",
    "502": "The upstream model failed (error.code is the llm_call error type)",
    "503": "The route's circuit breaker is open",
    "504": "The upstream or the server's request timeout expired",
}
_CALL_ERRORS = ("400", "401", "404", "413", "422", "429", "502", "503", "504")


def _error_ref(code: str) -> dict[str, Any]:
    return {"description": _ERROR_TEXT[code], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
        "llm_call": {"type": "object"},
    },
}


def _anthropic_error_ref(code: str) -> dict[str, Any]:
    return {"description": _ERROR_TEXT[code], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AnthropicError"}}}}


def _messages_operation(summary: str, description: str, operation_id: str, schema: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": description,
            "operationId": operation_id,
            "tags": ["messages"],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}},
            "responses": {
                "200": {"description": "The answer", "content": ok},
                **{code: _anthropic_error_ref(code) for code in _CALL_ERRORS},
            },
        }
    }


def _openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (ChatCompletionRequest, MessagesRequest, CountTokensRequest, EmbeddingsRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components[model.__name__] = schema
    components["AnthropicError"] = _ANTHROPIC_ERROR_SCHEMA
    components["Error"] = _ERROR_SCHEMA
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    doc.setdefault("paths", {})["/v1/chat/completions"] = {
        "post": {
            "summary": "Create a chat completion",
            "description": "The OpenAI chat completions API. `stream: true` answers Server-Sent Events ending in "
            "`data: [DONE]` (or an error event on failure). Extra fields map to llm_call options; the response "
            "has an extra field `llm_call` with the attempt record.",
            "operationId": "create_chat_completion",
            "tags": ["chat"],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
            },
            "responses": {
                "200": {
                    "description": "A chat.completion object, or an SSE stream of chat.completion.chunk objects",
                    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}},
                },
                **{code: _error_ref(code) for code in _CALL_ERRORS},
            },
        }
    }
    doc["paths"]["/v1/embeddings"] = {
        "post": {
            "summary": "Create embeddings",
            "description": "The OpenAI embeddings API on OpenAI-compatible, LiteLLM and local/* routes (max/* "
            "answers 400: the Claude Code CLI has no embeddings). `encoding_format: base64` answers little-endian float32 in base64. "
            "`fallbacks` is llm_call's; the response has an extra field `llm_call` with the attempt record.",
            "operationId": "create_embeddings",
            "tags": ["embeddings"],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsRequest"}}},
            },
            "responses": {
                "200": {"description": "A list of embedding objects", "content": {"application/json": {"schema": {"type": "object"}}}},
                **{code: _error_ref(code) for code in _CALL_ERRORS if code != "422"},
            },
        }
    }
    doc["paths"]["/v1/messages"] = _messages_operation(
        "Create a message",
        "The Anthropic Messages API on every route. `stream: true` answers Server-Sent Events in Anthropic's "
        "event sequence (or an `error` event on failure). Extra fields map to llm_call options like on chat "
        "completions; errors use Anthropic's shape. Keys as `x-api-key` or `Authorization: Bearer`.",
        "create_message",
        "MessagesRequest",
        {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}},
    )
    doc["paths"]["/v1/messages/count_tokens"] = _messages_operation(
        "Count the tokens of a message request",
        "An estimate of the input tokens (characters / 3.5 plus 4 per message): `{\"input_tokens\": N}`.",
        "count_message_tokens",
        "CountTokensRequest",
        {"application/json": {"schema": {"type": "object", "required": ["input_tokens"],
                                          "properties": {"input_tokens": {"type": "integer"}}}}},
    )
    for path, ops in doc["paths"].items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            if _is_fastapi_422(responses.get("422")):
                del responses["422"]
            ref = _anthropic_error_ref if path.startswith(MESSAGES_PREFIX) else _error_ref
            for code in ("400", "401"):
                responses.setdefault(code, ref(code))
            if "{" in path:
                responses.setdefault("404", ref("404"))
            if op.get("requestBody"):
                responses.setdefault("413", ref("413"))
            responses.setdefault("429", ref("429"))
    result: dict[str, Any] = json.loads(json.dumps(doc))
    return result


def _is_fastapi_422(entry: Any) -> bool:
    return isinstance(entry, dict) and "HTTPValidationError" in json.dumps(entry)
