"""Failures on the wire: every error becomes the OpenAI error shape with the right status.

Body: ``{"error": {"message", "type", "param", "code"}}``; upstream failures add
``"llm_call": {"error": error_to_dict(exc), "attempts": [...]}``.

=================================================  ======  ===================================
failure                                            status  type / code
=================================================  ======  ===================================
not JSON, bad or unknown field, UsageError          400     invalid_request_error; param = field
missing or wrong API key                            401     invalid_request_error / invalid_api_key
unknown model, route or task                        404     invalid_request_error / model_not_found,
                                                            task_not_found
body larger than ``server.max_body_bytes``          413     invalid_request_error / request_too_large
bad validation spec                                 422     invalid_request_error / invalid_validation_spec
the caller's budget ran out (``deadline_s``,        400     invalid_request_error / BudgetExceeded
``budget_usd``, ``budget_tokens``)
too many requests in flight for one key,            429     rate_limit_error
route queue full, upstream rate limit
upstream failure (HTTP error, refused, malformed,   502     upstream_error; code = the llm_call
stream cut, validation exhausted, CLI failure)              error type (``StreamInterrupted`` ...)
circuit breaker open, task store failing            503     upstream_error / CircuitOpen, task_store_error
task not in a state for this (review, result)       409     invalid_request_error / task_conflict
upstream timeout, ``server.request_timeout``        504     timeout_error
anything else                                       500     server_error (logged with traceback)
=================================================  ======  ===================================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from starlette.exceptions import HTTPException

from ..errors import (
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    HumanReviewNeeded,
    LLMCallError,
    ModelNotFound,
    ProviderHTTPError,
    ProviderTimeout,
    QueueFull,
    RateLimited,
    TaskCancelled,
    TaskError,
    TaskNotFound,
    TaskPending,
    TaskStoreError,
    UsageError,
    error_to_dict,
)

__all__ = ["HTTPFailure", "error_body", "failure_for", "pydantic_failure"]

_log = logging.getLogger("llm_call.server")


class HTTPFailure(HTTPException):
    """A failure with its HTTP status and OpenAI error fields, raised anywhere in the server."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        }
        if self.extra:
            data["llm_call"] = self.extra
        return data

    def encode(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False, default=str).encode()


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> bytes:
    """An OpenAI error body as bytes (for places that answer without raising)."""
    return json.dumps(
        {"error": {"message": message, "type": type, "param": param, "code": code}}, ensure_ascii=False
    ).encode()


def _message(exc: LLMCallError) -> str:
    text = exc.message or type(exc).__name__
    if exc.hint:
        text = f"{text} (hint: {exc.hint})"
    return text


def _attempts(exc: BaseException) -> list[Any] | None:
    attempts = getattr(exc, "attempts", None)
    if not attempts:
        return None
    out = []
    for a in attempts:
        to_dict = getattr(a, "to_dict", None)
        out.append(to_dict() if callable(to_dict) else a)
    return out


def _upstream(status: int, exc: LLMCallError, *, type: str = "upstream_error") -> HTTPFailure:
    extra: dict[str, Any] = {"error": error_to_dict(exc)}
    attempts = _attempts(exc)
    if attempts is not None:
        extra["attempts"] = attempts
    return HTTPFailure(status, _message(exc), type=type, code=type_name(exc), extra=extra)


def type_name(exc: BaseException) -> str:
    return type(exc).__name__


def is_unknown_model(exc: ConfigError) -> bool:
    """A ConfigError raised because the model string names no route (router or LiteLLM check)."""
    text = exc.message.lower()
    return text.startswith(("unknown model", "unknown route", "no model given")) or "names no model" in text


