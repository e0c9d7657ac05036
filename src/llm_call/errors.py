"""The one exception tree of llm_call.

::

    LLMCallError                      root of everything llm_call raises
    ├── ConfigError                   bad or missing configuration (never retried)
    ├── UsageError                    the caller used the API wrongly (never retried)
    ├── ProviderError(provider, model)    a provider failed to give an answer
    │   ├── AuthError                 401/403, missing key, "Not logged in" (never retried)
    │   ├── ModelNotFound             404 / unknown model at the provider (never retried)
    │   ├── RateLimited(retry_after)  429 (transient)
    │   │   └── QuotaExhausted(window, resets_at)  a subscription usage window is used up
    │   │                             (max/*): not retried in the call; tasks wait, fall back or fail
    │   ├── ProviderHTTPError(status, body)   other HTTP status; 5xx/408/529 transient
    │   ├── ProviderTimeout           connect/read/total/idle timeout (transient)
    │   ├── ProviderConnectionError   refused, reset, DNS (transient)
    │   ├── MalformedResponse         the provider answered something that is not a reply
    │   ├── StreamInterrupted         a stream ended before its end marker
    │   ├── CircuitOpen               the route's circuit breaker is open (fail fast)
    │   └── ProviderFailed            a provider-specific failure (e.g. Claude CLI error result)
    ├── ValidationFailed(feedback)    raised by a validator to reject an answer
    ├── ValidationExhausted(attempts) every attempt failed validation
    ├── BudgetExceeded(attempts)      cost/token/deadline budget ran out before a valid answer
    ├── HumanReviewNeeded(history, errors)  validation wants a human
    └── TaskError
        ├── TaskNotFound(task_id)
        ├── TaskCancelled(task_id)
        ├── TaskPending(task_id)      a direct call outlived its timeout; it goes on as a task
        ├── TaskInterrupted(task_id)  the process running it died and it may not be re-run
        ├── TaskStoreError            the task store failed (disk full, locked, unreadable)
        └── QueueFull(route, limit)   a route's queue holds ``tasks.queue_limits`` tasks already

Every error serialises with :func:`error_to_dict` / :func:`error_from_dict` (tasks persist them)
and pickles (it crosses process boundaries).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
    "HumanReviewNeeded",
    "LLMCallError",
    "MalformedResponse",
    "ModelNotFound",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderFailed",
    "ProviderHTTPError",
    "ProviderTimeout",
    "QueueFull",
    "QuotaExhausted",
    "RateLimited",
    "StreamInterrupted",
    "TaskCancelled",
    "TaskError",
    "TaskInterrupted",
    "TaskNotFound",
    "TaskPending",
    "TaskStoreError",
    "UsageError",
    "ValidationExhausted",
    "ValidationFailed",
    "error_from_dict",
    "error_to_dict",
    "is_transient",
]


class LLMCallError(Exception):
    """Root of the tree. ``hint`` says what the user can do about it."""

    #: names of extra constructor keyword arguments, kept for pickling/serialising
    _fields: tuple[str, ...] = ()

    def __init__(self, message: str = "", *, hint: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        for name in self._fields:
            setattr(self, name, fields.pop(name, None))
        if fields:
            raise TypeError(f"{type(self).__name__} got unexpected fields {sorted(fields)}")

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} (hint: {self.hint})"
        return text

    def field_values(self) -> dict[str, Any]:
        return {name: getattr(self, name, None) for name in self._fields}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.hint, self.field_values()))


def _rebuild(
    cls: type[LLMCallError], message: str, hint: str | None, fields: dict[str, Any]
) -> LLMCallError:
    return cls(message, hint=hint, **fields)


class ConfigError(LLMCallError):
    """Configuration is missing or invalid. Names the file and key path."""


class UsageError(LLMCallError):
    """The API was called wrongly (bad arguments, bad validation spec, ...)."""


class ProviderError(LLMCallError):
    """A provider did not give an answer."""

    _fields: tuple[str, ...] = ("provider", "model")
    provider: str | None
    model: str | None


class AuthError(ProviderError):
    """Credentials missing or refused."""


class ModelNotFound(ProviderError):
    """The provider does not know this model."""


class RateLimited(ProviderError):
    """HTTP 429; ``retry_after`` is seconds to wait when the provider said so."""

    _fields: tuple[str, ...] = ("provider", "model", "retry_after")
    retry_after: float | None


class QuotaExhausted(RateLimited):
    """A subscription usage window (``window``: ``five_hour``, ``seven_day``, ...) is used up
    until ``resets_at`` (epoch seconds); ``retry_after`` is the seconds until then. The retry
    layer does not wait hours inside a call: it falls back (``fallbacks=``) or raises; background
    tasks follow ``claude.on_quota_exhausted`` (docs/claude.md)."""

    _fields: tuple[str, ...] = ("provider", "model", "retry_after", "window", "resets_at")
    window: str | None
    resets_at: float | None


class ProviderHTTPError(ProviderError):
    """Any other HTTP error status."""

    _fields: tuple[str, ...] = ("provider", "model", "status", "body")
    status: int | None
    body: str | None


class ProviderTimeout(ProviderError):
    """A connect, read, idle or total timeout expired."""


class ProviderConnectionError(ProviderError):
    """Connection refused, reset or otherwise broken."""


class MalformedResponse(ProviderError):
    """The provider answered with something that is not a valid reply."""


class StreamInterrupted(ProviderError):
    """A stream ended without its end marker; the partial text is in ``partial``."""

    _fields: tuple[str, ...] = ("provider", "model", "partial")
    partial: str | None


class CircuitOpen(ProviderError):
    """The route's circuit breaker is open; the call was not attempted."""

    _fields: tuple[str, ...] = ("provider", "model", "retry_in")
    retry_in: float | None


