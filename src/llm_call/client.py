"""The public call: ``acall`` / ``astream`` and their sync twins ``call`` / ``stream``.

Layers, outermost first (each lives in its own module; this one only wires them):

1. mode (direct / background / auto) -> ``tasks`` (task manager)
2. validation loop: validators, feedback retries, escalation -> ``validation``
3. transient-failure retries, fallbacks, circuit breakers -> ``retry``
4. one provider call -> ``providers``

Example::

    import llm_call

    resp = await llm_call.acall("openai/gpt-4o-mini", "Name a colour.")
    print(resp.text, resp.usage.total_tokens)

    for chunk in llm_call.stream("local/smollm2", "Count to five."):
        print(chunk.text, end="")
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

from ._portal import portal
from ._progress import listening
from ._streams import closing
from .errors import BudgetExceeded, LLMCallError, ProviderTimeout, UsageError
from .types import Chunk, Message, Request, Response

if TYPE_CHECKING:
    from .config import Settings
    from .providers.router import Route
    from .tasks import TaskHandle

__all__ = ["CallOptions", "acall", "astream", "build_request", "call", "complete_once", "stream", "stream_once"]

_log = logging.getLogger("llm_call")
#: a provider timeout this close to the caller's deadline is the deadline running out
_DEADLINE_SLACK_S = 0.05
_default_announced = False

#: keyword options consumed by llm_call's own layers; everything else goes to the provider
CALL_OPTION_NAMES = frozenset(
    {
        "validate",
        "response_model",
        "max_attempts",
        "escalate",
        "fallbacks",
        "tools_after",
        "tools_mcp_config",
        "tools_mcp_servers",
        "human_after",
        "budget_usd",
        "budget_tokens",
        "deadline_s",
        "mode",
        "progress",
        "long_running",
        "retry",
        "idempotency_key",
        "priority",
    }
)


@dataclass(slots=True)
class CallOptions:
    """What the layers above the providers need, split from provider options."""

    validate: Any = None
    response_model: Any = None
    max_attempts: int | None = None
    escalate: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    tools_after: int | None = None
    tools_mcp_config: dict[str, Any] | None = None
    tools_mcp_servers: list[str] | None = None
    human_after: int | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    deadline_s: float | None = None
    mode: str = "direct"
    progress: Any = None
    long_running: bool = False
    retry: Any = None
    idempotency_key: str | None = None
    priority: int = 0

    @property
    def validating(self) -> bool:
        return bool(self.validate) or self.response_model is not None

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> CallOptions:
        """Take llm_call's own options out of ``options`` (the rest stays for the provider)."""
        mine = {k: options.pop(k) for k in list(options) if k in CALL_OPTION_NAMES}
        for key in ("escalate", "fallbacks"):
            value = mine.get(key)
            if value is None:
                mine.pop(key, None)
            elif isinstance(value, str):
                mine[key] = [value]
            else:
                mine[key] = list(value)
        if mine.get("mode") is None:
            mine.pop("mode", None)
        if mine.get("mode", "direct") not in ("direct", "background", "auto"):
            raise UsageError(f"mode must be 'direct', 'background' or 'auto', not {mine['mode']!r}")
        opts = cls(**mine)
        if mine:
            opts.check()
        return opts

    def check(self) -> None:
        """Reject option combinations that would be silently ignored or make no sense."""
        if not self.validating:
            needs = [
                name
                for name in ("escalate", "tools_after", "tools_mcp_config", "tools_mcp_servers", "human_after", "budget_usd", "budget_tokens")
                if getattr(self, name)
            ]
            if needs:
                raise UsageError(
                    f"{', '.join(needs)} only apply to validated calls: add validate=[...] or response_model=",
                    hint="for provider failures use fallbacks=[...]; deadline_s works without validation",
                )
        for name, value, low in (("budget_usd", self.budget_usd, 0), ("deadline_s", self.deadline_s, 0)):
            if value is not None and value <= low:
                raise UsageError(f"{name} must be > 0, not {value}")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise UsageError(f"budget_tokens must be >= 1, not {self.budget_tokens}")
        if self.tools_mcp_servers is not None and (
            not isinstance(self.tools_mcp_servers, list | tuple) or not all(isinstance(n, str) and n for n in self.tools_mcp_servers)
        ):
            raise UsageError("tools_mcp_servers must be a list of MCP server names declared under [claude.mcp_servers]")
        for model in (*self.escalate, *self.fallbacks):
            if not isinstance(model, str) or not model.strip():
                raise UsageError(f"escalate/fallbacks entries must be model names, not {model!r}")


_config_module: Any = None


def _settings() -> Settings:
    """The process-wide settings (``config`` is imported on first use: it loads pydantic)."""
    global _config_module
    module = _config_module
    if module is None:
        from . import config as module

        _config_module = module
    settings: Settings = module.get_settings()
    return settings


