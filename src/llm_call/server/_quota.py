"""``GET /v1/usage/quota``: the Claude subscription's quota as the ``max/*`` route last saw it;
``GET /v1/claude/pool``: this server's warm Claude CLI processes.

The state comes from the CLI's ``rate_limit_event`` lines (any process that shares the task store:
workers, this server, ``llm-call ask``); see :mod:`llm_call.providers.claude_quota`. It is about
the operator's subscription, not about any tenant's tasks, so every valid key may read it.

Example::

    GET /v1/usage/quota
    {"object": "llm_call.quota",
     "accounts": [{"account": "default", "status": "allowed_warning", "representative": "five_hour",
                   "windows": {"five_hour": {"utilization": 0.93, "resets_at": 1796465528,
                                             "status": "allowed_warning", "resets_in_s": 3540.2}},
                   "overage": {...}, "blocked": null, "slowed": true, "updated_at": ...}]}
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI
from starlette.responses import Response

from ..errors import LLMCallError
from ..providers.claude_quota import QUOTA, QuotaState, quota_report
from ._state import ServerState

__all__ = ["read_states", "register"]

_log = logging.getLogger("llm_call.server")


async def read_states(state: ServerState) -> dict[str, QuotaState]:
    """The quota states of this process, refreshed from the task store when there is one."""
    mgr = state.tasks
    if mgr is None or getattr(mgr, "closed", False):
        return QUOTA.all()
    try:
        store = mgr.store
        if hasattr(store, "read_meta"):
            return await QUOTA.refresh(store)  # type: ignore[arg-type]
    except LLMCallError as exc:  # no store, or it is down: show what this process knows
        _log.warning("reading the Claude quota from the task store failed: %s", exc)
    return QUOTA.all()


def register(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/usage/quota", tags=["usage"], summary="The Claude subscription's quota (max/* route)", response_model=None)
    async def usage_quota() -> Response:
        """Windows (utilization, reset time), overage, and whether ``max/*`` calls are blocked or
        slowed now, per account. Empty until a ``max/*`` call in subscription mode has run."""
        cfg = state.settings.claude
        rows = quota_report(await read_states(state), cfg.allow_overage, cfg.slowdown_at)
        body = {"object": "llm_call.quota", "accounts": rows}
        return Response(json.dumps(body), media_type="application/json")

    @app.get("/v1/claude/pool", tags=["usage"], summary="The warm Claude CLI processes of the max/* route", response_model=None)
    async def claude_pool() -> Response:
        """Processes now (idle, busy), started and replaced (by reason) so far, calls served,
        memory, and the configured limit (``claude.pool_size``; 0: the pool is off)::

            {"object": "llm_call.claude_pool", "enabled": true, "size_limit": 4, "processes": 2,
             "idle": 1, "busy": 1, "started": 3, "replaced": 1, "replaced_by_reason": {"max_calls": 1},
             "calls": 250, "rss_mb": 371.5}
        """
        from ..providers.claude_cli import pool_state

        body = {"object": "llm_call.claude_pool", **pool_state()}
        body["size_limit"] = state.settings.claude.pool_size
        body["enabled"] = state.settings.claude.pool_size > 0
        return Response(json.dumps(body), media_type="application/json")
