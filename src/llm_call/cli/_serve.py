"""``llm-call serve``: the OpenAI-compatible server (FastAPI is imported only when it runs)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ._common import EXIT_FAILED, EXIT_USAGE, fail, load_for, reporting_errors

__all__ = ["register"]

async def _check_store(location: str | None) -> None:
    """Open and close the task store now, so an unusable one is a clean error (exit 2) rather
    than a traceback from the server's startup."""
    from ..tasks import open_store

    store = await open_store(location)
    await store.close()


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: Annotated[str | None, typer.Option("--host", help="Address to bind (default: [server] host, 127.0.0.1)")] = None,
        port: Annotated[int | None, typer.Option("--port", "-p", min=0, max=65535, help="Port (default: [server] port, 8000)")] = None,
        config: Annotated[str | None, typer.Option("--config", "-c", help="TOML config file")] = None,
        tasks: Annotated[str | None, typer.Option("--tasks", help="Task store: SQLite path or redis:// URL (default: [tasks] store)")] = None,
    ) -> None:
        """Serve the OpenAI-compatible API: chat completions, models, background responses, tasks.

        Binding to anything but a loopback address requires API keys (LLM_CALL_API_KEYS or
        [server] api_keys). SIGTERM/SIGINT stop it gracefully: requests in flight get
        [server] grace_period seconds, background tasks stay queued for the next start.
        """
        settings = load_for(config, tasks)
        if host is not None:
            settings.server.host = host
        if port is not None:
            settings.server.port = port
        from ..providers.router import check_models
        from ..server._auth import is_loopback, no_keys_message

        problems = check_models(settings)
        if problems:
            fail(f"models named in the configuration ({settings.source or 'environment'}) route nowhere:\n  "
                 + "\n  ".join(problems) + "\nfix them (ROUTE/MODEL, e.g. openai/gpt-4o-mini; `llm-call models` lists routes)")

        bind = settings.server.host
        if not is_loopback(bind) and not (settings.server.api_keys or settings.server.admin_keys):
            fail(no_keys_message(bind), EXIT_USAGE)
        with reporting_errors():
            asyncio.run(_check_store(settings.tasks.store))
        from ..server import serve as run_server

        if not run_server(settings):
            raise typer.Exit(EXIT_FAILED)
