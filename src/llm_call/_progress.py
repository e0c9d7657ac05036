"""Progress events without plumbing: a context variable holds the current listener.

Any layer reports what is happening with :func:`emit` (``emit("tool_started", tool="x")``); the
task manager, or a caller's ``progress=`` callback, installs a listener with :func:`listening`.
Context variables follow asyncio tasks, so concurrent calls never see each other's events.
A listener that raises is logged and ignored: progress display must never break a call.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressListener", "emit", "listening"]

ProgressListener = Callable[[str, dict[str, Any]], None]

_listener: contextvars.ContextVar[ProgressListener | None] = contextvars.ContextVar(
    "llm_call_progress", default=None
)
_log = logging.getLogger("llm_call.progress")


def emit(kind: str, **data: Any) -> None:
    """Report one progress event to the current listener, if any."""
    listener = _listener.get()
    if listener is None:
        return
    try:
        listener(kind, data)
    except Exception:
        _log.exception("progress listener failed on %s event; ignoring", kind)


class listening:  # lower case: used as a function, ``with listening(cb):``
    """Send events emitted inside the block to ``listener`` (and to any outer listener).

    A small class rather than a generator-based context manager: every task and every direct
    call enters one, so it allocates as little as it can (nothing at all for ``None``)."""

    __slots__ = ("_listener", "_token")

    def __init__(self, listener: ProgressListener | None) -> None:
        self._listener = listener
        self._token: contextvars.Token[ProgressListener | None] | None = None

    def __enter__(self) -> None:
        listener = self._listener
        if listener is None:
            return
        outer = _listener.get()
        if outer is None:
            self._token = _listener.set(listener)
            return

        def combined(kind: str, data: dict[str, Any]) -> None:
            listener(kind, data)
            outer(kind, data)

        self._token = _listener.set(combined)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _listener.reset(self._token)
            self._token = None