def failure_for(exc: LLMCallError) -> HTTPFailure:
    """The HTTP failure for an llm_call error (see the table in the module docstring)."""
    if isinstance(exc, UsageError):
        return HTTPFailure(400, _message(exc), code="invalid_request")
    if isinstance(exc, ConfigError):
        if is_unknown_model(exc):
            return HTTPFailure(404, _message(exc), param="model", code="model_not_found")
        return HTTPFailure(400, _message(exc), code="route_unavailable")
    if isinstance(exc, TaskNotFound):
        return HTTPFailure(404, _message(exc), code="task_not_found")
    if isinstance(exc, TaskCancelled):
        return HTTPFailure(409, _message(exc), code="task_cancelled")
    if isinstance(exc, TaskPending):
        return HTTPFailure(409, _message(exc), code="task_pending")
    if isinstance(exc, ModelNotFound):
        return HTTPFailure(404, _message(exc), param="model", code="model_not_found")
    if isinstance(exc, RateLimited):
        fail = _upstream(429, exc, type="rate_limit_error")
        if exc.retry_after is not None:
            fail.headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return fail
    if isinstance(exc, CircuitOpen):
        fail = _upstream(503, exc)
        if exc.retry_in is not None:
            fail.headers = {"Retry-After": str(max(1, round(exc.retry_in)))}
        return fail
    if isinstance(exc, ProviderTimeout):
        return _upstream(504, exc, type="timeout_error")
    if isinstance(exc, ProviderHTTPError) and exc.status == 400:
        # the upstream refused the request itself (context too long, bad parameter): the client's to fix
        return _upstream(400, exc, type="invalid_request_error")
    if isinstance(exc, QueueFull):
        return HTTPFailure(429, _message(exc), type="rate_limit_error", code="queue_full")
    if isinstance(exc, TaskStoreError):
        # its text names the store's file or host (and the driver's error): the operator's, in the log
        _log.warning("task store failure answered as 503: %s", exc)
        return HTTPFailure(503, "the task store failed; the server log says why", type="server_error",
                           code="task_store_error")
    if isinstance(exc, TaskError):
        return HTTPFailure(409, _message(exc), code="task_conflict")
    if isinstance(exc, BudgetExceeded):
        # the caller's own budget (deadline_s, budget_usd, budget_tokens) ran out: not an upstream fault
        return _upstream(400, exc, type="invalid_request_error")
    if isinstance(exc, HumanReviewNeeded):
        return _upstream(409, exc, type="invalid_request_error")
    # AuthError, ProviderError (the rest), ValidationExhausted, anything else
    return _upstream(502, exc)


def _nearest_field(model: Any, loc: Sequence[Any]) -> str:
    """``; did you mean 'max_tokens'?`` for a top-level field of ``model`` close to the unknown
    one (``max_tokns``), else nothing."""
    if model is None or len(loc) != 1 or not isinstance(getattr(model, "model_fields", None), dict):
        return ""
    import difflib

    names = [f.alias or name for name, f in model.model_fields.items()]
    match = difflib.get_close_matches(str(loc[0]), names, n=1, cutoff=0.8)
    return f"; did you mean {match[0]!r}?" if match else ""


def pydantic_failure(errors: Sequence[Any], prefix: tuple[str | int, ...] = (), model: Any = None) -> HTTPFailure:
    """A 400 naming the first invalid field of a pydantic validation error list; an unknown field
    near one of ``model``'s (the request body's model) names the field meant."""
    if not errors:
        return HTTPFailure(400, "invalid request body")
    err = errors[0]
    loc = [p for p in err.get("loc", ()) if p != "body"]
    hint = _nearest_field(model, loc) if err.get("type") == "extra_forbidden" and not prefix else ""
    loc = [*prefix, *loc]
    param = ".".join(str(p) for p in loc) or None
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        message = f"unrecognized request argument supplied: {param}{hint}"
    elif kind == "missing":
        message = f"missing required parameter: {param}"
    elif kind in ("json_invalid", "json_type"):
        message = f"the request body is not valid JSON: {err.get('msg', '')}"
        param = None
    else:
        message = f"invalid value for {param or 'the request body'}: {err.get('msg', 'invalid')}"
    more = len(errors) - 1
    if more > 0:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return HTTPFailure(400, message, param=param, code="invalid_value" if kind != "missing" else "missing_parameter")
