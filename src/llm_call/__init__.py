"""llm_call: one async call to every LLM, with validation, retries, background tasks and a server.

Example::

    import llm_call

    resp = llm_call.call("openai/gpt-4o-mini", "What is the capital of France?")
    print(resp.text)

    resp = await llm_call.acall("max/sonnet", "Write a haiku.", validate=["length:max=200"])

Heavy modules (aiohttp, pydantic, provider SDKs) load on first use, so ``import llm_call`` is fast.

This is the public API in one place: the calls, the types and errors a caller handles, the
task handle and manager, and the retry policy with its strategies (loaded lazily, on first
access). Backend authors implement :class:`llm_call.tasks.store.TaskStore`; validator authors
:class:`llm_call.validation.Validator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AuthError,
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    HumanReviewNeeded,
    LLMCallError,
    MalformedResponse,
    ModelNotFound,
    ProviderConnectionError,
    ProviderError,
    ProviderFailed,
    ProviderHTTPError,
    ProviderTimeout,
    QueueFull,
    QuotaExhausted,
    RateLimited,
    StreamInterrupted,
    TaskCancelled,
    TaskError,
    TaskInterrupted,
    TaskNotFound,
    TaskPending,
    TaskStoreError,
    UsageError,
    ValidationExhausted,
    ValidationFailed,
)
from .types import (
    Attempt,
    Chunk,
    EmbeddingRequest,
    Embeddings,
    Message,
    Request,
    Response,
    TaskEvent,
    TaskRecord,
    TaskStatus,
    ToolCall,
    ToolCallDelta,
    Usage,
    assemble_tool_calls,
)

if TYPE_CHECKING:
    from ._retry import health
    from .client import acall, aembed, astream, call, stream
    from .legacy import acall_config, call_config
    from .retry import (
        ManualClock,
        RetryPolicy,
        retry_if_exception_type,
        retry_if_transient,
        stop_after_attempt,
        stop_after_delay,
        stop_never,
        wait_exponential,
        wait_fixed,
        wait_full_jitter,
        wait_retry_after,
    )
    from .tasks import TaskHandle, TaskManager

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "AuthError",
    "BudgetExceeded",
    "Chunk",
    "CircuitOpen",
    "ConfigError",
    "EmbeddingRequest",
    "Embeddings",
    "HumanReviewNeeded",
    "LLMCallError",
    "MalformedResponse",
    "ManualClock",
    "Message",
    "ModelNotFound",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderFailed",
    "ProviderHTTPError",
    "ProviderTimeout",
    "QueueFull",
    "QuotaExhausted",
    "RateLimited",
    "Request",
    "Response",
    "RetryPolicy",
    "StreamInterrupted",
    "TaskCancelled",
    "TaskError",
    "TaskEvent",
    "TaskHandle",
    "TaskInterrupted",
    "TaskManager",
    "TaskNotFound",
    "TaskPending",
    "TaskRecord",
    "TaskStatus",
    "TaskStoreError",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "UsageError",
    "ValidationExhausted",
    "ValidationFailed",
    "__version__",
    "acall",
    "acall_config",
    "aembed",
    "assemble_tool_calls",
    "astream",
    "call",
    "call_config",
    "health",
    "retry_if_exception_type",
    "retry_if_transient",
    "stop_after_attempt",
    "stop_after_delay",
    "stop_never",
    "stream",
    "wait_exponential",
    "wait_fixed",
    "wait_full_jitter",
    "wait_retry_after",
]

_LAZY = {
    "acall": ("client", "acall"),
    "aembed": ("client", "aembed"),
    "astream": ("client", "astream"),
    "call": ("client", "call"),
    "stream": ("client", "stream"),
    "health": ("_retry", "health"),
    "acall_config": ("legacy", "acall_config"),
    "call_config": ("legacy", "call_config"),
    "ManualClock": ("retry", "ManualClock"),
    "RetryPolicy": ("retry", "RetryPolicy"),
    "retry_if_exception_type": ("retry", "retry_if_exception_type"),
    "retry_if_transient": ("retry", "retry_if_transient"),
    "stop_after_attempt": ("retry", "stop_after_attempt"),
    "stop_after_delay": ("retry", "stop_after_delay"),
    "stop_never": ("retry", "stop_never"),
    "wait_exponential": ("retry", "wait_exponential"),
    "wait_fixed": ("retry", "wait_fixed"),
    "wait_full_jitter": ("retry", "wait_full_jitter"),
    "wait_retry_after": ("retry", "wait_retry_after"),
    "TaskHandle": ("tasks._handle", "TaskHandle"),
    "TaskManager": ("tasks.manager", "TaskManager"),
}


#: public subpackages reachable as ``llm_call.tasks.status(...)`` after a bare ``import llm_call``
#: (the docs write them so), imported on first use like the names above
_SUBMODULES = frozenset({"batch", "catalog", "config", "errors", "legacy", "retry", "tasks", "testing", "types", "validation"})


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # the import binds it in globals()
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'llm_call' has no attribute {name!r}")

    value = getattr(importlib.import_module(f".{target[0]}", __name__), target[1])
    globals()[name] = value
    return value
