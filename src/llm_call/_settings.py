"""The process-wide settings, reached without importing ``config`` at module import.

``config`` loads pydantic; the layers that need settings on every call (routing, retries,
request building) call :func:`current_settings`, which imports it on first use only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["current_settings"]

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
