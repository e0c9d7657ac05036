"""The Provider protocol every route implements, and helpers shared by providers."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, runtime_checkable

from ..types import Chunk, EmbeddingRequest, Embeddings, Message, Request, Response, ToolCallDelta

__all__ = ["CLAUDE_ONLY_OPTIONS", "Embedder", "ProgressCallback", "Provider", "message_text", "parse_retry_after", "tool_deltas"]

#: options only the Claude Code CLI route understands; other routes reject them by name rather
#: than drop them silently or send them to an API that would ignore them
CLAUDE_ONLY_OPTIONS = frozenset(
    {
        "mcp_config",
        "mcp_servers",
        "tool_profile",
        "allowed_tools",
        "disallowed_tools",
        "cwd",
        "permission_mode",
        "resume",
        "max_turns",
        "max_budget_usd",
        "effort",
        "add_dirs",
        "setting_sources",
        "env",
        "persist_session",
    }
)

#: ``progress(kind, data)``: called by providers for events worth showing (tool started, ...).
ProgressCallback = Any


@runtime_checkable
class Provider(Protocol):
    """One way of reaching models.

    ``complete`` returns a whole answer or raises an :class:`~llm_call.errors.ProviderError`;
    ``stream`` yields :class:`Chunk` deltas and ends with a chunk carrying ``finish_reason``, or
    raises (never ends silently on a cut stream). ``aclose`` frees sessions and processes.
    ``request.model`` is the part of the model string the provider needs (``gpt-4o`` for
    ``openai/gpt-4o``); ``request.options`` carries provider options.
    """

    name: str

    async def complete(self, request: Request) -> Response: ...

    def stream(self, request: Request) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Embedder(Protocol):
    """A provider that also turns texts into vectors (``POST /embeddings`` and its kin).

    ``embed`` returns one vector per ``request.input`` text, in order, or raises an
    :class:`~llm_call.errors.ProviderError` like ``complete``. Routes without embeddings (the
    Claude CLI, the local chat models) do not implement it; the router refuses them by name.
    """

    async def embed(self, request: EmbeddingRequest) -> Embeddings: ...


def message_text(message: Message) -> str:
    """The text of a message whose content is a string or a list of parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "".join(parts)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def tool_deltas(calls: list[dict[str, Any]]) -> list[ToolCallDelta]:
    """``delta.tool_calls`` entries as ToolCallDelta (a missing index means the entry's position)."""
    out = []
    for i, c in enumerate(calls):
        fn = c.get("function") or {}
        args = fn.get("arguments")
        if args is not None and not isinstance(args, str):
            raise TypeError("tool call arguments are not a string")
        out.append(ToolCallDelta(int(c.get("index", i)), c.get("id"), fn.get("name"), args or ""))
    return out