class ProviderFailed(ProviderError):
    """A provider-specific failure (e.g. the Claude CLI reported an error result)."""

    _fields: tuple[str, ...] = ("provider", "model", "subtype")
    subtype: str | None


class ValidationFailed(LLMCallError):
    """Raised by a validator to reject an answer; ``feedback`` goes back to the model."""

    _fields: tuple[str, ...] = ("feedback", "details")
    feedback: str | None
    details: dict[str, Any] | None


class ValidationExhausted(LLMCallError):
    """Every attempt failed validation. ``attempts`` is the attempt record (list of dicts)."""

    _fields: tuple[str, ...] = ("attempts",)
    attempts: list[Any] | None


class BudgetExceeded(LLMCallError):
    """A cost, token or time budget ran out before a valid answer."""

    _fields: tuple[str, ...] = ("attempts",)
    attempts: list[Any] | None


class HumanReviewNeeded(LLMCallError):
    """Validation escalated to a human; ``history`` is the conversation, ``errors`` the failures."""

    _fields: tuple[str, ...] = ("history", "errors", "attempts")
    history: list[dict[str, Any]] | None
    errors: list[str] | None
    attempts: list[Any] | None


class TaskError(LLMCallError):
    """Base of task failures."""

    _fields: tuple[str, ...] = ("task_id",)
    task_id: str | None


class TaskNotFound(TaskError):
    """No task with this id."""


class TaskCancelled(TaskError):
    """The task was cancelled."""


class TaskPending(TaskError):
    """A direct call outlived its timeout; the same work goes on as task ``task_id``."""


class TaskInterrupted(TaskError):
    """The process running the task died and the task may not be re-run."""


class QueueFull(TaskError):
    """A route's queue is full (``tasks.queue_limits``); nothing was queued. Try again later."""

    _fields: tuple[str, ...] = ("task_id", "route", "limit")
    route: str | None
    limit: int | None


class TaskStoreError(TaskError):
    """The task store failed to read or write (disk full, database locked, file unreadable)."""


_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: 408/429/5xx/529, timeouts, connection errors."""
    if isinstance(exc, RateLimited | ProviderTimeout | ProviderConnectionError | StreamInterrupted):
        return True
    if isinstance(exc, ProviderHTTPError):
        return exc.status in _TRANSIENT_STATUS
    return False


def _all_classes() -> dict[str, type[LLMCallError]]:
    found: dict[str, type[LLMCallError]] = {}
    stack: list[type[LLMCallError]] = [LLMCallError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _jsonable(to_dict())
    return repr(value)


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """Serialise any exception to a JSON-able dict (type, message, hint, fields)."""
    if isinstance(exc, LLMCallError):
        return {
            "type": type(exc).__name__,
            "message": exc.message,
            "hint": exc.hint,
            "fields": _jsonable(exc.field_values()),
        }
    return {"type": type(exc).__name__, "message": str(exc), "hint": None, "fields": {}}


def error_from_dict(data: dict[str, Any]) -> LLMCallError:
    """Rebuild an error serialised by :func:`error_to_dict`.

    Non-llm_call exceptions come back as :class:`ProviderFailed` with the original type name in
    ``subtype``, so a caller always gets a typed error.
    """
    cls = _all_classes().get(str(data.get("type")))
    fields = dict(data.get("fields") or {})
    if cls is None:
        return ProviderFailed(
            f"{data.get('type')}: {data.get('message')}",
            hint=data.get("hint"),
            subtype=str(data.get("type")),
        )
    allowed = {k: v for k, v in fields.items() if k in cls._fields}
    return cls(str(data.get("message", "")), hint=data.get("hint"), **allowed)
