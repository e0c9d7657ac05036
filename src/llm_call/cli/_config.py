"""``llm-call config show`` and ``llm-call models``."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import dumps, load, reporting_errors

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)

    @config_app.command("show")
    def show() -> None:
        """Print the effective configuration (file + environment), secrets masked."""
        with reporting_errors():
            settings = load()
        typer.echo(dumps(settings.masked()))

    @config_app.command("reference")
    def reference() -> None:
        """Print the configuration reference (Markdown) generated from the settings model."""
        from .._config_reference import settings_reference

        typer.echo(settings_reference())

    app.add_typer(config_app, name="config")

    @app.command("models")
    def models(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """List routes, aliases and configured endpoints."""
        with reporting_errors():
            settings = load()
            from ..catalog import list_models

            rows = list_models(settings)
        if as_json:
            typer.echo(dumps(rows))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("model", "kind", "route", "notes")
        for row in rows:
            table.add_row(row["id"], row["kind"], row["route"], row.get("notes", ""))
        Console().print(table)
