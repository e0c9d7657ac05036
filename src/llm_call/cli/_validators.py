"""``llm-call validators``: the validation specs ``--validate`` accepts, with their parameters."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import dumps

__all__ = ["register"]


def _param_text(p: dict[str, object]) -> str:
    text = f"{p['name']}"
    if p["type"] != "str":
        text += f": {p['type']}"
    if p["required"]:
        text += " (required)"
    elif p["default"] not in (None, ""):
        text += f" = {p['default']}"
    return text


def register(app: typer.Typer) -> None:
    @app.command("validators")
    def validators(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """List the validators usable with --validate, their parameters and an example each."""
        from ..validation import describe_validators

        rows = describe_validators()
        if as_json:
            typer.echo(dumps(rows))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("name", "parameters", "example", "description", show_lines=False)
        for row in rows:
            name = str(row["name"])
            if row["aliases"]:
                name += "\n(" + ", ".join(row["aliases"]) + ")"
            params = "\n".join(_param_text(p) for p in row["params"]) or "-"
            table.add_row(name, params, str(row["example"]), str(row["description"]))
        Console(soft_wrap=False).print(table)
        typer.echo(
            "Spec forms: NAME, NAME:value (main parameter), NAME:key=value,key=value, "
            'or JSON {"type": NAME, "params": {...}}.'
        )
