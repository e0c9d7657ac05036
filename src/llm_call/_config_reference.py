"""The configuration reference (docs/configuration.md, ``llm-call config reference``), generated
from the settings models so that it cannot drift from them.

Every key is listed, including the keys of named tables (``[aliases.NAME]``,
``[endpoints.NAME]``, ``[claude.mcp_servers.NAME]``, ``[retry.routes."PATTERN"]`` ...), with
the environment variables that override the file. Lives apart from ``config`` (which is at its
size limit); ``tests/test_batch_docs.py`` checks the committed page against it.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from .config import Settings

__all__ = ["settings_reference"]

#: what the key of a named table stands for, by the field that holds the tables
_TABLE_KEY = {"routes": "PATTERN"}

_INTRO = """\
Generated from `llm_call.config.Settings` (`llm-call config reference > docs/configuration.md`).

The file: `llm-call --config FILE` (or `load_settings(path)`), else `$LLM_CALL_CONFIG`, else
`./llm_call.toml`; no file means the defaults below. Every key is checked: an unknown key, a
wrong type or a bad value is a `ConfigError` naming the file and the key path, with the nearest
valid key for a typo. `llm-call config show` prints the effective settings, secrets masked.

```toml
default_model = "fast"               # top-level keys come before the first [table]

[aliases.fast]
model = "openai/gpt-4o-mini"
system = "Answer briefly."

[aliases]
smart = "openai/gpt-4o"              # string shorthand for model = ...
"claude-*" = "fast"                  # a glob: any model name it matches (exact names win)

[endpoints.vllm]                     # then model = "vllm/<model>"
base_url = "http://127.0.0.1:8001/v1"
api_key_env = "VLLM_KEY"

[retry.routes."max/*"]               # per-route retry settings
max_retries = 1
```

## Environment

Applied over the file. Provider credentials stay in the providers' own variables
(`OPENAI_API_KEY`, `OPENAI_BASE_URL`, LiteLLM's `ANTHROPIC_API_KEY` ...), read when a call needs them.

| variable | sets |
| --- | --- |
| `LLM_CALL_CONFIG` | the file to read (when `--config` is not given) |
| `LLM_CALL_DEFAULT_MODEL` | `default_model` |
| `LLM_CALL_TASKS` | `tasks.store` (a SQLite path or a `redis://` URL) |
| `LLM_CALL_API_KEYS`, `LLM_CALL_ADMIN_KEYS` | `server.api_keys`, `server.admin_keys` (comma lists; a blank item is an error) |
| `LLM_CALL_CLAUDE_CLI` | `claude.cli_path` |
| `LLM_CALL_CLAUDE_USE_API_KEY` | `claude.use_api_key` (`1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`) |
| `LLM_CALL_CLAUDE_POOL_SIZE` | `claude.pool_size` |
"""


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _type_name(ann: Any) -> str:
    """A type as the reference shows it (no ``|``: it would split a Markdown table cell)."""
    origin = get_origin(ann)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(ann))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(ann))
    if origin is list:
        return f"list of {_type_name(get_args(ann)[0])}"
    if origin is dict:
        value = get_args(ann)[1]
        if _is_model(value):
            return "tables (below)"
        return "table" if value is Any else f"table of {_type_name(value)}"
    if ann is type(None):
        return "None"
    if ann is Any:
        return "any"
    return getattr(ann, "__name__", str(ann))


def _table_of(ann: Any) -> type[BaseModel] | None:
    """The model of ``dict[str, Model]`` (a table of named tables), else None."""
    if get_origin(ann) is dict and _is_model(get_args(ann)[1]):
        model: type[BaseModel] = get_args(ann)[1]
        return model
    return None


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    return f"`{field.get_default(call_default_factory=True)!r}`"


def settings_reference() -> str:
    """Markdown reference of every setting, generated from the models (docs/configuration.md)."""
    lines = ["# Configuration reference", "", _INTRO]
    later: list[tuple[type[BaseModel], str]] = []

    def walk(model: type[BaseModel], prefix: str, title: str) -> None:
        rows = []
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                later.append((ann, f"{prefix}{name}."))
                continue
            table = _table_of(ann)
            if table is not None:
                later.append((table, f"{prefix}{name}.{_TABLE_KEY.get(name, 'NAME')}."))
            rows.append(f"| `{prefix}{name}` | {_type_name(ann)} | {_default(f)} | {f.description or ''} |")
        if rows:
            lines.append(f"## `{title}`\n")
            doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ").replace("``", "`")
            if doc and model is not Settings:
                lines.append(f"{doc}\n")
            lines.append("| key | type | default | notes |")
            lines.append("| --- | --- | --- | --- |")
            lines.extend(rows)
            lines.append("")

    walk(Settings, "", "(top level)")
    while later:
        model, prefix = later.pop(0)
        walk(model, prefix, prefix.rstrip("."))
    return "\n".join(lines)
