"""What one server process holds: settings, auth, limits, metrics and the task manager."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._auth import KeyAuth, KeyLimiter
from ._browser import BrowserRules
from ._metrics import ServerMetrics

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["ServerState"]


@dataclass
class ServerState:
    settings: Settings
    auth: KeyAuth
    limiter: KeyLimiter
    browser: BrowserRules
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    #: the TaskManager (llm_call.tasks), started by the app's lifespan; None until then
    tasks: Any = None
    #: why background tasks are unavailable, when they are
    tasks_error: str | None = None
    #: route template of each plain Starlette endpoint (FastAPI only tags its own routes in the scope)
    endpoint_paths: dict[Any, str] = field(default_factory=dict)
    #: the task store's counts per status, shared by /health and /metrics for a moment (_background.py)
    counts_cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerState:
        server = settings.server
        return cls(
            settings=settings,
            auth=KeyAuth(server.api_keys, server.admin_keys),
            metrics=ServerMetrics(settings),
            limiter=KeyLimiter(server.max_concurrent_per_key),
            browser=BrowserRules(server.allowed_hosts, server.cors_origins, server.host),
        )
