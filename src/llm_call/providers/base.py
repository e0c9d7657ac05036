"""The Provider protocol every route implements, and helpers shared by providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from ..types import Chunk, Message, Request, Response

__all__ = ["CLAUDE_ONLY_OPTIONS", "ProgressCallback", "Provider", "message_text"]

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
