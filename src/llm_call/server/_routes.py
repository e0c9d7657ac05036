"""``GET /v1/models``, ``GET /health``, ``GET /metrics``, and the quota (``/v1/usage/quota``), Responses, task, route-status and /ui routers."""

from __future__ import annotations

import fnmatch
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from ._errors import HTTPFailure
from ._metrics import CONTENT_TYPE
from ._state import ServerState

__all__ = ["may_use", "register", "shown_notes"]

_log = logging.getLogger("llm_call.server")
_STARTED = int(time.time())


def may_use(model_id: str, allowed: list[str]) -> bool:
    """A model row requests may use under ``allowed_models``: a name a pattern matches, or a
    route (``openai/*``) some pattern allows part of (``openai/gpt-4o*``)."""
    for pattern in allowed:
        if fnmatch.fnmatchcase(model_id, pattern):
            return True
        if model_id.endswith("/*") and pattern.startswith(model_id[:-1]):
            return True
    return False


def shown_notes(row: dict[str, Any], operator: bool) -> str:
    """A catalog row's notes as a caller may see them: an endpoint's notes are its base URL (a
    host of the operator's network), shown only to an admin key."""
    if row.get("kind") == "endpoint" and not operator:
        return "OpenAI-compatible endpoint"
    return str(row.get("notes", ""))


def _operator(request: Request, state: ServerState) -> bool:
    from ._auth import sees_operator_details

    return sees_operator_details(request.scope["llm_call"].caller, state.auth)


def _model_rows(state: ServerState, include_unavailable: bool, operator: bool = False) -> list[dict[str, Any]]:
    from ..catalog import list_models

    rows = list_models(state.settings)
    allowed = state.settings.server.allowed_models
    out = []
    for row in rows:
        if not row.get("available") and not include_unavailable:
            continue
        if allowed is not None and not may_use(row["id"], allowed):
            continue  # requests could not use it: [server] allowed_models
        out.append(
            {
                "id": row["id"],
                "object": "model",
                "created": _STARTED,
                "owned_by": f"llm_call/{row['route']}",
                "llm_call": {
                    "kind": row["kind"],
                    "route": row["route"],
                    "available": row["available"],
                    "notes": shown_notes(row, operator),
                },
            }
        )
    return out


def _usable(model: str, state: ServerState) -> bool:
    """Whether a request may name ``model``: the very check every call makes (allowed_models,
    declared local models, operator-only LiteLLM providers)."""
    from ._request_policy import check_model

    try:
        check_model(model, state.settings, "model")
    except HTTPFailure:
        return False
    return True


def _anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


def _anthropic_model(row: dict[str, Any]) -> dict[str, Any]:
    """A model row in the shape of Anthropic's ``GET /v1/models``."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created"]))
    return {"type": "model", "id": row["id"], "display_name": row["id"], "created_at": created, "llm_call": row["llm_call"]}


def register(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/models", tags=["models"], summary="List usable models, routes and aliases")
    async def list_models(request: Request, all: bool = False) -> JSONResponse:
        """Routes (``max/*``, ``openai/*``...), aliases and configured endpoints that can be used now;
        ``?all=true`` lists the unavailable ones too (``llm_call.available`` false). In Anthropic's
        shape for a client that sends ``anthropic-version`` (the anthropic SDK, Claude Code)."""
        rows = _model_rows(state, all, _operator(request, state))
        if _anthropic(request):
            data = [_anthropic_model(row) for row in rows]
            return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                 "last_id": data[-1]["id"] if data else None})
        return JSONResponse({"object": "list", "data": rows})

    @app.get("/v1/models/{model:path}", tags=["models"], summary="One model, route or alias")
    async def retrieve_model(request: Request, model: str) -> JSONResponse:
        """A listed id, or a concrete model of a listed route (``up/x`` of ``up/*``)."""
        rows = _model_rows(state, True, _operator(request, state))
        found = next((row for row in rows if row["id"] == model), None)
        if found is None and not any(c in model for c in "*?["):  # a concrete name, not a pattern
            route = next((r for r in rows if r["id"].endswith("/*") and fnmatch.fnmatchcase(model, r["id"])), None)
            if route is not None and _usable(model, state):
                found = {**route, "id": model}
        if found is None:
            raise HTTPFailure(404, f"no model, route or alias named {model!r}; GET /v1/models lists them",
                              param="model", code="model_not_found")
        return JSONResponse(_anthropic_model(found) if _anthropic(request) else found)

    @app.get("/health", tags=["health"], summary="Liveness and readiness (including the task store)")
    async def health(request: Request) -> JSONResponse:
        """200 when the server can take work, 503 with the failing check otherwise.
        ``live`` is always true while the process answers. Without a key it names no path, URL
        or setting, and neither does an ordinary key's: the details (the store's path or URL) are
        for admin keys (``server.admin_keys``)."""
        checks: dict[str, Any] = {}
        ready = True
        from ._background import store_check

        ok, reason, detail = await store_check(state)
        detailed = _operator(request, state)
        checks["store"] = {"ok": ok, "detail": detail if detailed else reason}
        ready = ready and ok
        body = {"status": "ok" if ready else "unavailable", "live": True, "ready": ready, "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/health/live", tags=["health"], summary="Liveness only")
    async def live() -> JSONResponse:
        return JSONResponse({"status": "ok", "live": True})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        state.metrics.refresh_breakers()
        from ._background import task_counts

        counts = await task_counts(state)
        if counts is not None:
            state.metrics.set_tasks(*counts)
        from ..providers.claude_quota import quota_report
        from ._quota import read_states

        cfg = state.settings.claude
        state.metrics.set_quota(quota_report(await read_states(state), cfg.allow_overage, cfg.slowdown_at))
        from ..providers.claude_cli import pool_state

        state.metrics.set_claude_pool(pool_state())
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    from ._quota import register as register_quota
    from ._responses import register as register_responses
    from ._route_status import register as register_route_status
    from ._tasks import register as register_tasks
    from ._ui import register as register_ui

    register_responses(app, state)
    register_tasks(app, state)
    register_route_status(app, state)
    register_quota(app, state)
    register_ui(app)
