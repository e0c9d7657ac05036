"""Retry policy for transient failures, tenacity-style: small composable strategies and a
decision step with no I/O. This is what callers hand to ``retry=``::

    from llm_call import RetryPolicy, stop_after_attempt, stop_after_delay, wait_full_jitter

    policy = RetryPolicy(
        stop=stop_after_attempt(4) | stop_after_delay(60),
        wait=wait_retry_after(cap=60, otherwise=wait_full_jitter(base=0.5, cap=30)),
        sleep=fake.sleep, clock=fake.now,      # injectable: tests never sleep
    )
    resp = await llm_call.acall("openai/gpt-4o-mini", "hi", retry=policy)

:class:`ManualClock` is a fake clock for tests. The layer that applies a policy to provider
calls (retries, fallbacks, circuit breakers) is ``llm_call._retry``; its module docstring says
what is retried.
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import UsageError, is_transient

if TYPE_CHECKING:
    from .config import RetryConfig

__all__ = [
    "ManualClock",
    "RetryIf",
    "RetryPolicy",
    "RetryState",
    "Stop",
    "Wait",
    "retry_if_exception_type",
    "retry_if_transient",
    "stop_after_attempt",
    "stop_after_delay",
    "stop_never",
    "wait_exponential",
    "wait_fixed",
    "wait_full_jitter",
    "wait_retry_after",
]

SleepFn = Callable[[float], Awaitable[None]]
ClockFn = Callable[[], float]


@dataclass(slots=True)
class RetryState:
    """What the strategies decide on: calls made so far (``attempt`` >= 1), times, last error."""

    attempt: int
    started_at: float
    now: float
    error: BaseException | None

    @property
    def elapsed(self) -> float:
        return self.now - self.started_at


# -- stop strategies ----------------------------------------------------------------------


class Stop:
    """True when no further call may be made. Compose with ``|`` (any) and ``&`` (all)."""

    def __call__(self, state: RetryState) -> bool:
        raise NotImplementedError

    def __or__(self, other: Stop) -> Stop:
        return _StopAny(self, other)

    def __and__(self, other: Stop) -> Stop:
        return _StopAll(self, other)


class _StopAny(Stop):
    def __init__(self, *stops: Stop) -> None:
        self.stops = stops

    def __call__(self, state: RetryState) -> bool:
        return any(s(state) for s in self.stops)


class _StopAll(Stop):
    def __init__(self, *stops: Stop) -> None:
        self.stops = stops

    def __call__(self, state: RetryState) -> bool:
        return all(s(state) for s in self.stops)


class stop_after_attempt(Stop):
    """Stop once ``n`` calls were made (``n - 1`` retries)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, state: RetryState) -> bool:
        return state.attempt >= self.n


class stop_after_delay(Stop):
    """Stop once ``seconds`` have passed since the first call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, state: RetryState) -> bool:
        return state.elapsed >= self.seconds


class _StopNever(Stop):
    def __call__(self, state: RetryState) -> bool:
        return False


stop_never: Stop = _StopNever()


# -- wait strategies ----------------------------------------------------------------------


class Wait:
    """Seconds to wait before the next call. Compose with ``+`` (sum)."""

    def __call__(self, state: RetryState) -> float:
        raise NotImplementedError

    def __add__(self, other: Wait) -> Wait:
        return _WaitSum(self, other)


class _WaitSum(Wait):
    def __init__(self, *waits: Wait) -> None:
        self.waits = waits

    def __call__(self, state: RetryState) -> float:
        return sum(w(state) for w in self.waits)


class wait_fixed(Wait):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, state: RetryState) -> float:
        return self.seconds


class wait_exponential(Wait):
    """``min(cap, base * 2**(attempt - 1))``."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, state: RetryState) -> float:
        return float(min(self.cap, self.base * 2.0 ** max(0, state.attempt - 1)))


