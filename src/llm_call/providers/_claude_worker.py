"""One pooled Claude Code CLI process, and a call through it (the ``max/*`` warm pool).

:class:`PooledCLI` starts the CLI through the SDK's subprocess transport (so the command line
is exactly the one a fresh call gets: ``--input-format stream-json --output-format
stream-json --verbose`` plus the call's fixed options) in a temporary workspace of its own,
without a prompt: it waits for user messages on stdin. A reader task moves its stdout lines
(parsed JSON) into a queue.

:func:`pooled_messages` is one call: it sends the conversation as one stream-json user
message (text, or text and image blocks), yields the SDK message objects up to and including
the ``result`` under the idle and total watchdogs, and hands the process back. After a good
result the process is reset in the background (``/clear``; the CLI answers with a
``conversation_reset`` line and a result of its own) and only then returns to the pool, so
the next call starts from an empty conversation. On anything else (a watchdog, an error
result, a dead process, the caller cancelling or closing early) the process tree is killed
and replaced.

``rate_limit_event`` lines reach :class:`~._claude_messages.RunState` as SDK
``RateLimitEvent`` objects, like those of a one-shot run, so pooled calls update the quota
state (:func:`~._claude_quota.record_rate_limit_event`) too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, CLIConnectionError, ProcessError, ResultMessage
from claude_agent_sdk._internal.message_parser import parse_message

from ..errors import ProviderFailed, ProviderTimeout
from ._claude_content import Content
from ._claude_pool import ClaudePool
from ._claude_process import (
    KILL_GRACE,
    Limits,
    PidTransport,
    ProcessRef,
    kill_tree,
    live,
    process_tree,
    terminate,
)

__all__ = ["PooledCLI", "pooled_messages"]

_log = logging.getLogger("llm_call.providers.claude_cli")

_REAP_WAIT = 5.0
_STDERR_LINES = 40


class _Exit:
    """The CLI's stdout ended."""


_EXIT = _Exit()


