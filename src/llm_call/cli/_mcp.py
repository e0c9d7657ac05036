"""``llm-call mcp``: llm_call's tools (ask, submit, status, wait, cancel, models) as an MCP server
on stdin/stdout, for Claude Code and other MCP clients (the server module is imported only here)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ._common import EXIT_USAGE, fail, load_for, reporting_errors

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("mcp")
    def mcp(
        config: Annotated[str | None, typer.Option("--config", "-c", help="TOML config file")] = None,
        tasks: Annotated[str | None, typer.Option("--tasks", help="Task store: SQLite path or redis:// URL (default: [tasks] store)")] = None,
    ) -> None:
        """Serve llm_call as an MCP server over stdio (tools: ask, submit, status, wait, cancel, models).

        Start it from an MCP client, e.g. Claude Code's --mcp-config:
        {"mcpServers": {"llm_call": {"command": "llm-call", "args": ["mcp"]}}}.
        Background tasks submitted here run in this process while it lives and stay in the task
        store; `llm-call serve` also serves the same tools over HTTP at /mcp.
        """
        settings = load_for(config, tasks)
        try:
            from ..server._mcp import run_stdio
        except ImportError as exc:
            fail(f"the MCP server needs the mcp package: pip install 'llm-call[mcp]' ({exc})", EXIT_USAGE)
        with reporting_errors():
            asyncio.run(run_stdio(settings))
