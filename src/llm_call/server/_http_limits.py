"""Connection-level limits under uvicorn: a deadline and a size bound for a request's head, and a
cap on open connections. They act before any request reaches the app (and so before any key or
Host check), where uvicorn itself bounds nothing.

**The head's deadline** (``server.header_timeout``): no idle or slow-header socket holds a
connection forever.

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

**The head's size** (:data:`MAX_HEAD_BYTES`, 64 KiB: 431 and the connection closed):
httptools buffers a header or URL until it ends, with no limit, so a client that never ended one
grew the server by every byte it sent (4 connections, 400 MB) before any key check. h11 bounds
the head itself (16 KiB).

**Open connections** (``server.max_connections``; by default 90% of the process's file limit,
which ``llm-call serve`` first raises to its hard limit): a connection past the cap is answered
503 and closed at once. Without it, connections (idle ones re-opened every ``header_timeout``, or
simply many clients) could take every file descriptor, and then the server's own sockets to its
upstreams, its task store and its CLI pipes fail, breaking the calls already running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["MAX_HEAD_BYTES", "default_max_connections", "http_limits_protocol", "raise_file_limit"]

_log = logging.getLogger("llm_call.server")

#: the most bytes a request line and its headers may take (h11's own limit is 16 KiB)
MAX_HEAD_BYTES = 64 * 1024
_TOO_LARGE_TEXT = f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes\n".encode()
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TOO_LARGE_TEXT)).encode() + b"\r\nconnection: close\r\n\r\n" + _TOO_LARGE_TEXT
)
_BUSY_TEXT = b"too many open connections (server.max_connections); try again shortly\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
    b"content-length: " + str(len(_BUSY_TEXT)).encode() + b"\r\nconnection: close\r\n\r\n" + _BUSY_TEXT
)


def raise_file_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit (many systems start
    services at 1,024, fewer than the connections a server is meant to hold)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # pragma: no cover - a sandbox may refuse
            _log.info("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)


def default_max_connections() -> int | None:
    """90% of the soft limit of open files (the rest stays for upstream sockets, the task store,
    CLI pipes and logs); None when the limit is unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else max(16, soft * 9 // 10)


def http_limits_protocol(http: str, timeout: float, max_connections: int | None = None) -> type[asyncio.Protocol]:
    """uvicorn's ``http`` protocol class (``"httptools"`` or ``"h11"``) with the header deadline,
    the connection cap (``max_connections``, None: none) and, for httptools, the head's size bound."""
    bound_head = http == "httptools"
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]

    class HeaderDeadline(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _in_head = True

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
            if max_connections is not None and len(self.connections) > max_connections:
                _log.warning("refusing a connection: %d open, server.max_connections is %d", len(self.connections) - 1, max_connections)
                transport.write(_BUSY)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._between_requests():
                self._arm()
            cycle = self.cycle
            if bound_head:
                self._feed_bounded(data)
            else:
                super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete: its cycle exists
                self._disarm()

        def _feed_bounded(self, data: bytes) -> None:
            if not self._in_head:
                super().data_received(data)
                return
            room = MAX_HEAD_BYTES - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                super().data_received(data)
                return
            # the head must end within the room left; what follows it (a body) is not head
            super().data_received(data[:room])
            if self._in_head:
                self._in_head = False
                transport = self.transport
                if not transport.is_closing():
                    transport.write(_HEAD_TOO_LARGE)
                    transport.close()
                return
            self._feed_bounded(data[room:])

        def on_headers_complete(self) -> None:  # httptools' callbacks (h11 has none)
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head, self._head_bytes = True, 0
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"Limited{base.__name__}"
    return HeaderDeadline