class PooledCLI:
    """A CLI process waiting for user messages; see the module docstring."""

    def __init__(self, key: str, sdk_options: dict[str, Any], *, kill_grace: float = KILL_GRACE) -> None:
        self.key = key
        self.calls = 0
        self.loop = asyncio.get_running_loop()
        self.last_used = self.loop.time()
        self.stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._workspace = tempfile.mkdtemp(prefix="llm-call-claude-pool-")
        options = ClaudeAgentOptions(cwd=self._workspace, stderr=self.stderr.append, **sdk_options)
        self._transport = PidTransport(prompt="", options=options)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._kill_grace = kill_grace
        self._stopped = False

    @classmethod
    async def start(cls, key: str, sdk_options: dict[str, Any]) -> PooledCLI:
        worker = cls(key, sdk_options)
        try:
            await worker._transport.connect()
        except BaseException:
            shutil.rmtree(worker._workspace, ignore_errors=True)
            raise
        worker._reader = asyncio.create_task(worker._read(), name=f"claude-cli pool {worker.pid}")
        return worker

    @property
    def pid(self) -> int | None:
        return self._transport.pid

    async def _read(self) -> None:
        try:
            async for data in self._transport.read_messages():
                self._queue.put_nowait(data)
        except Exception as exc:  # handed to the call that reads next
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(_EXIT)

    def alive(self) -> bool:
        if self._stopped or self.pid is None or self._reader is None or self._reader.done() or self._transport.exited:
            return False
        st = process_tree(self.pid)
        return bool(st) and live(st[0])

    def rss_mb(self) -> float:
        if self.pid is None:
            return 0.0
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return 0.0

    def drain(self) -> bool:
        """Drop lines written while no call was reading (normally none); False if it exited."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, dict):
                self._queue.put_nowait(item)
                return False
            _log.debug("Claude CLI pool: dropping a line written between calls: %.200r", item)
        return True

    async def send(self, content: Content, *, command: bool = False) -> None:
        """A user message; the CLI delivers it as written (``client_composed``: no slash command,
        no ``@path`` inlined) unless it is the pool's own ``command`` (``/clear``)."""
        message: dict[str, Any] = {"type": "user", "message": {"role": "user", "content": content}, "parent_tool_use_id": None}
        if not command:
            message["client_composed"] = True
        await self._transport.write(json.dumps(message) + "\n")

    async def next_line(self, timeout: float) -> dict[str, Any]:
        """The next stdout line; TimeoutError, EOFError (the CLI exited) or the reader's error."""
        async with asyncio.timeout(max(timeout, 0.0)):
            item = await self._queue.get()
        if item is _EXIT:
            self._queue.put_nowait(item)
            raise EOFError("the Claude CLI exited")
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, dict)
        return item

    async def reset(self, timeout: float) -> bool:
        """``/clear``: True once the CLI has confirmed a new, empty conversation."""
        try:
            await self.send("/clear", command=True)
            seen_reset = False
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.next_line(timeout)
                    kind = line.get("type")
                    if kind == "conversation_reset":
                        seen_reset = True
                    elif kind == "result":
                        return seen_reset and not line.get("is_error")
        except (TimeoutError, EOFError):
            return False
        except Exception:
            _log.warning("Claude CLI pool: /clear failed on process %s", self.pid, exc_info=True)
            return False

    async def stop(self) -> None:
        """Kill the process tree, reap it, remove the workspace. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        tree: list[ProcessRef] = process_tree(self.pid) if self.pid is not None else []
        try:
            await terminate(tree, self._kill_grace)
        finally:
            waiter = asyncio.ensure_future(self._close_transport())
            await asyncio.shield(waiter)
            shutil.rmtree(self._workspace, ignore_errors=True)

    async def _close_transport(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.wait({reader}, timeout=_REAP_WAIT)
        self._queue.put_nowait(_EXIT)  # a call still reading (shutdown) sees the end at once
        try:
            async with asyncio.timeout(_REAP_WAIT * 3):
                await self._transport.close()
        except Exception:
            _log.warning("Claude CLI pool: closing process %s failed", self.pid, exc_info=True)

    def kill_now(self) -> None:
        """SIGKILL the tree at once (its loop is gone or elsewhere) and remove the workspace."""
        if self.pid is not None and not self._stopped:
            kill_tree(self.pid)
            if self.loop.is_closed():
                _reap(self.pid)  # no loop is left to reap it: no zombie either
        self._stopped = True
        shutil.rmtree(self._workspace, ignore_errors=True)


def _reap(pid: int) -> None:
    """Wait (briefly) for a SIGKILLed child of ours to end, and collect it."""
    for _ in range(200):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not ours, or already collected
        if done:
            return
        time.sleep(0.005)


def _timeout(kind: str, limits: Limits, provider: str, model: str) -> ProviderTimeout:
    if kind == "idle":
        return ProviderTimeout(
            f"Claude CLI sent nothing for {limits.idle_timeout:g} s (idle timeout); the pooled process was terminated",
            hint="raise claude.idle_timeout if long silences are expected",
            provider=provider,
            model=model,
        )
    return ProviderTimeout(
        "Claude CLI did not finish within the call's total timeout; the pooled process was terminated",
        hint="raise timeout= (or claude.total_timeout)",
        provider=provider,
        model=model,
    )


#: processes a call tries before it gives up on processes that die before taking its message
_ATTEMPTS = 3


class _DiedBeforeTaking(Exception):
    """The process ended before it took the call's message: nothing reached the upstream."""


async def _take(pool: ClaudePool, key: str, sdk_options: dict[str, Any]) -> PooledCLI | None:
    """A warm process whose stdout is still open (one that died idle is replaced), or None."""
    for _ in range(_ATTEMPTS):
        worker = await pool.acquire(key, sdk_options)
        assert isinstance(worker, PooledCLI)
        if worker.drain():
            return worker
        await pool.discard(worker, "died")
    return None


def _between_calls(line: dict[str, Any]) -> bool:
    """A line the CLI writes after a call or reset has ended (it may arrive after ``drain``)."""
    return line.get("type") == "system" and line.get("subtype") == "session_state_changed" and line.get("state") == "idle"


