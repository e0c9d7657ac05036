"""``GET /v1/routes``: what each route is doing now, for the dashboard's Routes page and scripts.

One row per route (the model after aliases, as tasks record it) that has running or queued tasks
the caller can see, or a configured concurrency or queue limit, or a circuit breaker. Each row
names its breaker (``openai``, ``endpoint:NAME``, ``max``...) and the breaker's state; breakers
no task route maps to get rows of their own (``route`` null).

Counts come from the same task listing as ``GET /v1/tasks``, so a key sees counts of the tasks it
may list, never more; they are exact up to :data:`_COUNT_CAP` tasks per status (``truncated``
says when the cap was hit). Breaker states are process-wide facts about upstreams, not task data.

Example::

    GET /v1/routes
    {"object": "llm_call.routes",
     "routes": [{"route": "openai/gpt-4o-mini", "breaker": "openai", "state": "closed",
                 "running": 2, "queued": 5, "limit": null, "queue_limit": null, ...}],
     "breakers": {"openai": {"state": "closed", "consecutive_failures": 0, ...}},
     "truncated": false}
"""

from __future__ import annotations

import fnmatch
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from ..errors import LLMCallError
from ..types import TaskStatus
from ._background import manager
from ._state import ServerState

__all__ = ["register", "route_rows"]

_log = logging.getLogger("llm_call.server")
#: tasks per status read to count them; beyond it the counts are a floor (``truncated``)
_COUNT_CAP = 1000


def _breaker_of(route: str, state: ServerState, cache: dict[str, str | None]) -> str | None:
    if route in cache:
        return cache[route]
    from .._retry import breaker_key
    from ..providers.router import resolve

    try:
        key: str | None = breaker_key(resolve(route, state.settings))
    except LLMCallError:
        key = None  # a route the current configuration no longer knows
    cache[route] = key
    return key


def _first_match(route: str, limits: dict[str, int]) -> tuple[str, int] | None:
    for pattern, n in limits.items():
        if fnmatch.fnmatchcase(route, pattern):
            return pattern, n
    return None


def route_rows(
    state: ServerState, running: list[str], queued: list[str], breakers: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows of ``GET /v1/routes`` from the routes of running and queued tasks."""
    cfg = state.settings.tasks
    counts: dict[str, dict[str, int]] = {}
    for name, routes in (("running", running), ("queued", queued)):
        for route in routes:
            row = counts.setdefault(route, {"running": 0, "queued": 0})
            row[name] += 1
    cache: dict[str, str | None] = {}
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for route in sorted(counts):
        key = _breaker_of(route, state, cache)
        limit = _first_match(route, dict(cfg.route_limits))
        queue_limit = _first_match(route, dict(cfg.queue_limits))
        breaker = breakers.get(key) if key else None
        if key:
            used.add(key)
        rows.append(
            {
                "route": route,
                "breaker": key,
                "state": breaker["state"] if breaker else "closed",
                "breaker_detail": breaker,
                "running": counts[route]["running"],
                "queued": counts[route]["queued"],
                "limit": {"pattern": limit[0], "max": limit[1]} if limit else None,
                "queue_limit": {"pattern": queue_limit[0], "max": queue_limit[1]} if queue_limit else None,
            }
        )
    for pattern, n in dict(cfg.route_limits).items():
        if not any(fnmatch.fnmatchcase(r, pattern) for r in counts):
            q = dict(cfg.queue_limits).get(pattern)
            rows.append(
                {
                    "route": pattern, "breaker": None, "state": None, "breaker_detail": None,
                    "running": 0, "queued": 0, "limit": {"pattern": pattern, "max": n},
                    "queue_limit": {"pattern": pattern, "max": q} if q is not None else None,
                }
            )
    for key in sorted(set(breakers) - used):
        b = breakers[key]
        rows.append(
            {
                "route": None, "breaker": key, "state": b.get("state"), "breaker_detail": b,
                "running": 0, "queued": 0, "limit": None, "queue_limit": None,
            }
        )
    return rows


def register(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/routes", tags=["tasks"], summary="Per-route running and queued tasks, limits and breaker states", response_model=None)
    async def list_routes(request: Request) -> Response:
        from .._retry import health

        mgr = manager(state)
        caller = request.scope["llm_call"].caller
        tenant = None if caller.admin else caller.tenant  # as GET /v1/tasks: a key counts its own
        running = await mgr.list_tasks(TaskStatus.RUNNING, _COUNT_CAP, tenant=tenant)
        queued = await mgr.list_tasks(TaskStatus.QUEUED, _COUNT_CAP, tenant=tenant)
        breakers: dict[str, dict[str, Any]] = dict(health().get("breakers", {}))
        rows = route_rows(state, [r.route for r in running], [r.route for r in queued], breakers)
        body = {
            "object": "llm_call.routes",
            "routes": rows,
            "breakers": breakers,
            "truncated": len(running) >= _COUNT_CAP or len(queued) >= _COUNT_CAP,
        }
        return Response(json.dumps(body, default=str), media_type="application/json")
