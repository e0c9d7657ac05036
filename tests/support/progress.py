"""Record progress events (``progress=`` callbacks) for assertions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["recorder"]


def recorder() -> tuple[list[tuple[str, dict[str, Any]]], Callable[[str, dict[str, Any]], None]]:
    """``events, listener = recorder()``: the listener appends ``(kind, data)`` to ``events``."""
    events: list[tuple[str, dict[str, Any]]] = []
    return events, lambda kind, data: events.append((kind, data))
