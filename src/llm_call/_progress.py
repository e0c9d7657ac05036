"""Progress events without plumbing: a context variable holds the current listener.

Any layer reports what is happening with :func:`emit` (``emit("tool_started", tool="x")``); the
task manager, or a caller's ``progress=`` callback, installs a listener with :func:`listening`.
Context variables follow asyncio tasks, so concurrent calls never see each other's events.
A listener that raises is logged and ignored: progress display must never break a call.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def listening(listener: ProgressListener | None) -> Iterator[None]:
    """Send events emitted inside the block to ``listener`` (and to any outer listener)."""
    if listener is None:
        yield
        return
    outer = _listener.get()
    if outer is None:
        combined = listener
    else:

        def combined(kind: str, data: dict[str, Any]) -> None:
            listener(kind, data)
            outer(kind, data)

    token = _listener.set(combined)
    try:
        yield
    finally:
        _listener.reset(token)