def default_model(settings: Settings) -> str:
    """The configured default model, or the embedded local model (announced once)."""
    global _default_announced
    if settings.default_model:
        return settings.default_model
    from .config import DEFAULT_MODEL

    if not _default_announced:
        _default_announced = True
        _log.info("no model given and no default_model configured: using %s", DEFAULT_MODEL)
    return DEFAULT_MODEL


def build_messages(
    prompt: str | None, messages: Sequence[Message] | None, system: str | None
) -> list[Message]:
    """The conversation to send. Exactly one of ``prompt`` and ``messages``."""
    if prompt is not None and messages is not None:
        raise UsageError("give either prompt or messages, not both")
    if prompt is None and messages is None:
        raise UsageError("no prompt and no messages: give prompt='...' or messages=[...]")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise UsageError(f"prompt must be a string, not {type(prompt).__name__}")
        if not prompt.strip():
            raise UsageError("the prompt is empty")
        out: list[Message] = [{"role": "user", "content": prompt}]
    else:
        assert messages is not None
        if isinstance(messages, str | bytes) or not messages:
            raise UsageError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                raise UsageError(f"messages[{i}] must be a dict with 'role' and 'content'")
            if m["role"] not in ("system", "user", "assistant", "tool", "developer"):
                raise UsageError(
                    f"messages[{i}].role {m['role']!r} is not one of system, user, assistant, tool, developer"
                )
            out.append(m)
    if system is not None:
        out = [{"role": "system", "content": system}, *(m for m in out if m["role"] != "system")]
    return out


