"""docs/cli.md is the command line as it is: generated from the Typer app, every command and
flag listed, and every flag with a help text (the reference has nothing to say otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from llm_call.cli import app
from llm_call.cli._reference import cli_reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _commands(command: Any, name: str) -> list[tuple[str, Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [(name, command)]
    out = [(name, command)]
    for sub_name, sub in subcommands.items():
        out.extend(_commands(sub, f"{name} {sub_name}"))
    return out


def test_cli_reference_is_up_to_date() -> None:
    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == cli_reference() + "\n", (
        "docs/cli.md is out of date: run `python -m llm_call.cli._reference > docs/cli.md`"
    )


def test_every_command_and_flag_is_in_the_reference_with_a_help_text() -> None:
    reference = cli_reference()
    commands = _commands(typer.main.get_command(app), "llm-call")
    assert {"llm-call ask", "llm-call batch", "llm-call tasks wait", "llm-call config show"} <= {n for n, _ in commands}
    for name, command in commands:
        assert f"## `{name}`" in reference, name
        for param in command.params:
            if getattr(param, "param_type_name", "") == "option":
                assert f"`{param.opts[0]}`" in reference, (name, param.opts)
            assert getattr(param, "help", None), f"{name} {param.name} has no help text"
