"""The command-line reference (docs/cli.md), generated from the Typer app so that it lists every
command and flag as they are: ``python -m llm_call.cli._reference > docs/cli.md``.

``tests/test_cli_docs.py`` checks the committed page against it, as the configuration reference
is checked against the settings model.
"""

from __future__ import annotations

from typing import Any

import typer

from . import app

__all__ = ["cli_reference"]

_INTRO = """\
Generated from the `llm-call` command (`python -m llm_call.cli._reference > docs/cli.md`); every
command also has `--help`. Exit codes: 0 success, 1 the call (or task) failed, 2 a usage or
configuration error (a bad flag, a missing file, an invalid config). `-c/--config FILE` goes
before the command (`llm-call -c FILE ask ...`); `batch`, `serve` and `mcp` also take it after.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _kind(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    bare = param.bare_type() if callable(getattr(param, "bare_type", None)) else "str"
    kind = {"str": "text", "float": "number", "int": "integer", "bool": "flag", "list[str]": "text"}.get(str(bare), str(bare))
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:
        kind += f" ({'' if low is None else low}..{'' if high is None else high})"
    if param.multiple:
        kind += ", repeatable"
    return kind


def _default(param: Any) -> str:
    default = param.default
    if getattr(param, "secondary_opts", None) and getattr(param, "is_flag", False):
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    if default is None or default is False or callable(default):
        return ""
    return f"`{default}`"


def _names(param: Any) -> str:
    if _is_argument(param):
        return f"`{param.metavar or (param.name or '').upper()}`"
    return ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])


def _command(lines: list[str], name: str, command: Any) -> None:
    lines.append(f"## `{name}`\n")
    help_text = (command.help or "").strip()
    if help_text:
        lines.append(help_text + "\n")
    args = " ".join(p.metavar or (p.name or "").upper() for p in command.params if _is_argument(p))
    lines.append(f"```\n{name} [OPTIONS]{' ' + args if args else ''}\n```\n")
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        what = getattr(param, "help", None) or ""
        rows.append(f"| {_names(param)} | {_kind(param)} | {_default(param)} | {_cell(what)} |")
    if rows:
        lines.append("| argument / option | type | default | what |")
        lines.append("| --- | --- | --- | --- |")
        lines.extend(rows)
        lines.append("")


def cli_reference() -> str:
    """Markdown reference of every ``llm-call`` command and flag."""
    root = typer.main.get_command(app)
    lines = ["# Command-line reference", "", _INTRO]

    def walk(command: Any, name: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            _command(lines, name, command)
            return
        if name == "llm-call":
            _command(lines, name, command)
        else:
            lines.append(f"## `{name}`\n\n{(command.help or '').strip()}\n")
        for sub_name, sub in subcommands.items():
            walk(sub, f"{name} {sub_name}")

    walk(root, "llm-call")
    return "\n".join(lines)


if __name__ == "__main__":
    print(cli_reference())
