"""A deadline for a request's headers (``server.header_timeout``): no idle or slow-header socket
holds a connection forever.

uvicorn arms no timer until a connection has sent a whole request: a client that connects and
sends nothing, or sends a request line and then one header byte a minute (the "slowloris"
pattern), keeps its connection, its file descriptor and its parser for as long as it likes, and a
few thousand of them exhaust the process's descriptors. Its keep-alive timer does not help either:
the first byte of the next request cancels it.

The protocol classes here subclass uvicorn's (httptools or h11) and add one timer: armed when a
connection opens and whenever bytes arrive while no request is in progress (between requests on a
keep-alive connection), disarmed once a request's headers are complete (a new request cycle
exists). If it fires, the connection is closed. What comes after the headers is bounded elsewhere:
the body by ``server.body_timeout`` (408), the answer by ``server.request_timeout``; a long answer
or stream is never cut by this timer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["header_deadline_protocol"]

_log = logging.getLogger("llm_call.server")


def header_deadline_protocol(http: str, timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's ``http`` protocol class (``"httptools"`` or ``"h11"``) with the header deadline."""
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]

    class HeaderDeadline(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None

        def _between_requests(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            transport = self.transport
            if self._between_requests() and transport is not None and not transport.is_closing():
                _log.debug("closing a connection whose request headers did not arrive within %g s (server.header_timeout)", timeout)
                transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._between_requests():
                self._arm()
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete: its cycle exists
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline
