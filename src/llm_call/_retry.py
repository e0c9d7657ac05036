"""Transient-failure layer: retries with backoff, fallbacks, per-route circuit breakers.

What is retried: HTTP 408, 429, 500, 502, 503, 504, 529, connection errors, timeouts and
interrupted streams (:func:`llm_call.errors.is_transient`). Never 400/401/403/404/422, usage or
config errors, nor validation failures (those belong to the validation loop above this layer).
A stream that fails before its first chunk is called again; one cut after it is rescued,
announced by a ``retry`` chunk: ``stream_rescue="restart"`` (the default) streams the answer
again from its start (the consumer drops what it had), ``"continue"`` asks for the rest of the
delivered text and never repeats it, ``"off"`` raises.

The policy (:mod:`llm_call.retry`, the public half) is tenacity-style, small composable
strategies and a decision step with no I/O. ``retry=`` takes a :class:`~llm_call.retry.RetryPolicy` (fields left ``None`` come from the settings for the
route), ``False`` (no retries, breakers still apply) or an int (max retries). Without it the
policy comes from ``settings.retry`` and ``settings.retry.routes[PATTERN]``: a pattern is the
breaker key (``openai``, ``endpoint:vllm``, ``max``, ``local``, ``litellm:anthropic``) or an
fnmatch glob on the model (``openai/*``); the first matching entry wins. Default wait: the
server's ``Retry-After`` (seconds or HTTP date, capped at ``max_retry_after``), else exponential
backoff with full jitter, ``uniform(0, min(max_delay, base_delay * 2**(n-1)))``.

Fallbacks (``fallbacks=[models]``): when a model's transient retries are exhausted, or its
breaker is open, the next model is tried, with a ``fallback`` progress event and an attempt
record. Other failures (auth, bad request) are raised at once: another model would not fix them.
A :class:`~llm_call.errors.QuotaExhausted` (a ``max/*`` subscription window used up) is never
retried in the call (the reset is minutes or hours away) and does not count for the breaker; it
goes to the next fallback, or to the caller.

Circuit breakers, one per route key, shared by every call in the process: ``breaker_threshold``
consecutive transient failures within ``breaker_window`` seconds open it; while open, calls fail
fast with :class:`~llm_call.errors.CircuitOpen`; after ``breaker_cooldown`` one probe call goes
through (half-open) and its outcome closes or re-opens it. :func:`health` reports the states.

Every provider call that fails on the way is recorded in ``Response.attempts`` as
``Attempt(kind="provider_error")``; the answering call is the last record (``kind`` ``answer``
or ``judge``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._progress import emit
from ._settings import current_settings
from ._streams import closing
from .errors import (
    BudgetExceeded,
    CircuitOpen,
    ProviderError,
    ProviderTimeout,
    QuotaExhausted,
    StreamInterrupted,
    error_to_dict,
    is_transient,
)
from .providers import router
from .retry import RetryPolicy, RetryState, resolve_policy
from .types import Attempt, Chunk, Request, Response

if TYPE_CHECKING:
    from ._request import CallOptions
    from .config import RetryConfig, Settings
    from .providers.router import Route

__all__ = [
    "CircuitBreaker",
    "Tries",
    "breaker_key",
    "complete_with_retries",
    "deadline_stop",
    "health",
    "reset_breakers",
    "stream_with_retries",
]

# -- circuit breakers ---------------------------------------------------------------------


class CircuitBreaker:
    """One route's breaker. A state machine; the caller passes the time (no clock inside)."""

    def __init__(self, key: str, threshold: int, window: float, cooldown: float) -> None:
        self.key = key
        self.threshold = threshold
        self.window = window
        self.cooldown = cooldown
        self.state = "closed"
        self.opened_at: float | None = None
        self.times_opened = 0
        self._failures: deque[float] = deque()
        self._probing = False
        self._lock = threading.Lock()

    def before_call(self, now: float, model: str | None = None) -> None:
        """Allow the call, or raise CircuitOpen. After the cool-down one probe goes through."""
        with self._lock:
            if self.state == "closed":
                return
            assert self.opened_at is not None
            retry_in = self.opened_at + self.cooldown - now
            if self.state == "open" and retry_in <= 0:
                self.state = "half_open"
            if self.state == "half_open" and not self._probing:
                self._probing = True
                return
        raise CircuitOpen(
            f"circuit breaker for route {self.key} is {self.state.replace('_', '-')} after "
            f"{self.threshold} consecutive transient failures; failing fast",
            hint=f"the route is retried after {self.cooldown:g}s; llm_call.health() shows breaker states",
            provider=self.key,
            model=model,
            retry_in=max(0.0, retry_in),
        )

    def record_success(self, now: float) -> None:
        with self._lock:
            self._failures.clear()
            self._probing = False
            self.state = "closed"
            self.opened_at = None

    def record_failure(self, now: float) -> None:
        with self._lock:
            if self.state == "half_open":
                self._open(now)
                return
            failures = self._failures
            failures.append(now)
            while failures and failures[0] < now - self.window:
                failures.popleft()
            if len(failures) >= self.threshold and self.state == "closed":
                self._open(now)

    def record_abandoned(self) -> None:
        """The call ended without an outcome (cancelled): let another probe through."""
        with self._lock:
            self._probing = False

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.times_opened += 1
        self._probing = False
        self._failures.clear()

    def snapshot(self, now: float) -> dict[str, Any]:
        with self._lock:
            retry_in = None
            if self.state != "closed" and self.opened_at is not None:
                retry_in = max(0.0, self.opened_at + self.cooldown - now)
            return {
                "state": self.state,
                "consecutive_failures": len(self._failures),
                "times_opened": self.times_opened,
                "retry_in": retry_in,
                "threshold": self.threshold,
            }


_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_key(route: Route) -> str:
    """The breaker (and retry settings) key of a route: ``openai``, ``endpoint:NAME``, ``max``,
    ``local``, ``litellm:<prefix>``."""
    if route.kind == "litellm":
        return f"litellm:{route.model.partition('/')[0]}"
    return route.key


def breaker_for(key: str, cfg: RetryConfig) -> CircuitBreaker:
    breaker = _breakers.get(key)
    if breaker is None:
        with _breakers_lock:
            breaker = _breakers.get(key)
            if breaker is None:
                breaker = CircuitBreaker(key, cfg.breaker_threshold, cfg.breaker_window, cfg.breaker_cooldown)
                _breakers[key] = breaker
    if breaker.threshold != cfg.breaker_threshold:
        breaker.threshold = cfg.breaker_threshold
    breaker.window, breaker.cooldown = cfg.breaker_window, cfg.breaker_cooldown
    return breaker


def health(now: float | None = None) -> dict[str, Any]:
    """Breaker states per route, for ``/metrics`` and health checks.

    ``{"ok": bool, "breakers": {"openai": {"state": "closed", "consecutive_failures": 0,
    "times_opened": 0, "retry_in": None, "threshold": 5}, ...}}``; ``ok`` is False while any
    breaker is open or half-open.
    """
    t = time.monotonic() if now is None else now
    with _breakers_lock:
        items = list(_breakers.items())
    states = {key: b.snapshot(t) for key, b in items}
    return {"ok": all(s["state"] == "closed" for s in states.values()), "breakers": states}


def reset_breakers() -> None:
    """Forget every breaker (tests, or after fixing a route's configuration)."""
    with _breakers_lock:
        _breakers.clear()
        _route_cache.clear()


# -- the layer ------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__} {status}" if status else type(exc).__name__


#: model -> (settings it was resolved with, policy, breaker), for calls without ``retry=``
_route_cache: dict[str, tuple[Settings, RetryPolicy, CircuitBreaker | None]] = {}


