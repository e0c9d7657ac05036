"""llm_call: one async call to every LLM, with validation, retries, background tasks and a server.

Example::

    import llm_call

    resp = llm_call.call("openai/gpt-4o-mini", "What is the capital of France?")
    print(resp.text)

    resp = await llm_call.acall("max/sonnet", "Write a haiku.", validate=["length:max=200"])

Heavy modules (aiohttp, pydantic, provider SDKs) load on first use, so ``import llm_call`` is fast.
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
    RateLimited,
    StreamInterrupted,
    TaskCancelled,
    TaskError,
    TaskInterrupted,
    TaskNotFound,
    TaskPending,
    UsageError,
    ValidationExhausted,
    ValidationFailed,
)
from .types import (
    Attempt,
    Chunk,
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
    from .client import acall, astream, call, stream
    from .legacy import acall_config, call_config

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "AuthError",
    "BudgetExceeded",
    "Chunk",
    "CircuitOpen",
    "ConfigError",
    "HumanReviewNeeded",
    "LLMCallError",
    "MalformedResponse",
    "Message",
    "ModelNotFound",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderFailed",
    "ProviderHTTPError",
    "ProviderTimeout",
    "RateLimited",
    "Request",
    "Response",
    "StreamInterrupted",
    "TaskCancelled",
    "TaskError",
    "TaskEvent",
    "TaskInterrupted",
    "TaskNotFound",
    "TaskPending",
    "TaskRecord",
    "TaskStatus",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "UsageError",
    "ValidationExhausted",
    "ValidationFailed",
    "__version__",
    "acall",
    "acall_config",
    "assemble_tool_calls",
    "astream",
    "call",
    "call_config",
    "health",
    "stream",
]

_LAZY = {
    "acall": ("client", "acall"),
    "astream": ("client", "astream"),
    "call": ("client", "call"),
    "stream": ("client", "stream"),
    "health": ("_retry", "health"),
    "acall_config": ("legacy", "acall_config"),
    "call_config": ("legacy", "call_config"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'llm_call' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{target[0]}", __name__), target[1])
    globals()[name] = value
    return value
