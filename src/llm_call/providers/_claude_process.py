"""One Claude Code CLI process, driven through ``claude_agent_sdk.query`` under watchdogs.

The SDK starts the CLI, speaks its stream-json protocol and parses the messages; this module
adds what the SDK does not: watchdogs and a process-tree kill.

- :class:`CLIRun` runs ``query()`` in a pump task that feeds a queue, so the caller can wait for
  the next message with a deadline. Three watchdogs: *idle* (no message for ``idle_timeout``
  seconds), *total* (an absolute deadline for the whole call) and *exit* (after the result
  message the process must exit within ``exit_timeout`` seconds). Each raises
  :class:`~llm_call.errors.ProviderTimeout`.
- On a watchdog, on an error, on an early close of the message iterator and on cancellation of
  the calling task, :meth:`CLIRun.aclose` terminates the CLI **and its descendants** (MCP
  servers, shells): it walks ``/proc`` for the tree while the CLI is still alive, sends
  SIGTERM, waits ``kill_grace`` seconds, then SIGKILLs what is left, and only then lets the SDK
  reap the process. The SDK cannot start the CLI in a session of its own (it offers no such
  option), hence the tree walk; descendants are identified by pid *and* start time, so a
  recycled pid is never signalled. To learn the pid, ``_Transport`` subclasses the SDK's
  ``SubprocessCLITransport`` (internal to the SDK, not exported: an SDK upgrade that moves it
  breaks this import, and the Claude route tests show it at once).

This module imports ``claude_agent_sdk`` at the top: it is imported only when a ``max/*`` call
runs (``claude_cli.py`` imports it lazily).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query
from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

from ..errors import ProviderTimeout

__all__ = ["CLIRun", "Limits", "PidTransport", "ProcessRef", "kill_tree", "live", "process_tree", "terminate"]

_log = logging.getLogger("llm_call.providers.claude_cli")

#: seconds between SIGTERM and SIGKILL
KILL_GRACE = 2.0
#: how long to wait for the SDK to reap the process after it was killed
_REAP_WAIT = 5.0
_POLL = 0.02


# -- process tree -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A process identified by pid and start time (so a recycled pid never matches)."""

    pid: int
    start: int


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of ``pid`` from ``/proc``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain anything; split after it
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[1]), int(rest[19]), rest[0].decode()
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int] | None:
    """Children of ``pid`` from ``/proc/PID/task/*/children``; None where the kernel lacks it."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # no CONFIG_PROC_CHILDREN: scan every process instead
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[ProcessRef]:
    """``pid`` and all its live descendants (Linux ``/proc``; elsewhere just ``pid``)."""
    root = _stat(pid)
    if root is None:
        if sys.platform.startswith("linux"):
            return []
        return [ProcessRef(pid, 0)]
    tree = [ProcessRef(pid, root[1])]
    stack = [pid]
    while stack:
        kids = _children(stack.pop())
        if kids is None:
            return _scan_tree(pid, root[1])
        for child in kids:
            st = _stat(child)
            if st is not None:
                tree.append(ProcessRef(child, st[1]))
                stack.append(child)
    return tree


def _scan_tree(pid: int, start: int) -> list[ProcessRef]:
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [ProcessRef(pid, start)]
    for name in entries:
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st is not None:
            children.setdefault(st[0], []).append((int(name), st[1]))
    found = [ProcessRef(pid, start)]
    stack = [pid]
    while stack:
        for child, start in children.get(stack.pop(), ()):
            found.append(ProcessRef(child, start))
            stack.append(child)
    return found


def live(ref: ProcessRef) -> bool:
    """True while the process runs (a zombie counts as gone: it no longer runs anything)."""
    st = _stat(ref.pid)
    if st is None:
        if sys.platform.startswith("linux"):
            return False
        try:
            os.kill(ref.pid, 0)
        except OSError:
            return False
        return True
    return st[1] == ref.start and st[2] != "Z"


def _signal(refs: list[ProcessRef], sig: int) -> None:
    for ref in refs:
        if live(ref):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(ref.pid, sig)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants at once (no waiting; any thread)."""
    _signal(process_tree(pid), signal.SIGKILL)


async def terminate(refs: list[ProcessRef], grace: float = KILL_GRACE) -> None:
    """SIGTERM every process in ``refs``, wait up to ``grace`` s, SIGKILL the survivors.

    Cancellation while waiting sends SIGKILL at once, so nothing survives a cancelled cleanup.
    """
    if not refs:
        return
    _signal(refs, signal.SIGTERM)
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        while any(live(r) for r in refs) and loop.time() < end:
            await asyncio.sleep(_POLL)
    finally:
        survivors = [r for r in refs if live(r)]
        if survivors:
            _log.warning("Claude CLI processes %s ignored SIGTERM; killing", [r.pid for r in survivors])
            _signal(survivors, signal.SIGKILL)


# -- one run ------------------------------------------------------------------------------


class _Transport(SubprocessCLITransport):
    """The SDK's subprocess transport, remembering the pid of the CLI it started."""

    pid: int | None = None

    async def connect(self) -> None:
        await super().connect()
        process = getattr(self, "_process", None)
        self.pid = getattr(process, "pid", None)

    @property
    def exited(self) -> bool:
        """True once the CLI's exit has been collected (its return code is known)."""
        process = getattr(self, "_process", None)
        return process is not None and process.returncode is not None