def build_request(
    model: str | None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> tuple[Request, CallOptions]:
    """Check the arguments of a call and split them into a Request and the layer options."""
    msgs = build_messages(prompt, messages, system)
    if "stream" in options:
        raise UsageError("stream= is not an option of a call", hint="use llm_call.astream() or llm_call.stream() to stream")
    settings = _settings()
    name = model or default_model(settings)
    if name in settings.aliases:
        # an alias may bundle llm_call's own options (validate=, fallbacks= ...): the caller's win
        from .providers.router import resolve

        for key, value in resolve(name, settings).alias_options().items():
            if key in CALL_OPTION_NAMES and key not in options:
                options[key] = value
    opts = CallOptions.pop_from(options)
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"max_tokens must be >= 1, not {max_tokens}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"timeout must be > 0 seconds, not {timeout}")
    if opts.max_attempts is not None and opts.max_attempts < 1:
        raise UsageError(f"max_attempts must be >= 1, not {opts.max_attempts}")
    request = Request(
        model=name, messages=msgs, temperature=temperature, max_tokens=max_tokens, timeout=timeout, options=options
    )
    return request, opts


_REQUEST_FIELDS = frozenset({"temperature", "max_tokens", "timeout"})


def _provider_request(request: Request, settings: Settings) -> tuple[Route, Request]:
    """Resolve the route and apply the alias's system prompt and options."""
    from .providers.router import resolve

    route = resolve(request.model, settings)
    if not route.aliases:
        if route.provider_model == request.model:
            return route, request
        return route, Request(
            model=route.provider_model,
            messages=request.messages,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            timeout=request.timeout,
            options=request.options,
        )
    messages = request.messages
    if route.system and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": route.system}, *messages]
    options = request.options
    temperature, max_tokens, timeout = request.temperature, request.max_tokens, request.timeout
    alias_opts = {k: v for k, v in route.alias_options().items() if k not in CALL_OPTION_NAMES}
    if alias_opts:
        # an alias's options are defaults: the caller's arguments win
        if temperature is None:
            temperature = alias_opts.get("temperature")
        if max_tokens is None:
            max_tokens = alias_opts.get("max_tokens")
        if timeout is None:
            timeout = alias_opts.get("timeout")
        options = {
            **{k: v for k, v in alias_opts.items() if k not in _REQUEST_FIELDS},
            **options,
        }
    return route, Request(
        model=route.provider_model,
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        options=options,
    )


async def complete_once(request: Request) -> Response:
    """One provider call for ``request.model`` (aliases applied), no retries, no validation.

    The ``attempt`` progress event is emitted by the retry layer (it knows the attempt number).
    """
    from .providers.router import get_provider

    settings = _settings()
    route, preq = _provider_request(request, settings)
    provider = get_provider(route, settings)
    started = time.perf_counter()
    response = await provider.complete(preq)
    response.latency_s = time.perf_counter() - started
    return response


def stream_once(request: Request) -> AsyncIterator[Chunk]:
    """One provider stream for ``request.model`` (aliases applied), no retries, no validation.

    Returns the provider's own iterator (one generator layer less per chunk); routing and
    configuration errors raise here, before iteration.
    """
    from .providers.router import get_provider

    settings = _settings()
    route, preq = _provider_request(request, settings)
    provider = get_provider(route, settings)
    return provider.stream(preq)


async def _execute(request: Request, opts: CallOptions) -> Response:
    """Run the layers below the task manager: validation loop, then transient retries."""
    if opts.validating:
        from .validation.loop import run_validated

        return await run_validated(request, opts)
    from .retry import complete_with_retries

    if opts.deadline_s is None:
        return await complete_with_retries(request, opts)
    from .retry import clock_of

    clock = clock_of(opts.retry)
    deadline_at = clock() + opts.deadline_s
    if request.timeout is None or request.timeout > opts.deadline_s:
        request = request.replace(timeout=opts.deadline_s)
    try:
        return await complete_with_retries(request, opts, deadline_at=deadline_at)
    except ProviderTimeout as exc:
        raise _deadline_error(exc, opts, clock(), deadline_at) from exc


def _deadline_error(exc: ProviderTimeout, opts: CallOptions, now: float, deadline_at: float) -> LLMCallError:
    """The caller's own ``deadline_s`` running out is a budget stop, not a provider failure."""
    if now + _DEADLINE_SLACK_S < deadline_at:
        return exc
    return BudgetExceeded(
        f"deadline_s={opts.deadline_s} passed before an answer ({exc.message})",
        hint="raise deadline_s, or run the call as a background task",
        attempts=[],
    )


async def _execute_stream(request: Request, opts: CallOptions) -> AsyncIterator[Chunk]:
    if opts.validating:
        from .validation.loop import stream_validated

        async with closing(stream_validated(request, opts)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    from .retry import stream_with_retries

    if opts.deadline_s is None:
        async with closing(stream_with_retries(request, opts)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    from .retry import clock_of

    clock = clock_of(opts.retry)
    deadline_at = clock() + opts.deadline_s
    if request.timeout is None or request.timeout > opts.deadline_s:
        request = request.replace(timeout=opts.deadline_s)
    try:
        async with closing(stream_with_retries(request, opts, deadline_at=deadline_at)) as chunks:
            async for chunk in chunks:
                yield chunk
    except ProviderTimeout as exc:
        raise _deadline_error(exc, opts, clock(), deadline_at) from exc


@overload
async def acall(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    mode: Literal["direct"] | None = None,
    **options: Any,
) -> Response: ...


@overload
async def acall(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    mode: Literal["background"],
    **options: Any,
) -> TaskHandle: ...


@overload
async def acall(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    mode: Literal["auto"],
    **options: Any,
) -> Response | TaskHandle: ...


async def acall(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    mode: str | None = None,
    **options: Any,
) -> Response | TaskHandle:
    """Ask ``model`` and return its :class:`Response`; failures raise typed errors.

    ``options`` are llm_call's own (``validate``, ``max_attempts``, ``escalate``, ``fallbacks``,
    ``progress`` ...; see the docs) or go to the provider (``stop``, ``seed``,
    ``mcp_config``, ``allowed_tools`` ...).

    ``mode``: ``"direct"`` (default) runs the call here; ``"background"`` stores it as a task and
    returns a :class:`~llm_call.tasks.TaskHandle` (``await`` it for the Response); ``"auto"``
    goes to the background for long-running calls (``max/*``, agent validators, MCP,
    ``long_running=True``) and otherwise runs directly, handing the running call over as a task
    with :class:`~llm_call.errors.TaskPending` if it outlives ``timeout`` (see docs/tasks.md).

    Example::

        resp = await llm_call.acall("openai/gpt-4o-mini", "2+2?", validate=["regex:4"])
        handle = await llm_call.acall("max/sonnet", "Write a story.", mode="background")
    """
    request, opts = build_request(
        model,
        prompt,
        messages=messages,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        mode=mode,
        **options,
    )
    if opts.mode != "direct":
        from .tasks.auto import run_with_mode

        return await run_with_mode(request, opts)
    with listening(opts.progress):
        return await _execute(request, opts)


async def astream(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> AsyncIterator[Chunk]:
    """Stream the answer as :class:`Chunk` deltas; the last chunk has ``finish_reason``.

    A stream cut short raises :class:`~llm_call.errors.StreamInterrupted`; it never just stops.

    Example::

        async for chunk in llm_call.astream("openai/gpt-4o-mini", "Tell a joke."):
            print(chunk.text, end="", flush=True)
    """
    request, opts = build_request(
        model,
        prompt,
        messages=messages,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        **options,
    )
    if opts.mode != "direct":
        raise UsageError("astream() runs directly; use mode='direct' or submit a task and follow its events")
    with listening(opts.progress):
        async with closing(_execute_stream(request, opts)) as chunks:
            async for chunk in chunks:
                yield chunk


def call(model: str | None = None, prompt: str | None = None, **kwargs: Any) -> Response:
    """Synchronous :func:`acall` for scripts and threads (not for async code: use ``acall``)."""
    response: Response = portal.run(acall(model, prompt, **kwargs), "call")  # a TaskHandle with mode="background"
    return response


def stream(model: str | None = None, prompt: str | None = None, **kwargs: Any) -> Iterator[Chunk]:
    """Synchronous :func:`astream`: an iterator of chunks."""
    portal.check_not_in_loop("stream")
    return portal.iterate(astream(model, prompt, **kwargs), "stream")