class _RouteRetry:
    """One model's retry context: resolved policy and breaker."""

    __slots__ = ("breaker", "model", "policy")

    def __init__(self, model: str, opts: CallOptions, settings: Settings) -> None:
        self.model = model
        if opts.retry is None:
            cached = _route_cache.get(model)
            if cached is not None and cached[0] is settings:
                self.policy, self.breaker = cached[1], cached[2]
                return
        route = router.resolve(model, settings)
        key = breaker_key(route)
        self.policy = resolve_policy(opts.retry, settings.retry, key, route.model)
        self.breaker = breaker_for(key, settings.retry) if self.policy.breakers else None
        if opts.retry is None:
            if len(_route_cache) > 4096:
                _route_cache.clear()
            _route_cache[model] = (settings, self.policy, self.breaker)

    def before(self) -> None:
        if self.breaker is not None:
            self.breaker.before_call(self.policy.now(), self.model)

    def failed(self, exc: BaseException, *, caller_limited: bool = False) -> None:
        """Tell the breaker how a call ended. ``caller_limited``: the caller set the call's
        time limit, so a timeout measures the caller's patience, not the route's health, and
        does not count (one client with tiny timeouts must not open the breaker for all)."""
        if self.breaker is None or isinstance(exc, CircuitOpen | QuotaExhausted):
            # CircuitOpen came from the breaker itself (no call was made); a used-up
            # subscription window says nothing about the route's health
            return
        if caller_limited and isinstance(exc, ProviderTimeout):
            self.breaker.record_abandoned()
        elif is_transient(exc):
            self.breaker.record_failure(self.policy.now())
        elif isinstance(exc, ProviderError):
            self.breaker.record_success(self.policy.now())  # the route answered
        else:
            self.breaker.record_abandoned()

    def succeeded(self) -> None:
        if self.breaker is not None:
            self.breaker.record_success(self.policy.now())

    def next_delay(self, calls: int, started: float, exc: BaseException, deadline_at: float | None) -> float | None:
        now = self.policy.now()
        delay = self.policy.next_delay(RetryState(calls, started, now, exc))
        if delay is not None and deadline_at is not None and now + delay >= deadline_at:
            return None
        return delay


class _Routed(Protocol):
    """What the walk needs of a request: a chat :class:`Request` or an ``EmbeddingRequest``."""

    model: str
    timeout: float | None

    def replace(self, **changes: Any) -> Any: ...


R = TypeVar("R", bound=_Routed)


class Tries(Generic[R]):
    """The walk shared by the answer, the stream and the embeddings path: the model, then each
    fallback, each with its transient retries. The caller makes the call between :meth:`begin`
    and :meth:`succeeded` / :meth:`failed`."""

    __slots__ = ("attempt", "call_started", "calls", "deadline_at", "index", "models", "opts",
                 "request", "retries", "settings", "started")

    def __init__(self, request: R, opts: CallOptions, attempt: int, deadline_at: float | None) -> None:
        self.request = request
        self.opts = opts
        self.attempt = attempt
        self.deadline_at = deadline_at
        self.settings = current_settings()
        self.models = [request.model, *opts.fallbacks] if opts.fallbacks else [request.model]
        self.index = -1
        self._next_model()

    def _next_model(self) -> None:
        self.index += 1
        self.retries = _RouteRetry(self.model, self.opts, self.settings)
        if self.index:
            self.request = self.request.replace(model=self.model)
        self.started = self.retries.policy.now()
        self.calls = 0

    @property
    def model(self) -> str:
        return self.models[self.index]

    def begin(self) -> R:
        """Before a call: count it, and fail fast if the route's breaker is open."""
        self.calls += 1
        self.call_started = time.perf_counter()
        self.retries.before()
        return self.request

    def succeeded(self) -> None:
        self.retries.succeeded()

    async def failed(self, exc: BaseException, records: list[Attempt] | None, *, retryable: bool = True) -> bool:
        """After a failed call: record it and wait (True: call again, maybe the next model), or
        False: the caller re-raises (not a provider error, or text was already given out).
        Raises ``exc`` when retries and fallbacks are used up or it is not transient."""
        self.retries.failed(exc, caller_limited=self.request.timeout is not None)
        if not isinstance(exc, ProviderError) or not retryable:
            return False
        if records is not None:
            records.append(
                Attempt(
                    number=self.attempt,
                    model=self.model,
                    kind="provider_error",
                    error=error_to_dict(exc),
                    latency_s=time.perf_counter() - self.call_started,
                )
            )
        # a used-up subscription window resets in minutes or hours: fall back or raise, never sleep
        # in the call (tasks wait in the queue instead; see claude.on_quota_exhausted)
        stop_now = isinstance(exc, CircuitOpen | QuotaExhausted)
        delay = None if stop_now else self.retries.next_delay(self.calls, self.started, exc, self.deadline_at)
        if delay is None:
            has_next = self.index + 1 < len(self.models)
            if has_next and (is_transient(exc) or isinstance(exc, CircuitOpen)):
                emit("fallback", from_model=self.model, to_model=self.models[self.index + 1], reason=_reason(exc))
                self._next_model()
                return True
            raise exc
        emit("retry_wait", delay=delay, reason=_reason(exc), model=self.model, attempt=self.attempt)
        assert self.retries.policy.sleep is not None
        await self.retries.policy.sleep(delay)
        return True


