"""Messages for an invalid configuration: name the key path, say what is wrong and how to fix it.

pydantic reports ``server.prot: Extra inputs are not permitted``; an operator needs
``server.prot: unknown key; did you mean 'port'?`` and, for a key put under the wrong table,
where it belongs (``server.max_retries: unknown key; it is a key of [retry]``). A bad value is
shown next to the complaint (``server.port: Input should be a valid integer (got 'eight')``)
unless the key may hold a secret.

Kept apart from ``config`` (which is at its size limit) and free of llm_call imports, so the
config layer imports it without any layering question.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

__all__ = ["format_validation_errors", "keys_at"]

#: the environment variables config.py applies over the file, and the key each one sets
ENV_KEYS = {
    "LLM_CALL_DEFAULT_MODEL": "default_model",
    "LLM_CALL_TASKS": "tasks.store",
    "LLM_CALL_API_KEYS": "server.api_keys",
    "LLM_CALL_ADMIN_KEYS": "server.admin_keys",
    "LLM_CALL_CLAUDE_CLI": "claude.cli_path",
    "LLM_CALL_CLAUDE_USE_API_KEY": "claude.use_api_key",
    "LLM_CALL_CLAUDE_POOL_SIZE": "claude.pool_size",
}

#: key paths whose values are never echoed (keys, tokens, header values, environments)
_SECRET_PATH = re.compile(r"key|token|secret|password|headers|env", re.IGNORECASE)
#: the password of a ``scheme://user:password@host`` URL in an echoed value
_URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _model_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The settings model a key path leads to (``("claude", "mcp_servers", "fs")`` ->
    ``McpServerConfig``), or None when the path does not lead to one."""
    node: Any = root
    i = 0
    while i < len(loc):
        if not _is_model(node):
            return None
        field = node.model_fields.get(str(loc[i]))
        if field is None:
            return None
        node = _unwrap(field.annotation)
        i += 1
        if get_origin(node) is dict:  # [section.NAME]: the next part is NAME
            node = _unwrap(get_args(node)[1])
            i += 1
    return node if _is_model(node) else None


def keys_at(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys a table at ``loc`` accepts ([] when ``loc`` is not a table of settings)."""
    model = _model_at(root, loc)
    if model is None:
        return []
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _tables(root: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, list[str]]]:
    """Every fixed table (``server``, ``claude``, ...) with its keys, for "it is a key of [x]"."""
    out: list[tuple[str, list[str]]] = []
    for name, field in root.model_fields.items():
        node = _unwrap(field.annotation)
        if _is_model(node):
            path = (*prefix, name)
            out.append((".".join(path), keys_at(node, ())))
            out.extend(_tables(node, path))
    return out


def _unknown_key(root: type[BaseModel], loc: Sequence[Any]) -> str:
    key, parent = str(loc[-1]), loc[:-1]
    known = keys_at(root, parent)
    table = f"[{'.'.join(str(p) for p in parent)}]" if parent else "the top level"
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if match:
        return f"unknown key; did you mean {match[0]!r}?"
    if parent and key in keys_at(root, ()):  # TOML: a key after a [table] header belongs to it
        return "unknown key here; it is a top-level key: move it above the first [table] header"
    homes = [name for name, keys in _tables(root) if key in keys]
    if homes:
        return f"unknown key here; it is a key of {' or '.join(f'[{h}]' for h in homes)}"
    if not parent:
        tables = [name for name, _ in _tables(root) if "." not in name]
        match = difflib.get_close_matches(key, tables, n=1, cutoff=0.6)
        if match:
            return f"unknown key; did you mean [{match[0]}]?"
    if known:
        return f"unknown key; {table} takes: {', '.join(known)}"
    return "unknown key"


def _shown(value: Any) -> str | None:
    """A short rendering of a bad value (a URL's password masked), or None when it is not worth showing."""
    if isinstance(value, str) and len(value) <= 80:
        return repr(_URL_PASSWORD.sub(r"\1***@", value))
    if isinstance(value, bool | int | float):
        return repr(value)
    return None


def format_validation_errors(
    exc: ValidationError, source: str, root: type[BaseModel], env: Mapping[str, str] | None = None
) -> str:
    """One line for all of ``exc``'s errors: ``invalid configuration in FILE: path: problem; ...``;
    a key set from the environment (``env``) names its variable, where the fix is."""
    parts = []
    from_env = {key: name for name, key in ENV_KEYS.items() if env is not None and env.get(name) is not None}
    for err in exc.errors():
        loc = err["loc"]
        path = ".".join(str(p) for p in loc) or "(top level)"
        origin = next((name for key, name in from_env.items() if path == key or path.startswith(key + ".")), None)
        if origin is not None:
            path += f" (from ${origin})"
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(root, loc)
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = None if _SECRET_PATH.search(path) else _shown(err.get("input"))
            if shown is not None and err["type"] != "missing":
                msg += f" (got {shown})"
        parts.append(f"{path}: {msg}")
    return f"invalid configuration in {source}: " + "; ".join(parts)
