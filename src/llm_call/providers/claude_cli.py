"""The ``max/*`` route: Claude through the Claude Code CLI (a Claude Max subscription).

Built on the official ``claude-agent-sdk`` (it bundles the CLI and speaks its stream-json
protocol); :mod:`._claude_process` adds watchdogs and the process-tree kill,
:mod:`._claude_messages` turns the CLI's messages into chunks, a Response or a typed error. Example::

    resp = await llm_call.acall(
        "max/sonnet",
        "Write hello.txt saying hi, then say done.",
        mcp_config={"mcpServers": {"files": {"command": "python", "args": ["files_server.py"]}}},
        allowed_tools=["mcp__files__write_file"],
    )
    resp.extra["session_id"], resp.extra["num_turns"], resp.cost_usd

What a call does:

- **Model**: ``request.model`` is the part after ``max/`` (``sonnet``, ``opus``, ``haiku`` are the
  CLI's aliases; a full model id passes through). The router maps bare ``max`` to
  ``claude.default_model``.
- **Conversation**: system messages become the system prompt (replacing Claude Code's own).
  A single user message is the prompt as is; a longer conversation is rendered as a delimited
  transcript of the earlier turns followed by the latest user message, because the CLI takes
  one prompt per run (``_claude_content.render_content``). Images (OpenAI parts, Anthropic
  blocks, base64 / data URLs) go as image blocks in that message through stream-json input.
- **Warm pool** (``claude.pool_size > 0``): a call that needs no workspace of its own (no
  built-in tools, ``cwd``, ``add_dirs``, ``resume``, ``max_budget_usd``; MCP only with
  ``claude.pool_mcp``) runs on a warm CLI process started with the same fixed options, which is
  reset with ``/clear`` before the next call (:mod:`._claude_pool`, :mod:`._claude_worker`).
- **Isolation**: every call runs in its own working directory (a fresh temporary workspace,
  removed afterwards, unless ``cwd=`` is given; a pooled process has one of its own), with ``--strict-mcp-config`` (only the MCP
  servers the call names), no settings files (``setting_sources=[]``), no built-in tools unless
  ``allowed_tools`` names them, and permission mode ``dontAsk`` (anything not in
  ``allowed_tools`` is denied). Only an explicit ``permission_mode=`` changes that. The prompt
  is delivered as written (``verbatim_prompts``): never a CLI slash command, no ``@path`` inlined.
- **Auth**: ``ANTHROPIC_API_KEY`` is blanked in the CLI's environment so the subscription login
  is used, unless ``claude.use_api_key`` (``LLM_CALL_CLAUDE_USE_API_KEY=1``). The SDK strips
  ``CLAUDECODE``, so calls work from inside a Claude Code session.
- **Errors** are errors: an ``is_error`` result (even with subtype ``success``), a non-zero
  exit, a missing result or corrupt stdout raise typed errors (``result_error``); an API
  status the CLI reports maps like an HTTP status (429 -> RateLimited, 529 ->
  ProviderHTTPError(status=529), transient for the retry layer); "Not logged in" -> AuthError.
- **Quota** (subscription mode): every ``rate_limit_event`` updates the account's quota state
  (:mod:`.claude_quota`); a call is refused before it starts while a window is used up
  (``QuotaExhausted`` naming the window, ``retry_after`` until its reset) and slowed above
  ``claude.slowdown_at``. docs/claude.md describes the scheduling built on it.

Options (``acall(..., option=value)``): ``mcp_config``, ``mcp_servers`` (names declared under
``[claude.mcp_servers]``), ``tool_profile`` (a name under ``[claude.tool_profiles]``: its
allowed tools and servers), ``allowed_tools``, ``disallowed_tools``,
``cwd``, ``permission_mode``, ``resume`` (a session id), ``max_turns``, ``max_budget_usd``,
``effort``, ``add_dirs``, ``setting_sources``, ``env`` (extra CLI environment),
``persist_session`` (default True: the CLI keeps the session under ``~/.claude/projects`` so
``resume=`` can continue it; False passes ``--no-session-persistence``). Others raise
:class:`UsageError`. ``temperature`` is not supported by the CLI and is ignored;
``max_tokens`` becomes ``CLAUDE_CODE_MAX_OUTPUT_TOKENS``.

With tool use, a stream carries the text of every turn (including text before a tool call)
while ``Response.text`` is the final result, as the CLI reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import tempfile
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigError,
    LLMCallError,
    MalformedResponse,
    ProviderTimeout,
)
from ..types import Chunk, Request, Response
from ._claude_plan import NAME, plan_call
from ._redact import env_locations, env_secrets, scrub_error

if TYPE_CHECKING:
    from ..config import ClaudeConfig
    from ._claude_messages import RunState
    from ._claude_plan import CallPlan
    from ._claude_pool import ClaudePool
    from ._claude_process import CLIRun, Limits

__all__ = ["ClaudeCLIProvider", "pool_state"]

_log = logging.getLogger("llm_call.providers.claude_cli")

_STDERR_LINES = 40


def pool_state() -> dict[str, Any]:
    """The warm CLI pools of this process, summed: processes, idle, busy, started, replaced ...

    Cheap, and imports no SDK (the server reads it for ``GET /v1/claude/pool`` and metrics)::

        >>> pool_state()["processes"]
        0
    """
    from ._claude_pool import pool_state as state

    return state()


# -- the provider -------------------------------------------------------------------------


@contextlib.contextmanager
def _workspace(cwd: str | None) -> Iterator[str]:
    if cwd is not None:
        yield cwd
        return
    with tempfile.TemporaryDirectory(prefix="llm-call-claude-", ignore_cleanup_errors=True) as tmp:
        yield tmp


class ClaudeCLIProvider:
    """``max/*`` models through the Claude Code CLI; see the module docstring."""

    name = NAME

    def __init__(self, cfg: ClaudeConfig) -> None:
        if importlib.util.find_spec("claude_agent_sdk") is None:
            raise ConfigError(
                "the max/* route needs the claude-agent-sdk package",
                hint="pip install 'llm-call[claude]'",
            )
        self._cfg = cfg
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._runs: set[CLIRun] = set()
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ClaudePool] = weakref.WeakKeyDictionary()

    def _slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._slots.get(loop)
        if sem is None:
            sem = self._slots[loop] = asyncio.Semaphore(self._cfg.max_concurrency)
        return sem

    async def _events(self, request: Request) -> AsyncGenerator[Chunk | Response, None]:
        """Chunks as the CLI works, then the Response (after the process has exited)."""
        from claude_agent_sdk import ClaudeAgentOptions

        from ._claude_messages import RunState
        from ._claude_process import CLIRun, Limits
        from .claude_quota import Admission, admit

        plan = plan_call(self._cfg, request)
        loop = asyncio.get_running_loop()
        deadline = None if plan.timeout is None else loop.time() + plan.timeout
        slot = self._slot()
        try:
            async with asyncio.timeout_at(deadline):
                await slot.acquire()
        except TimeoutError:
            raise ProviderTimeout(
                f"no free Claude CLI slot within the call's timeout (claude.max_concurrency={self._cfg.max_concurrency})",
                provider=NAME,
                model=plan.model,
            ) from None
        admission = Admission(None)
        try:
            admission = await admit(self._cfg, plan.model, deadline)  # QuotaExhausted, or a slowdown slot
            stderr: deque[str] = deque(maxlen=_STDERR_LINES)
            state = RunState(plan.model, self._cfg.use_api_key, stderr, self._cfg.account)
            limits = Limits(self._cfg.idle_timeout, self._cfg.exit_timeout, deadline)
            if plan.poolable and self._cfg.pool_size > 0:
                async for chunk in self._pooled(plan, limits, state, stderr):
                    yield chunk
            else:
                with _workspace(plan.cwd) as cwd:
                    options = ClaudeAgentOptions(cwd=cwd, stderr=stderr.append, **plan.sdk_options)
                    run = CLIRun(plan.prompt, options, limits, provider=NAME, model=plan.model)
                    self._runs.add(run)
                    try:
                        async with run:
                            try:
                                async for msg in run.messages():
                                    for chunk in state.handle(msg):
                                        yield chunk
                            except LLMCallError:
                                raise
                            except Exception as exc:
                                raise state.translate(exc) from exc
                    finally:
                        self._runs.discard(run)
                        if stderr:
                            _log.debug("Claude CLI stderr (last lines): %s", " | ".join(stderr))
            error = state.error()
            if error is not None:
                raise error
            response = state.response()
            if plan.cwd is None:
                response.extra.pop("cwd", None)  # the temporary workspace is gone
            yield response
        except LLMCallError as exc:
            # the CLI's stderr and error results are in the message: no credential of the
            # environment (ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN...) leaves with it
            scrub_error(exc, env_secrets(), env_locations())
            raise
        finally:
            admission.release()
            slot.release()

    def _pool(self) -> ClaudePool:
        from ._claude_pool import ClaudePool
        from ._claude_worker import PooledCLI

        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None or pool.closed:
            for old_loop, old in list(self._pools.items()):
                if old_loop.is_closed():  # e.g. one asyncio.run() per call: its processes would linger
                    del self._pools[old_loop]
                    old.kill_now()
            pool = self._pools[loop] = ClaudePool(self._cfg, PooledCLI.start)
        return pool

    async def _pooled(
        self, plan: CallPlan, limits: Limits, state: RunState, stderr: deque[str]
    ) -> AsyncGenerator[Chunk, None]:
        """The call through a warm pooled process (see :mod:`._claude_pool`)."""
        from ._claude_pool import pool_key
        from ._claude_worker import pooled_messages

        messages = pooled_messages(
            self._pool(),
            pool_key(plan.sdk_options),
            plan.sdk_options,
            plan.prompt,
            limits,
            provider=NAME,
            model=plan.model,
            stderr=stderr,
        )
        async with contextlib.aclosing(messages):
            try:
                async for msg in messages:
                    for chunk in state.handle(msg):
                        yield chunk
            except LLMCallError:
                raise
            except Exception as exc:
                raise state.translate(exc) from exc

    async def complete(self, request: Request) -> Response:
        async with contextlib.aclosing(self._events(request)) as events:
            async for item in events:
                if isinstance(item, Response):
                    return item
        raise MalformedResponse("Claude CLI run ended without a response", provider=NAME, model=request.model)

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        turn_text = ""
        async with contextlib.aclosing(self._events(request)) as events:
            async for item in events:
                if isinstance(item, Response):
                    # text the CLI put in its result but did not stream (e.g. no partial messages)
                    if not turn_text:
                        rest = item.text
                    elif item.text.startswith(turn_text):
                        rest = item.text[len(turn_text) :]
                    else:
                        rest = ""
                    if rest:
                        yield Chunk(text=rest, model=item.model)
                    data = {**item.extra, "cost_usd": item.cost_usd}
                    yield Chunk(model=item.model, finish_reason=item.finish_reason or "stop", usage=item.usage, data=data)
                    return
                if item.event is None:
                    turn_text += item.text
                elif item.event == "tool_finished":
                    turn_text = ""  # a new turn follows the tool result
                yield item
        raise MalformedResponse("Claude CLI run ended without a response", provider=NAME, model=request.model)

    async def aclose(self) -> None:
        """Terminate CLI processes still running (on this event loop), pooled ones included."""
        runs, self._runs = list(self._runs), set()
        loop = asyncio.get_running_loop()
        pools = list(self._pools.items())
        self._pools.clear()
        for pool_loop, pool in pools:
            if pool_loop is loop:
                await pool.aclose()
            else:
                pool.kill_now()
        for run in runs:
            if run.loop is loop:
                await run.aclose()
            else:
                run.kill_now()

