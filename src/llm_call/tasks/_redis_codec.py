"""Encoding between task records and the Redis hashes of the Redis task store, and small helpers.

Kept apart from ``redis_store.py`` (the store's methods) and ``_saq.py`` (the scripts); no I/O.
JSON goes through ``tasks._json``, the one codec both stores use: a value JSON cannot hold is
stored as its ``to_dict()`` (else its repr, logged) and a non-finite float as ``null`` in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, TaskCancelled, TaskError, error_to_dict
from ..types import TaskRecord, TaskStatus
from ._json import dumps, loads

__all__ = ["CANCELLED", "error_template", "glob_to_lua", "parse_limits", "record"]


def glob_to_lua(glob: str) -> str:
    """An ``fnmatch`` glob as an anchored Lua pattern (``*``, ``?``, ``[seq]``, ``[!seq]``), for
    the scripts that match routes inside Redis (``max/*`` -> ``^max%/.*$``)."""
    out, i, n = ["^"], 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "[":
            j = i + 1
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j < n:  # a set; an unclosed "[" is a plain character, as in fnmatch
                body = glob[i + 1 : j]
                negate = body.startswith("!")
                body = body[1:] if negate else body
                chars = "".join(ch if ch.isalnum() or ch == "-" else "%" + ch for ch in body)
                out.append("[" + ("^" if negate else "") + chars + "]")
                i = j + 1
                continue
        out.append(".*" if c == "*" else "." if c == "?" else c if c.isalnum() else "%" + c)
        i += 1
    return "".join(out) + "$"


def parse_limits(text: str, what: str) -> dict[str, int]:
    """``"max/*=4,openai/*=200"`` → ``{"max/*": 4, "openai/*": 200}``; ConfigError if malformed."""
    limits: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        pattern, sep, number = item.rpartition("=")
        if not sep or not pattern or not number.strip().isdigit() or int(number) < 1:
            raise ConfigError(
                f"task store URL: {what} item {item!r} is not PATTERN=N (N >= 1)",
                hint=f"e.g. {what}=max/*=4,openai/*=200",
            )
        limits[pattern.strip()] = int(number)
    return limits


def _loads(text: str | None) -> Any:
    return loads(text) if text else None


def _float(text: str | None) -> float | None:
    return float(text) if text else None


def record(h: Mapping[str, str]) -> TaskRecord:
    return TaskRecord(
        id=h["id"],
        status=TaskStatus(h["status"]),
        request=loads(h["request"]),
        route=h.get("route", ""),
        priority=int(h.get("priority") or 0),
        idempotency_key=h.get("idem") or None,
        created_at=float(h.get("created_at") or 0.0),
        started_at=_float(h.get("started_at")),
        finished_at=_float(h.get("finished_at")),
        attempts=int(h.get("attempts") or 0),
        progress=_loads(h.get("progress")) or {},
        result=_loads(h.get("result")),
        error=_loads(h.get("error")),
        worker=h.get("worker") or None,
        owner=h.get("owner") or None,
        cancel_requested=h.get("cancel") == "1",
        tenant=h.get("tenant") or None,
    )


def error_template(cls: type[TaskError], message: str) -> str:
    """An error dict whose task id the scripts fill in (``@@ID@@``)."""
    return dumps(error_to_dict(cls(message.replace("{id}", "@@ID@@"), task_id="@@ID@@")))


CANCELLED = error_template(TaskCancelled, "task {id} was cancelled")


