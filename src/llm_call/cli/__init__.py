"""The ``llm-call`` command line (typer + rich). Thin: it turns flags into public API calls.

Each command group lives in its own module with a ``register(app)`` function, listed in
``_COMMAND_MODULES``. Exit codes: 0 success, 1 the call failed, 2 usage or configuration error.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from ._common import state

__all__ = ["app", "main"]

app = typer.Typer(
    name="llm-call",
    help="One call to every LLM: ask, validate, retry, run background tasks, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_COMMAND_MODULES = (
    "_ask",
    "_config",
    "_serve",
    "_doctor",
    "_quota",
    "_validators",
    "_tasks",
    "_batch",
    "_mcp",
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"llm-call {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="TOML config file (default: $LLM_CALL_CONFIG or ./llm_call.toml)")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit")
    ] = False,
) -> None:
    state.config_path = config


for _name in _COMMAND_MODULES:
    importlib.import_module(f".{_name}", __name__).register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        app(args=argv, prog_name="llm-call")
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
