"""Pick and open a task store from a path or URL (``make_store`` / ``open_store``).

Kept out of ``store.py`` (the protocol every store imports) so that the stores never import
the module that imports them: this factory sits above the SQLite and Redis stores.

Example::

    store = await open_store("/tmp/tasks.db")      # or None for the default location
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from .store import TaskStore

__all__ = ["default_store_path", "make_store", "open_store"]


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/llm_call/tasks.db`` (default ``~/.local/share/llm_call/tasks.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "llm_call" / "tasks.db"


def make_store(location: str | os.PathLike[str] | None = None) -> TaskStore:
    """The store for ``location`` (SQLite path, ``sqlite:///path``, ``redis://`` URL), unopened.

    ``None`` means ``settings.tasks.store`` (``--tasks``/``LLM_CALL_TASKS``), else the default path.
    """
    if location is None:
        from ..config import get_settings

        location = get_settings().tasks.store
    if location is None:
        location = default_store_path()
    text = os.fspath(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisTaskStore  # saq/redis themselves load in open()

        return RedisTaskStore(text)
    if "://" in text and not text.startswith("sqlite:///"):
        raise ConfigError(
            f"task store {text!r}: unknown URL scheme", hint="give a file path, sqlite:///path or redis://..."
        )
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]  # as SQLAlchemy: sqlite:///rel.db, sqlite:////abs.db
    from .sqlite_store import SQLiteTaskStore

    return SQLiteTaskStore(text)


async def open_store(location: str | os.PathLike[str] | None = None) -> TaskStore:
    """:func:`make_store` and :meth:`TaskStore.open`: a ready store, or ConfigError now."""
    store = make_store(location)
    await store.open()
    return store
