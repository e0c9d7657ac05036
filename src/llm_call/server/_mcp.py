"""The MCP server: llm_call's calls and tasks as MCP tools, for Claude Code and other MCP clients.

Two transports serve the same tools:

- **stdio**, ``llm-call mcp``: started by the client (``claude --mcp-config ...``). The caller is
  the local user who started it: it sees every task in the store, like the ``llm-call`` CLI.
- **streamable HTTP**, mounted by ``llm-call serve`` at ``/mcp``: behind the same gateway as the
  rest of the server (Host check, API keys, JSON bodies, body size, requests in flight). Each tool
  call acts as the key of the HTTP request that carried it: tasks are submitted with that key's
  tenant, and ``status`` / ``wait`` / ``cancel`` of another key's task answer as for an unknown id.
  It runs stateless (each POST is its own MCP exchange), so there is no session id that another
  key could take over; progress notifications travel on the POST's own event stream. Nothing is
  held open between calls: ``GET`` and ``DELETE`` are 405, and ``subscriptions/listen`` is not
  served (the tools never change; Claude Code would otherwise keep one listen POST, one of its
  key's requests in flight, open for its whole session).

Tools: ``ask`` (a call; its answer text), ``submit`` (the same call as a background task; its
id), ``status``, ``wait`` (bounded by ``MAX_WAIT_S``), ``cancel`` and ``models``. A long ``ask``
or ``wait`` sends MCP progress notifications: one per progress event of the call (attempts,
validation failures, fallbacks, tool use) and a heartbeat every ``heartbeat_s`` seconds, so a
client that resets its timeout on progress keeps waiting.

Tool arguments are untrusted on both transports and go through the server's request parser
(``call_options``): validation specs are parsed with file reads refused and their regexes run on
RE2; ``local/...`` models are only the declared ones; there is no argument for a raw
``mcp_config`` or tools. Every refusal and every failed call is a tool error (``isError``) whose
text names what is wrong; an answer is only ever an answer.

This module imports ``mcp`` (the ``mcp`` extra) when a server is built, never at import of
``llm_call`` (``create_app`` imports it when it mounts ``/mcp``). No ``from __future__ import annotations`` here: the MCP SDK reads the tools'
signatures, and their annotations name types imported inside :func:`build_mcp_server`.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from mcp.server.mcpserver.exceptions import (
    ToolError,  # sent to the client as a tool error (isError)
)
from pydantic import Field, ValidationError

from ..errors import LLMCallError, TaskNotFound, TaskPending, TaskStoreError
from ._auth import OPEN, Caller
from ._errors import HTTPFailure
from ._schemas import TaskRequest, call_options

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["MAX_WAIT_S", "build_mcp_server", "caller_of_http_request", "mount_mcp", "run_stdio"]

_log = logging.getLogger("llm_call.mcp")
#: the longest ``wait`` a client may ask for, in seconds (it then calls ``wait`` again)
MAX_WAIT_S = 600.0
_HEARTBEAT_S = 5.0
#: how long the last progress notifications of a finished call may take to send
_DRAIN_S = 5.0
_MAX_QUEUED = 1000
_T = TypeVar("_T")

CallerOf = Callable[[Any], Caller]
ManagerOf = Callable[[], Any]

_INSTRUCTIONS = (
    "llm_call: ask any configured model (ask), or hand long work to a background task (submit, then "
    "status / wait / cancel). models lists the model names. validate takes llm_call validation specs "
    "(json, regex:..., length:max=N, schema:{...}); failed answers are fed back and retried."
)


def _tool_error(exc: BaseException) -> ToolError:
    """A typed error of a call or a refusal of the request parser, as a tool error naming it."""
    if isinstance(exc, HTTPFailure):
        param = f" ({exc.param})" if exc.param else ""
        return ToolError(f"refused{param}: {exc.message}")
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        return ToolError(f"invalid arguments: {problems}")
    if isinstance(exc, TaskStoreError):  # its text names the store's file or host: for the log
        _log.warning("task store failure answered to an MCP client: %s", exc)
        return ToolError("TaskStoreError: the task store failed; the server log says why")
    return ToolError(f"{type(exc).__name__}: {exc}")


def _call_args(
    settings: "Settings",
    prompt: str,
    model: str | None,
    system: str | None,
    validate: list[str | dict[str, Any]] | None,
    max_attempts: int | None,
) -> dict[str, Any]:
    """acall keyword arguments for a tool call, through the HTTP request parser and its checks."""
    try:
        req = TaskRequest(model=model, prompt=prompt, system=system, validation=validate, max_attempts=max_attempts)
        args: dict[str, Any] = {"model": req.model, "prompt": req.prompt}
        if req.system is not None:
            args["system"] = req.system
        args.update(call_options(req, settings))
    except (HTTPFailure, ValidationError) as exc:
        raise _tool_error(exc) from None
    return args


def _progress_text(kind: str, data: dict[str, Any]) -> str:
    details = ", ".join(f"{k}={v}" for k, v in data.items() if isinstance(v, (str, int, float)) and k != "text")
    return f"{kind}: {details}" if details else kind


async def _with_progress(ctx: Any, work: Callable[[Callable[[str, dict[str, Any]], None]], Awaitable[_T]], heartbeat_s: float) -> _T:
    """Run ``work(listener)``; send an MCP progress notification for each event the listener
    gets, in order, and a heartbeat every ``heartbeat_s`` seconds until it ends. Events of the
    work are all sent before this returns (so before the tool's result)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    started = loop.time()

    def listener(kind: str, data: dict[str, Any]) -> None:
        if kind == "chunk" or queue.qsize() >= _MAX_QUEUED:
            return  # streamed text is not progress worth a notification each; a flood is dropped
        queue.put_nowait(_progress_text(kind, data))

    async def notify() -> None:
        step = 0
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                message = f"working ({loop.time() - started:.0f} s)"
            if message is None:
                return
            step += 1
            try:
                await ctx.report_progress(step, None, message)
            except Exception:  # a client that went away: the call itself reports that
                _log.debug("progress notification not sent", exc_info=True)
                return

    sender = asyncio.create_task(notify(), name="llm_call-mcp-progress")
    try:
        return await work(listener)
    finally:
        # Never cancel a notification half sent (the SDK's stream would be left unusable and
        # the tool's result never sent): let the sender finish its queue, then stop.
        queue.put_nowait(None)
        done, _ = await asyncio.wait({sender}, timeout=_DRAIN_S)
        if not done:
            sender.cancel()
            _log.warning("progress notifications of an MCP tool call were not sent within %g s", _DRAIN_S)


def _summary(rec: Any) -> dict[str, Any]:
    """What a client needs of a task record: never the stored request or the tenant."""
    out: dict[str, Any] = {"task_id": rec.id, "status": rec.status.value, "model": rec.route or rec.request.get("model")}
    if rec.progress:
        out["progress"] = rec.progress
    if rec.result is not None:
        out["answer"] = rec.result.get("text")
        out["answered_by"] = rec.result.get("model")
    if rec.error is not None:
        out["error"] = {"type": rec.error.get("type"), "message": rec.error.get("message")}
    return out


def build_mcp_server(
    settings: "Settings",
    *,
    manager: ManagerOf,
    caller_of: CallerOf,
    heartbeat_s: float = _HEARTBEAT_S,
    call_timeout: float | None = None,
) -> Any:
    """The ``MCPServer`` with llm_call's tools.

    ``manager()`` gives the running task manager; ``caller_of(ctx)`` who a tool call acts for
    (their tenant); ``call_timeout`` bounds an ``ask`` (over HTTP: ``server.request_timeout``,
    as for chat completions; long work belongs in ``submit``). Example (what ``llm-call mcp`` does)::

        server = build_mcp_server(settings, manager=lambda: mgr, caller_of=lambda ctx: OPEN)
        await server.run_stdio_async()
    """
    from mcp.server.mcpserver import Context, MCPServer

    from .. import __version__
    from ..client import acall

    # MCPServer() calls logging.basicConfig (a rich handler on the root logger at INFO) unless
    # the root logger has a handler already: the server's logging is the operator's, not the SDK's.
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        # subscriptions=False: the tools never change, so there is nothing to listen for, and a
        # client at protocol 2026-07-28 (Claude Code) would otherwise hold a `subscriptions/listen`
        # POST open for its whole session, taking one of its key's requests in flight for nothing.
        server = MCPServer(name="llm_call", version=__version__, instructions=_INSTRUCTIONS, log_level="WARNING",
                           subscriptions=False)
    finally:
        if guard is not None:
            root.removeHandler(guard)

    Prompt = Annotated[str, Field(description="The prompt: what to ask the model")]
    Model = Annotated[str | None, Field(description="Model or alias (see the models tool); default: the configured default_model")]
    System = Annotated[str | None, Field(description="A system prompt")]
    Validate = Annotated[
        list[str | dict[str, Any]] | None,
        Field(description='Validation specs the answer must pass, e.g. ["json", "regex:^\\\\d+$", "length:max=200"]; '
                          "failed answers are fed back to the model and retried"),
    ]
    Attempts = Annotated[int | None, Field(ge=1, le=100, description="Attempts in all when validating (default 3)")]
    TaskId = Annotated[str, Field(min_length=1, max_length=100, description="A task id from submit (tk_...)")]

    async def visible(ctx: Any, task_id: str) -> Any:
        """The task if this caller may see it; the same tool error as for an unknown id otherwise."""
        caller = caller_of(ctx)
        try:
            rec = await manager().status(task_id)
        except TaskNotFound:
            rec = None
        except (LLMCallError, HTTPFailure) as exc:
            raise _tool_error(exc) from None
        if rec is None or not caller.may_see(rec.tenant):
            raise ToolError(f"no task with id {task_id!r} (submit returns task ids)")
        return rec

    @server.tool(description="Ask a model and return its answer (validated when validate is given).")
    async def ask(
        prompt: Prompt,
        ctx: Context,
        model: Model = None,
        system: System = None,
        validate: Validate = None,
        max_attempts: Attempts = None,
    ) -> str:
        args = _call_args(settings, prompt, model, system, validate, max_attempts)
        caller_of(ctx)  # refuses a call without a caller before any model call

        async def work(listener: Callable[[str, dict[str, Any]], None]) -> str:
            text: str = (await acall(**args, progress=listener)).text
            return text

        deadline = asyncio.timeout(call_timeout)
        try:
            async with deadline:
                return await _with_progress(ctx, work, heartbeat_s)
        except LLMCallError as exc:
            raise _tool_error(exc) from None
        except TimeoutError:
            if not deadline.expired():
                raise
            raise ToolError(
                f"the call ran longer than the server's limit of {call_timeout:g} s for a direct call "
                "(server.request_timeout) and was stopped; for long work use submit, then wait"
            ) from None

    @server.tool(description="Submit the same call as a background task; returns its task_id at once.")
    async def submit(
        prompt: Prompt,
        ctx: Context,
        model: Model = None,
        system: System = None,
        validate: Validate = None,
        max_attempts: Attempts = None,
    ) -> dict[str, Any]:
        args = _call_args(settings, prompt, model, system, validate, max_attempts)
        caller = caller_of(ctx)
        try:
            mgr = manager()
            task_id = await mgr.submit(args, tenant=caller.tenant)
            return _summary(await mgr.status(task_id))
        except (LLMCallError, HTTPFailure) as exc:
            raise _tool_error(exc) from None

    @server.tool(description="A task's status, and its answer or error once it has finished.")
    async def status(task_id: TaskId, ctx: Context) -> dict[str, Any]:
        return _summary(await visible(ctx, task_id))

    @server.tool(
        description=f"Wait up to timeout seconds (at most {MAX_WAIT_S:g}) for a task to finish; returns its answer, "
        "or its status when it is still running (call wait again). A failed or cancelled task is an error."
    )
    async def wait(
        task_id: TaskId,
        ctx: Context,
        timeout: Annotated[float, Field(gt=0, le=MAX_WAIT_S, description="Seconds to wait at most")] = 60.0,
    ) -> dict[str, Any]:
        await visible(ctx, task_id)

        async def work(listener: Callable[[str, dict[str, Any]], None]) -> Any:
            try:
                return await manager().wait(task_id, timeout=timeout)
            except TaskPending:
                return None

        try:
            rec = await _with_progress(ctx, work, heartbeat_s)
        except (LLMCallError, HTTPFailure) as exc:
            raise _tool_error(exc) from None
        if rec is None:
            out = _summary(await visible(ctx, task_id))
            out["note"] = f"still {out['status']} after {timeout:g} s; call wait again"
            return out
        out = _summary(rec)
        if out["status"] in ("failed", "cancelled"):
            error = out.get("error") or {}
            raise ToolError(f"task {task_id} {out['status']}: {error.get('type') or ''}: {error.get('message') or ''}".rstrip(": "))
        return out

    @server.tool(description="Cancel a task (queued: at once; running: stopped).")
    async def cancel(task_id: TaskId, ctx: Context) -> dict[str, Any]:
        await visible(ctx, task_id)
        try:
            return _summary(await manager().cancel(task_id))
        except (LLMCallError, HTTPFailure) as exc:
            raise _tool_error(exc) from None

    @server.tool(description="The models that can be asked now: routes (max/*, openai/*, ...), aliases and endpoints.")
    async def models() -> list[dict[str, Any]]:
        from ..catalog import list_models
        from ._routes import may_use, shown_notes

        allowed = settings.server.allowed_models  # as GET /v1/models: only what a call may name
        return [
            {"id": row["id"], "kind": row["kind"], "notes": shown_notes(row, operator=False)}
            for row in list_models(settings)
            if row.get("available") and (allowed is None or may_use(row["id"], allowed))
        ]

    server.middleware.append(_refuse_unknown_arguments(server))  # type: ignore[arg-type]  # a plain function fits the protocol
    return server


def _refuse_unknown_arguments(server: Any) -> Callable[..., Awaitable[Any]]:
    """Middleware: a tool call with an argument the tool does not take is a tool error naming it
    (the SDK would drop it silently, so ``mcp_config`` would look accepted)."""
    from mcp.types import CallToolResult, TextContent

    known: dict[str, set[str]] = {}

    async def middleware(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        params = ctx.params
        if ctx.method == "tools/call" and isinstance(params, dict) and isinstance(params.get("arguments"), dict):
            if not known:
                for tool in await server.list_tools():
                    known[tool.name] = set((tool.input_schema or {}).get("properties", {}))
            allowed = known.get(str(params.get("name")))
            unknown = sorted(set(params["arguments"]) - allowed) if allowed is not None else []
            if unknown:
                text = (f"tool {params.get('name')} takes no argument {', '.join(unknown)}; its arguments are "
                        f"{', '.join(sorted(allowed or ()))}. MCP servers and tools of max/* models are chosen by the "
                        "operator's configuration, never by a tool call")
                return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
        return await call_next(ctx)

    return middleware


def caller_of_http_request(ctx: Any) -> Caller:
    """Who a tool call over HTTP acts for: the caller the gateway found for its POST's API key."""
    request = getattr(getattr(ctx, "request_context", None), "request", None)
    info = None if request is None else request.scope.get("llm_call")
    if info is None:
        raise ToolError("this tool call arrived without an HTTP request; it cannot be authorised")
    caller: Caller = info.caller
    return caller


def mount_mcp(app: Any, state: Any) -> Callable[[], AbstractAsyncContextManager[None]]:
    """Add the streamable HTTP endpoint ``/mcp`` to the app; returns the async context manager
    factory the app's lifespan must enter (the SDK's session manager)."""
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.routing import Route

    from ._background import manager

    server = build_mcp_server(
        state.settings,
        manager=lambda: manager(state),
        caller_of=caller_of_http_request,
        call_timeout=state.settings.server.request_timeout,
    )
    # The gateway in front checks the Host header (server.allowed_hosts), keys and content types.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    inner = server.streamable_http_app(stateless_http=True, transport_security=security, streamable_http_path="/mcp")
    endpoint = next((getattr(r, "endpoint", None) for r in inner.routes if getattr(r, "path", None) == "/mcp"), None)
    if endpoint is None:  # pragma: no cover - the SDK always has it
        raise RuntimeError("the MCP SDK's app has no /mcp route")
    # POST only: stateless, a GET event stream would stay open with nothing ever sent on it,
    # and there is no session to DELETE (both 405)
    app.router.routes.append(Route("/mcp", endpoint=endpoint, methods=["POST"], include_in_schema=False))
    return server.session_manager.run  # type: ignore[no-any-return]


async def run_stdio(settings: "Settings") -> None:
    """``llm-call mcp``: serve the tools on stdin/stdout until the client closes them.

    Tasks run in this process on ``settings.tasks.store`` (queued ones that this process does not
    finish stay in the store for ``llm-call serve``, a worker or the next start)."""
    from ..config import set_settings
    from ..tasks import TaskManager

    set_settings(settings)
    mgr = TaskManager(settings.tasks.store, settings=settings, kind="mcp")
    await mgr.start()
    try:
        server = build_mcp_server(settings, manager=lambda: mgr, caller_of=lambda ctx: OPEN)
        await server.run_stdio_async()
    finally:
        await mgr.close(grace=0.0)
        from ..providers.router import close_providers

        await close_providers()
