"""Housekeeping steps that run beside a manager's housekeeping loop, so that heartbeats never wait
behind them: the retention sweep can take long (many expired tasks), and on Redis a job that is
not touched within its heartbeat is swept by any process's recovery and run again.
"""

from __future__ import annotations

import logging
import time

from .store import TaskStore

__all__ = ["remove_expired"]

_log = logging.getLogger("llm_call.tasks")


async def remove_expired(store: TaskStore, retention_s: float) -> None:
    """Delete the finished tasks older than ``retention_s``; a failure is logged (the next sweep
    tries again)."""
    try:
        removed = await store.cleanup(time.time() - retention_s)
    except Exception:
        _log.exception("task retention cleanup failed; the next sweep tries again")
        return
    if removed:
        _log.info("removed %d task(s) older than the retention period", removed)
