"""The process-wide settings, reached without importing ``config`` at module import.

``config`` loads pydantic; the layers that need settings on every call (routing, retries,
request building) call :func:`current_settings`, which imports it on first use only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["current_settings", "without_saved_sessions"]

_config_module: Any = None


def current_settings() -> Settings:
    """``config.get_settings()``, with ``config`` imported on first use."""
    global _config_module
    module = _config_module
    if module is None:
        from . import config as module

        _config_module = module
    settings: Settings = module.get_settings()
    return settings


def without_saved_sessions(settings: Settings) -> Settings:
    """``settings`` for a process that runs other people's calls (``llm-call serve`` and
    ``llm-call worker``): unless the operator set ``[claude] persist_sessions``, the Claude CLI
    keeps no conversation on disk. No request can resume a session, so saving one would only keep
    every key's prompts and answers under the service user's ``~/.claude`` (a folder per call)."""
    if settings.claude.persist_sessions is not None:
        return settings
    claude = settings.claude.model_copy(update={"persist_sessions": False})
    return settings.model_copy(update={"claude": claude})