async def pooled_messages(
    pool: ClaudePool,
    key: str,
    sdk_options: dict[str, Any],
    content: Content,
    limits: Limits,
    *,
    provider: str,
    model: str,
    stderr: deque[str],
) -> AsyncGenerator[Any, None]:
    """One call through a warm process: SDK messages up to and including the result.

    Raises :class:`ProviderTimeout` on a watchdog, :class:`ProviderFailed` when the process dies,
    and the SDK's own errors (the caller translates them). The process goes back to the pool
    only after a good result and a confirmed reset.

    A process can die while idle at any moment, also just after the pool's liveness check. A
    process that ends before it has written anything for this call (the CLI acknowledges a
    message at once, before any request upstream) has not taken the message: it is replaced
    (``died``) and the call runs on another process, up to ``_ATTEMPTS`` processes in all.
    """
    for attempt in range(1, _ATTEMPTS + 1):
        worker = await _take(pool, key, sdk_options)
        if worker is None:
            break
        serve = _serve(
            pool, worker, content, limits, may_retry=attempt < _ATTEMPTS, provider=provider, model=model, stderr=stderr
        )
        try:
            async with contextlib.aclosing(serve) as messages:
                async for message in messages:
                    yield message
            return
        except _DiedBeforeTaking:
            _log.info("Claude CLI pool: process %s died before taking the call; using another", worker.pid)
    raise ProviderFailed(
        "Claude CLI processes started for the pool exit before serving a call",
        hint="run the CLI by hand (claude -p hi) to see why it exits",
        subtype="pool_process_died",
        provider=provider,
        model=model,
    )


async def _serve(
    pool: ClaudePool,
    worker: PooledCLI,
    content: Content,
    limits: Limits,
    *,
    may_retry: bool,
    provider: str,
    model: str,
    stderr: deque[str],
) -> AsyncGenerator[Any, None]:
    """The call on ``worker``; raises :class:`_DiedBeforeTaking` (if ``may_retry``) as above."""
    loop = asyncio.get_running_loop()
    outcome = "cancelled"
    taken = False
    try:
        worker.calls += 1
        try:
            await worker.send(content)
        except CLIConnectionError:
            if may_retry:
                outcome = "died"
                raise _DiedBeforeTaking from None
            raise
        while True:
            wait, kind = limits.idle_timeout, "idle"
            if limits.deadline is not None and limits.deadline - loop.time() < wait:
                wait, kind = limits.deadline - loop.time(), "total"
            try:
                line = await worker.next_line(wait)
            except TimeoutError:
                outcome = "watchdog"
                raise _timeout(kind, limits, provider, model) from None
            except (EOFError, ProcessError) as exc:
                if not taken and may_retry:
                    outcome = "died"
                    raise _DiedBeforeTaking from None
                if isinstance(exc, ProcessError):
                    raise
                outcome = "error"
                tail = " | ".join(list(worker.stderr)[-5:])
                raise ProviderFailed(
                    "the pooled Claude CLI process exited without a result" + (f": {tail}" if tail else ""),
                    subtype="exit_code", provider=provider, model=model,
                ) from None
            if not taken and _between_calls(line):
                continue
            taken = True
            message = parse_message(line)
            if message is None:
                continue
            if isinstance(message, ResultMessage):
                ok = message.subtype == "success" and not message.is_error
                outcome = "served" if ok else "error_result"
                yield message
                return
            yield message
    except Exception:
        if outcome == "cancelled":
            outcome = "error"  # the SDK's parser or the pipe failed
        raise
    finally:
        if outcome != "died":
            stderr.extend(worker.stderr)
        if outcome == "served":
            pool.reset_then_return(worker, lambda: worker.reset(limits.exit_timeout))
        elif outcome == "error_result":
            pool.run_background(pool.discard(worker, "error", served=True))
        else:
            # killed here (shielded: a second cancellation must not leave the process running)
            await asyncio.shield(asyncio.ensure_future(pool.discard(worker, outcome)))