async def complete_with_retries(
    request: Request,
    opts: CallOptions,
    *,
    attempt: int = 1,
    kind: str = "answer",
    deadline_at: float | None = None,
) -> Response:
    """One answer for ``request``: transient retries, then fallbacks. Raises the last error.

    ``attempt`` numbers the validation attempt this serves (records and events); ``kind`` is
    ``answer`` or ``judge``; ``deadline_at`` (on the policy's clock) stops retrying when the
    next wait would pass it.
    """
    tries: Tries[Request] = Tries(request, opts, attempt, deadline_at)
    records: list[Attempt] = []
    while True:
        try:
            req = tries.begin()
            if tries.calls == 1 and kind == "answer":
                emit("attempt", number=attempt, model=tries.model)
            response = await router.complete_once(req)
        except BaseException as exc:
            if await tries.failed(exc, records):
                continue
            raise
        tries.succeeded()
        records.append(
            Attempt(
                number=attempt,
                model=tries.model,
                kind=kind,
                ok=True,
                latency_s=response.latency_s,
                usage=response.usage,
                cost_usd=response.cost_usd,
            )
        )
        response.attempts = records
        return response


#: the user message that asks a new call for the rest of an answer cut short
CONTINUE_PROMPT = (
    "Your previous reply was cut off after the text above. Continue it exactly where it stopped: "
    "do not repeat any of it and add no preamble."
)


def continuation_request(request: Request, delivered: str, *, prefill: bool = False) -> Request:
    """``request`` asking for the rest of an answer of which ``delivered`` was already sent.

    With ``prefill`` (routes whose API continues a last assistant message: see
    ``router.takes_prefill``) the partial answer is that last message, without its trailing
    whitespace (Anthropic refuses it there; :class:`_Continuation` drops a repeat of it).
    Otherwise the partial answer is the assistant's turn and an instruction to continue follows."""
    if prefill and delivered.rstrip():
        return request.replace(messages=[*request.messages, {"role": "assistant", "content": delivered.rstrip()}])
    messages = [*request.messages, {"role": "assistant", "content": delivered}, {"role": "user", "content": CONTINUE_PROMPT}]
    return request.replace(messages=messages)


class _Continuation:
    """Drops a continuation's leading text while it repeats the text already delivered (a model
    that restarts its answer instead of continuing it): nothing is ever sent twice."""

    __slots__ = ("delivered", "held", "open", "space")

    def __init__(self, delivered: str, *, prefilled: bool = False) -> None:
        self.delivered = delivered
        self.held = ""
        self.open = not delivered
        # a prefilled continuation goes on from the text without its trailing whitespace, which
        # the client already has: that much leading whitespace of the continuation is dropped
        self.space = len(delivered) - len(delivered.rstrip()) if prefilled else 0

    def feed(self, text: str) -> str:
        """The part of ``text`` to pass on (``""`` while it may still be a repeat)."""
        if self.space:
            stripped = text.lstrip()
            cut = min(self.space, len(text) - len(stripped))
            self.space = 0 if stripped else self.space - cut
            text = text[cut:]
        if self.open:
            return text
        held = self.held + text
        if self.delivered.startswith(held):
            self.held = held  # still a prefix of what was sent: hold it back
            return ""
        self.open = True
        self.held = ""
        if held.startswith(self.delivered):
            return held[len(self.delivered):]
        return held

    def flush(self) -> str:
        """At the end of the continuation: held text that turned out to be the whole answer is
        a repeat, and is dropped."""
        self.open = True
        self.held = ""
        return ""


