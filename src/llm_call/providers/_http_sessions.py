"""One aiohttp session per event loop, for a provider that may be called from several loops
(``llm_call.call`` runs a loop per call in sync code; servers and tests run their own).

A session belongs to the loop that made it: its connector's sockets are that loop's. The session
of the loop that asks is made on first use and closed when that loop shuts down its async
generators (``asyncio.run`` does), so a script never leaks "Unclosed client session" warnings;
:meth:`LoopSessions.aclose` closes every one still open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp

__all__ = ["LoopSessions"]


class LoopSessions:
    """``get()``: the running loop's session (made with ``limit`` / ``limit_per_host``)."""

    def __init__(self, limit: int, limit_per_host: int) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        # loop -> (session, async generator that closes it when the loop shuts down)
        self._sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]] = {}
        self._last: tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession] | None = None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop and not last[1].closed:
            return last[1]
        entry = self._sessions.get(loop)
        if entry is None or entry[0].closed:
            # forget sessions of loops closed without shutting down their async generators
            for old in [lp for lp in self._sessions if lp.is_closed()]:
                del self._sessions[old]
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit_per_host, ttl_dns_cache=300)
            session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
            closer = self._close_with_loop(loop, session)
            # Run the generator to its ``yield`` now: the loop registered it on first iteration,
            # and finalises it (running the ``finally``) in ``shutdown_asyncgens``.
            try:
                closer.__anext__().send(None)
            except StopIteration:
                pass
            entry = (session, closer)
            self._sessions[loop] = entry
        self._last = (loop, entry[0])
        return entry[0]

    async def _close_with_loop(
        self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            entry = self._sessions.get(loop)
            if entry is not None and entry[0] is session:
                del self._sessions[loop]
            last = self._last
            if last is not None and last[1] is session:
                self._last = None
            if not session.closed:
                await session.close()

    async def aclose(self) -> None:
        entries = list(self._sessions.items())
        self._sessions.clear()
        self._last = None
        current: asyncio.AbstractEventLoop | None
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, (session, _closer) in entries:
            if session.closed:
                continue
            if loop is current:
                await session.close()
            elif not loop.is_closed() and loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(session.close(), loop)
                await asyncio.wrap_future(fut)