#: the transport under a public name, for the warm pool (:mod:`._claude_worker`)
PidTransport = _Transport


async def _one_message(content: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """A prompt of content blocks (images) as the one stream-json user message ``query`` sends."""
    yield {"type": "user", "message": {"role": "user", "content": content}, "parent_tool_use_id": None}


@dataclass(slots=True)
class Limits:
    """Watchdog settings of one run. ``deadline`` is absolute (``loop.time()``) or None."""

    idle_timeout: float
    exit_timeout: float
    deadline: float | None = None
    kill_grace: float = KILL_GRACE


class _End:
    pass


_END = _End()


class CLIRun:
    """One CLI process: ``async with CLIRun(...) as run: async for msg in run.messages(): ...``.

    ``messages()`` yields SDK message objects and raises the SDK's exceptions as they come
    (the caller translates them) or :class:`ProviderTimeout` when a watchdog fires. Leaving the
    ``async with`` block always ends the process tree (see the module docstring).
    """

    def __init__(
        self,
        prompt: str | list[dict[str, Any]],
        options: ClaudeAgentOptions,
        limits: Limits,
        *,
        provider: str,
        model: str,
    ) -> None:
        self._prompt: str | AsyncIterable[dict[str, Any]] = (
            prompt if isinstance(prompt, str) else _one_message(prompt)
        )
        self._options = options
        self._limits = limits
        self._provider = provider
        self._model = model
        self._transport = _Transport(prompt=self._prompt, options=options)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self._tree: list[ProcessRef] = []
        self.closed = False

    @property
    def pid(self) -> int | None:
        """The CLI's pid once it has started."""
        return self._transport.pid

    async def __aenter__(self) -> CLIRun:
        self._pump = asyncio.create_task(self._run_query(), name=f"claude-cli {self._model}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _run_query(self) -> None:
        try:
            async for message in query(
                prompt=self._prompt, options=self._options, transport=self._transport
            ):
                if isinstance(message, ResultMessage) and self.pid is not None:
                    # the CLI is alive and its MCP servers still run: remember the tree, so
                    # anything left behind after the exit can be found
                    self._tree = process_tree(self.pid)
                self._queue.put_nowait(message)
        except Exception as exc:  # handed to the consumer, which translates it
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(_END)

    def _timeout(self, kind: str, seconds: float) -> ProviderTimeout:
        what = {
            "idle": f"sent nothing for {seconds:g} s (idle timeout)",
            "total": "did not finish within the call's total timeout",
            "exit": f"did not exit within {seconds:g} s after its result (exit timeout)",
        }[kind]
        hints = {
            "idle": "raise claude.idle_timeout if long silences are expected",
            "total": "raise timeout= (or claude.total_timeout)",
            "exit": "the CLI hung after answering; raise claude.exit_timeout if it is slow to exit",
        }
        return ProviderTimeout(
            f"Claude CLI {what}; the process was terminated",
            hint=hints[kind],
            provider=self._provider,
            model=self._model,
        )

    async def messages(self) -> AsyncIterator[Any]:
        """The SDK messages, under the idle, total and exit watchdogs."""
        loop = asyncio.get_running_loop()
        limits = self._limits
        exit_deadline: float | None = None
        while True:
            now = loop.time()
            if exit_deadline is not None:
                wait, kind = exit_deadline - now, "exit"
                seconds = limits.exit_timeout
            else:
                wait, kind = limits.idle_timeout, "idle"
                seconds = limits.idle_timeout
            if limits.deadline is not None and limits.deadline - now < wait:
                wait, kind = limits.deadline - now, "total"
            if self._queue.empty():
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        item = await self._queue.get()
                except TimeoutError:
                    raise self._timeout(kind, seconds) from None
            else:
                item = self._queue.get_nowait()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, ResultMessage) and exit_deadline is None:
                exit_deadline = loop.time() + limits.exit_timeout
            yield item

    def kill_now(self) -> None:
        """SIGKILL the process tree at once (from another thread or loop; no waiting)."""
        if self.pid is not None:
            _signal(process_tree(self.pid), signal.SIGKILL)

    async def aclose(self) -> None:
        """End the run: kill the process tree if it still runs, reap it, leave no orphans."""
        if self.closed:
            return
        self.closed = True
        pump = self._pump
        if pump is None:
            return
        tree: list[ProcessRef] = []
        if not pump.done():
            if self.pid is not None:
                tree = process_tree(self.pid)
            try:
                await terminate(tree, self._limits.kill_grace)
            finally:
                pump.cancel()
                # the SDK's close() reaps the (now dead) process; bounded, and shielded so a
                # second cancellation of the caller does not leave a zombie behind
                waiter = asyncio.ensure_future(asyncio.wait({pump}, timeout=_REAP_WAIT))
                await asyncio.shield(waiter)
        else:
            # the CLI exited by itself; anything of its tree still running is an orphan
            leftovers = [r for r in self._tree if r.pid != self.pid and live(r)]
            if leftovers:
                _log.warning("Claude CLI left processes %s running; terminating", [r.pid for r in leftovers])
                await terminate(leftovers, self._limits.kill_grace)
        if pump.done() and not pump.cancelled():
            pump.exception()  # retrieved: errors were handed over through the queue