async def stream_with_retries(
    request: Request,
    opts: CallOptions,
    *,
    attempt: int = 1,
    deadline_at: float | None = None,
    records: list[Attempt] | None = None,
) -> AsyncIterator[Chunk]:
    """Stream ``request`` with transient retries and fallbacks.

    Before the first chunk a failed call is simply made again. After it, a transient cut is
    rescued when the policy allows another call (same model, then the next fallback), as
    ``opts.stream_rescue`` says:

    - ``"restart"`` (the library default): a ``Chunk(event="retry", data={"rescue": "restart",
      ...})`` announces that the answer starts again: drop what came before it (text and tool-call
      fragments); the next call streams the whole answer. Tool-call streams are restarted too.
    - ``"continue"``: the ``retry`` chunk has ``rescue="continue"`` and the next call is asked to
      continue the text already delivered; only the continuation is streamed, never a repeat. A
      stream cut inside a tool call cannot be continued: it raises :class:`StreamInterrupted`.
    - ``"off"``: a cut after the first chunk raises at once.

    Failed calls are appended to ``records`` (when given) as ``provider_error`` attempts.
    """
    tries: Tries[Request] = Tries(request, opts, attempt, deadline_at)
    mode = getattr(opts, "stream_rescue", "restart")
    delivered: list[str] = []
    while True:
        yielded = tool_step = False
        sent = "".join(delivered)
        try:
            req = tries.begin()
            if tries.calls == 1:
                emit("attempt", number=attempt, model=tries.model)
            prefill = bool(sent) and router.takes_prefill(req.model, current_settings())
            if sent:
                req = continuation_request(req, sent, prefill=prefill)
            cont = _Continuation(sent, prefilled=prefill)
            async with closing(router.stream_once(req)) as chunks:
                async for chunk in chunks:
                    if chunk.tool_calls:
                        tool_step = True
                    if chunk.text:
                        chunk.text = cont.feed(chunk.text)
                        if not chunk.text and not chunk.tool_calls and chunk.finish_reason is None:
                            continue
                    if chunk.finish_reason is not None:
                        cont.flush()
                    yielded = True
                    if chunk.text and mode == "continue":
                        delivered.append(chunk.text)
                    yield chunk
        except BaseException as exc:
            if yielded and mode == "continue" and tool_step and isinstance(exc, StreamInterrupted):
                tries.retries.failed(exc, caller_limited=tries.request.timeout is not None)
                raise StreamInterrupted(
                    f"the stream was cut inside a tool call ({exc.message}); a partial tool call is "
                    "never continued, so it was not rescued (stream_rescue='restart' starts it again)",
                    hint="call again, or use stream_rescue='restart': the tool call must be made from the start",
                    provider=exc.provider,
                    model=exc.model,
                    partial=exc.partial,
                ) from exc
            rescuable = mode != "off" and isinstance(exc, ProviderError)
            if mode == "continue":
                rescuable = rescuable and bool(delivered) and not tool_step
            from_model = tries.model
            if await tries.failed(exc, records, retryable=not yielded or rescuable):
                if yielded:
                    yield _rescue_marker(mode, exc, from_model, tries, attempt, sum(len(t) for t in delivered))
                continue
            raise
        tries.succeeded()
        return


def _rescue_marker(mode: str, exc: BaseException, from_model: str, tries: Tries[Request], attempt: int, kept: int) -> Chunk:
    """The ``retry`` chunk that announces a rescued stream (and the matching progress event)."""
    data: dict[str, Any] = {
        "rescue": mode,
        "reason": _reason(exc),
        "from_model": from_model,
        "model": tries.model,
        "call": tries.calls + 1,
    }
    if mode == "continue":
        data["kept_chars"] = kept
    emit("stream_rescue", **{k: v for k, v in data.items() if k != "call"})
    return Chunk(model=tries.model, attempt=attempt, event="retry", data=data)


# -- the caller's deadline -------------------------------------------------------------------

#: a provider timeout this close to the caller's deadline is the deadline running out
DEADLINE_SLACK_S = 0.05


@contextmanager
def deadline_stop(
    clock: Callable[[], float], deadline_at: float | None, error: Callable[[ProviderTimeout], BudgetExceeded]
) -> Iterator[None]:
    """Turn a :class:`ProviderTimeout` raised when the caller's ``deadline_s`` has run out (on
    ``clock``) into the :class:`BudgetExceeded` that ``error`` builds: the caller's own deadline
    is a budget stop, not a provider failure. A timeout well before the deadline passes through.
    Used by the pipeline (plain calls) and the validation loop (each attempt)."""
    try:
        yield
    except ProviderTimeout as exc:
        if deadline_at is not None and clock() + DEADLINE_SLACK_S >= deadline_at:
            raise error(exc) from exc
        raise