class wait_full_jitter(wait_exponential):
    """Full jitter: ``uniform(0, min(cap, base * 2**(attempt - 1)))`` (AWS architecture blog)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] | None = None) -> None:
        super().__init__(base, cap)
        self.rng = rng or random.random

    def __call__(self, state: RetryState) -> float:
        return self.rng() * super().__call__(state)


class wait_retry_after(Wait):
    """The error's ``retry_after`` (from the ``Retry-After`` header) capped at ``cap``, else
    ``otherwise``."""

    def __init__(self, cap: float = 60.0, otherwise: Wait | None = None) -> None:
        self.cap = cap
        self.otherwise = otherwise or wait_full_jitter()

    def __call__(self, state: RetryState) -> float:
        after = getattr(state.error, "retry_after", None)
        if isinstance(after, int | float) and after >= 0:
            return min(float(after), self.cap)
        return self.otherwise(state)


# -- retry-if predicates ------------------------------------------------------------------


class RetryIf:
    """True when the failure is worth another call. Compose with ``|`` and ``&``."""

    def __init__(self, predicate: Callable[[BaseException], bool]) -> None:
        self.predicate = predicate

    def __call__(self, state: RetryState) -> bool:
        return state.error is not None and self.predicate(state.error)

    def __or__(self, other: RetryIf) -> RetryIf:
        return RetryIf(lambda e: self.predicate(e) or other.predicate(e))

    def __and__(self, other: RetryIf) -> RetryIf:
        return RetryIf(lambda e: self.predicate(e) and other.predicate(e))


def retry_if_exception_type(*types: type[BaseException]) -> RetryIf:
    return RetryIf(lambda e: isinstance(e, types))


retry_if_transient = RetryIf(is_transient)


# -- the policy ---------------------------------------------------------------------------


async def _real_sleep(delay: float) -> None:
    await asyncio.sleep(delay)


@dataclass(slots=True)
class RetryPolicy:
    """How one route retries. ``None`` fields are filled from the settings for the route."""

    stop: Stop | None = None
    wait: Wait | None = None
    retry: RetryIf | None = None
    sleep: SleepFn | None = None
    clock: ClockFn | None = None
    rng: Callable[[], float] | None = None
    breakers: bool = True

    def next_delay(self, state: RetryState) -> float | None:
        """Seconds to wait before the next call, or None to give up. No I/O."""
        assert self.retry is not None and self.stop is not None and self.wait is not None
        if not self.retry(state) or self.stop(state):
            return None
        return max(0.0, self.wait(state))

    def now(self) -> float:
        return (self.clock or time.monotonic)()


def _route_settings(cfg: RetryConfig, key: str, model: str) -> tuple[int, float, float]:
    retries, base, cap = cfg.max_retries, cfg.base_delay, cfg.max_delay
    chosen = cfg.routes.get(key)
    if chosen is None:
        for pattern, route_cfg in cfg.routes.items():
            if fnmatch.fnmatchcase(model, pattern) or fnmatch.fnmatchcase(key, pattern):
                chosen = route_cfg
                break
    if chosen is not None:
        retries = chosen.max_retries if chosen.max_retries is not None else retries
        base = chosen.base_delay if chosen.base_delay is not None else base
        cap = chosen.max_delay if chosen.max_delay is not None else cap
    return retries, base, cap


def resolve_policy(given: Any, cfg: RetryConfig, key: str, model: str) -> RetryPolicy:
    """The complete policy for one route: ``given`` (``retry=`` option) over the settings."""
    if given is None or given is True:
        policy = RetryPolicy()
    elif isinstance(given, RetryPolicy):
        if given.stop and given.wait and given.retry and given.sleep and given.clock:
            return given
        policy = replace(given)
    elif given is False:
        policy = RetryPolicy(stop=stop_after_attempt(1))
    elif isinstance(given, int):
        if given < 0:
            raise UsageError(f"retry must be >= 0 retries, not {given}")
        policy = RetryPolicy(stop=stop_after_attempt(given + 1))
    elif isinstance(given, dict):  # the JSON form (tasks, batch files, the original's retry_config)
        unknown = sorted(set(given) - {"max_retries", "base_delay", "max_delay"})
        if unknown:
            raise UsageError(f"retry dict has unknown key(s) {unknown}; known: max_retries, base_delay, max_delay")
        retries, base, cap = _route_settings(cfg, key, model)
        retries, base, cap = int(given.get("max_retries", retries)), float(given.get("base_delay", base)), float(given.get("max_delay", cap))
        if retries < 0 or base < 0 or cap < 0:
            raise UsageError(f"retry values must be >= 0, not {given!r}")
        policy = RetryPolicy(stop=stop_after_attempt(retries + 1), wait=wait_retry_after(cfg.max_retry_after, wait_full_jitter(base, cap)))
    else:
        raise UsageError(f"retry= takes a RetryPolicy, an int (max retries), a dict or False, not {given!r}")
    if policy.stop is None or policy.wait is None:
        retries, base, cap = _route_settings(cfg, key, model)
        if policy.stop is None:
            policy.stop = stop_after_attempt(retries + 1)
        if policy.wait is None:
            policy.wait = wait_retry_after(cfg.max_retry_after, wait_full_jitter(base, cap, policy.rng))
    if policy.retry is None:
        policy.retry = retry_if_transient
    if policy.sleep is None:
        policy.sleep = _real_sleep
    if policy.clock is None:
        policy.clock = time.monotonic
    return policy


def clock_of(given: Any) -> ClockFn:
    """The clock a ``retry=`` option asks for (the validation loop shares it for deadlines)."""
    if isinstance(given, RetryPolicy) and given.clock is not None:
        return given.clock
    return time.monotonic


class ManualClock:
    """A fake clock for tests: ``sleep`` records the delay and advances ``now`` instantly."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.time += delay
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.time += seconds

    def policy(self, **fields: Any) -> RetryPolicy:
        """A RetryPolicy using this clock (other fields from ``fields`` or the settings)."""
        return RetryPolicy(sleep=self.sleep, clock=self.now, **fields)
