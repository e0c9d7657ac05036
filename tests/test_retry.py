"""The transient-failure layer: strategies (pure), retries with Retry-After and full jitter,
fallbacks and circuit breakers against the scripted server. Time is a ManualClock: no test sleeps.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable

import pytest

import llm_call
from llm_call import (
    AuthError,
    BudgetExceeded,
    CircuitOpen,
    ProviderConnectionError,
    ProviderHTTPError,
    ProviderTimeout,
    RateLimited,
    StreamInterrupted,
    UsageError,
)
from llm_call._retry import CircuitBreaker, health
from llm_call.config import Settings
from llm_call.retry import (
    ManualClock,
    RetryPolicy,
    RetryState,
    retry_if_exception_type,
    retry_if_transient,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
    wait_full_jitter,
    wait_retry_after,
)
from llm_call.testing import Fault, Reply, ScriptedLLMServer
from support.progress import recorder


@pytest.fixture
async def srv(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ScriptedLLMServer]:
    async with ScriptedLLMServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield server




def state(attempt: int, elapsed: float = 0.0, error: BaseException | None = None) -> RetryState:
    return RetryState(attempt=attempt, started_at=100.0, now=100.0 + elapsed, error=error)


# -- strategies: decision logic with no I/O ------------------------------------------------------


def test_stop_strategies_compose() -> None:
    stop = stop_after_attempt(3) | stop_after_delay(60)
    assert not stop(state(2, 10))
    assert stop(state(3, 10))
    assert stop(state(1, 60))
    both = stop_after_attempt(3) & stop_after_delay(60)
    assert not both(state(3, 10)) and both(state(3, 61))


def test_wait_strategies() -> None:
    assert [wait_exponential(0.5, 4)(state(n)) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    jitter = wait_full_jitter(0.5, 4, rng=lambda: 0.5)
    assert [jitter(state(n)) for n in (1, 2, 3, 5)] == [0.25, 0.5, 1.0, 2.0]
    assert wait_full_jitter(1, 10, rng=lambda: 0.0)(state(3)) == 0.0
    assert (wait_fixed(1) + wait_fixed(2))(state(1)) == 3
    limited = RateLimited("429", retry_after=7.0)
    after = wait_retry_after(cap=5, otherwise=wait_fixed(0.1))
    assert after(state(1, error=limited)) == 5.0
    assert after(state(1, error=RateLimited("429", retry_after=2.0))) == 2.0
    assert after(state(1, error=RateLimited("429"))) == 0.1


def test_retry_predicates_and_policy_decision() -> None:
    assert retry_if_transient(state(1, error=ProviderHTTPError("x", status=503)))
    assert retry_if_transient(state(1, error=ProviderHTTPError("x", status=529)))
    assert retry_if_transient(state(1, error=StreamInterrupted("x")))
    assert not retry_if_transient(state(1, error=ProviderHTTPError("x", status=400)))
    assert not retry_if_transient(state(1, error=ProviderHTTPError("x", status=422)))
    assert not retry_if_transient(state(1, error=AuthError("x")))
    assert (retry_if_exception_type(KeyError) | retry_if_transient)(state(1, error=KeyError()))
    policy = RetryPolicy(stop=stop_after_attempt(2), wait=wait_fixed(1), retry=retry_if_transient)
    assert policy.next_delay(state(1, error=RateLimited("x"))) == 1
    assert policy.next_delay(state(2, error=RateLimited("x"))) is None
    assert policy.next_delay(state(1, error=AuthError("x"))) is None


def test_breaker_state_machine() -> None:
    b = CircuitBreaker("openai", threshold=3, window=10, cooldown=30)
    b.record_failure(0)
    b.record_failure(1)
    b.record_failure(20)  # the first two fell out of the window
    assert b.state == "closed"
    b.record_failure(21)
    b.record_failure(22)
    assert b.state == "open"
    with pytest.raises(CircuitOpen) as info:
        b.before_call(30)
    assert info.value.retry_in == pytest.approx(22.0)
    b.before_call(52)  # cool-down over: one probe
    assert b.state == "half_open"
    with pytest.raises(CircuitOpen):
        b.before_call(52)  # a second caller while the probe runs
    b.record_failure(53)
    assert b.state == "open" and b.times_opened == 2
    b.before_call(84)
    b.record_success(85)
    assert b.state == "closed"
    b.before_call(85)


# -- retries over real sockets ------------------------------------------------------------------------


async def test_two_429_with_retry_after_then_success(srv: ScriptedLLMServer) -> None:
    srv.add(
        Reply(fault=Fault.http(429, headers={"Retry-After": "1"})),
        Reply(fault=Fault.http(429, headers={"Retry-After": "2"})),
        Reply(text="finally"),
    )
    clock = ManualClock()
    events, listen = recorder()
    resp = await llm_call.acall("openai/m", "hi", retry=clock.policy(), progress=listen)
    assert resp.text == "finally"
    assert len(srv.requests) == 3
    assert clock.sleeps == [1.0, 2.0]
    waits = [d for k, d in events if k == "retry_wait"]
    assert [(w["delay"], w["reason"], w["model"]) for w in waits] == [
        (1.0, "RateLimited", "openai/m"), (2.0, "RateLimited", "openai/m")
    ]
    assert [(a.kind, a.ok) for a in resp.attempts] == [("provider_error", False), ("provider_error", False), ("answer", True)]
    assert resp.attempts[0].error is not None and resp.attempts[0].error["type"] == "RateLimited"


async def test_retry_after_http_date_is_honoured_and_capped(srv: ScriptedLLMServer, use_settings: Callable[..., Settings]) -> None:
    use_settings(retry={"max_retry_after": 20})
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    srv.add(Reply(fault=Fault.http(429, headers={"Retry-After": when})), Reply(text="ok"))
    clock = ManualClock()
    await llm_call.acall("openai/m", "hi", retry=clock.policy())
    assert clock.sleeps == [20.0]


async def test_401_is_one_request_and_auth_error(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(401)), Reply(text="never"))
    clock = ManualClock()
    with pytest.raises(AuthError):
        await llm_call.acall("openai/m", "hi", retry=clock.policy())
    assert len(srv.requests) == 1 and clock.sleeps == []


@pytest.mark.parametrize("status", [400, 403, 404, 422])
async def test_client_errors_are_never_retried(srv: ScriptedLLMServer, status: int) -> None:
    srv.add(Reply(fault=Fault.http(status)), Reply(text="never"))
    with pytest.raises(llm_call.ProviderError):
        await llm_call.acall("openai/m", "hi", retry=ManualClock().policy())
    assert len(srv.requests) == 1


async def test_5xx_exhausts_with_full_jitter_backoff(srv: ScriptedLLMServer, use_settings: Callable[..., Settings]) -> None:
    use_settings(retry={"max_retries": 3, "base_delay": 1.0, "max_delay": 3.0})
    srv.add(Reply(fault=Fault.http(503), times=None))
    clock = ManualClock()
    with pytest.raises(ProviderHTTPError) as info:
        await llm_call.acall("openai/m", "hi", retry=clock.policy(rng=lambda: 0.5))
    assert info.value.status == 503
    assert len(srv.requests) == 4
    assert clock.sleeps == [0.5, 1.0, 1.5]  # 0.5 * min(3, 1 * 2**(n-1))


async def test_per_route_retry_settings(srv: ScriptedLLMServer, use_settings: Callable[..., Settings]) -> None:
    use_settings(retry={"max_retries": 5, "routes": {"openai/*": {"max_retries": 1, "base_delay": 2.0}}})
    srv.add(Reply(fault=Fault.http(500), times=None))
    clock = ManualClock()
    with pytest.raises(ProviderHTTPError):
        await llm_call.acall("openai/m", "hi", retry=clock.policy(rng=lambda: 1.0))
    assert len(srv.requests) == 2 and clock.sleeps == [2.0]


async def test_connection_reset_is_retried(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.reset()), Reply(text="ok"))
    resp = await llm_call.acall("openai/m", "hi", retry=ManualClock().policy())
    assert resp.text == "ok" and len(srv.requests) == 2


async def test_retry_false_and_int(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(503), times=None))
    with pytest.raises(ProviderHTTPError):
        await llm_call.acall("openai/m", "hi", retry=False)
    assert len(srv.requests) == 1
    with pytest.raises(UsageError):
        await llm_call.acall("openai/m", "hi", retry="often")


async def test_deadline_stops_retrying_when_the_next_wait_would_pass_it(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(503), times=None))
    clock = ManualClock()
    with pytest.raises(ProviderHTTPError):
        await llm_call.acall(
            "openai/m", "hi", deadline_s=15, retry=clock.policy(stop=stop_after_attempt(10), wait=wait_fixed(10))
        )
    assert len(srv.requests) == 2 and clock.sleeps == [10]


async def test_the_callers_deadline_running_out_is_budget_exceeded_not_a_provider_timeout(
    srv: ScriptedLLMServer,
) -> None:
    srv.add(Reply(text="too late", latency=5.0, times=None))
    with pytest.raises(BudgetExceeded, match=r"deadline_s=0.3 passed"):
        await llm_call.acall("openai/m", "hi", deadline_s=0.3)
    with pytest.raises(BudgetExceeded, match=r"deadline_s=0.3 passed"):
        async for _ in llm_call.astream("openai/m", "hi", deadline_s=0.3):
            pass
    # a provider timeout well inside the deadline stays a provider timeout
    with pytest.raises(ProviderTimeout):
        await llm_call.acall("openai/m", "hi", timeout=0.2, deadline_s=60, retry=False)


async def test_layer_options_without_validation_are_usage_errors(srv: ScriptedLLMServer) -> None:
    with pytest.raises(UsageError, match="escalate only applies to validated calls") as info:
        await llm_call.acall("openai/m", "hi", escalate=["openai/n"])
    assert info.value.hint is not None and "fallbacks" in info.value.hint
    with pytest.raises(UsageError, match="budget_usd must be > 0"):
        await llm_call.acall("openai/m", "hi", validate=["json"], budget_usd=0)
    assert srv.requests == []


# -- streams -------------------------------------------------------------------------------------------


async def test_stream_retries_before_the_first_chunk(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(503)), Reply(text="one two"))
    chunks = [c async for c in llm_call.astream("openai/m", "hi", retry=ManualClock().policy())]
    assert "".join(c.text for c in chunks) == "one two"
    assert len(srv.requests) == 2


async def test_stream_cut_after_a_chunk_is_not_retried_without_rescue(srv: ScriptedLLMServer) -> None:
    # with the default stream_rescue="continue" it is continued: tests/test_stream_rescue.py
    srv.add(Reply(text="alpha beta gamma", fault=Fault.cut_stream(after_chunks=1)), Reply(text="again"))
    seen: list[str] = []
    with pytest.raises(StreamInterrupted):
        async for chunk in llm_call.astream("openai/m", "hi", retry=ManualClock().policy(), stream_rescue="off"):
            seen.append(chunk.text)
    assert seen == ["alpha "] and len(srv.requests) == 1


# -- fallbacks -----------------------------------------------------------------------------------------


async def test_fallback_after_retries_are_exhausted(srv: ScriptedLLMServer, use_settings: Callable[..., Settings]) -> None:
    use_settings(retry={"max_retries": 1})
    srv.add(Reply(fault=Fault.http(503), match_model="main", times=None), Reply(text="backup answer", match_model="backup"))
    events, listen = recorder()
    resp = await llm_call.acall(
        "openai/main", "hi", fallbacks=["openai/backup"], retry=ManualClock().policy(), progress=listen
    )
    assert resp.text == "backup answer"
    assert [r.model for r in srv.requests] == ["main", "main", "backup"]
    assert [(a.model, a.kind) for a in resp.attempts] == [
        ("openai/main", "provider_error"), ("openai/main", "provider_error"), ("openai/backup", "answer")
    ]
    fallback = [d for k, d in events if k == "fallback"]
    assert fallback == [{"from_model": "openai/main", "to_model": "openai/backup", "reason": "ProviderHTTPError 503"}]


async def test_no_fallback_on_auth_error(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(401), match_model="main"), Reply(text="backup", match_model="backup"))
    with pytest.raises(AuthError):
        await llm_call.acall("openai/main", "hi", fallbacks=["openai/backup"], retry=ManualClock().policy())
    assert len(srv.requests) == 1


async def test_every_fallback_failing_raises_the_last_error(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(503), times=None))
    with pytest.raises(ProviderHTTPError):
        await llm_call.acall("openai/a", "hi", fallbacks=["openai/b"], retry=ManualClock().policy(stop=stop_after_attempt(1)))
    assert [r.model for r in srv.requests] == ["a", "b"]


# -- circuit breakers ------------------------------------------------------------------------------------


async def test_breaker_opens_fails_fast_then_recovers(srv: ScriptedLLMServer, use_settings: Callable[..., Settings]) -> None:
    use_settings(retry={"max_retries": 0, "breaker_threshold": 3, "breaker_window": 60, "breaker_cooldown": 30})
    clock = ManualClock()
    srv.add(Reply(fault=Fault.http(502), times=3))
    for _ in range(3):
        with pytest.raises(ProviderHTTPError):
            await llm_call.acall("openai/m", "hi", retry=clock.policy())
    assert len(srv.requests) == 3
    assert health(clock.now())["breakers"]["openai"]["state"] == "open"
    assert health(clock.now())["ok"] is False

    with pytest.raises(CircuitOpen) as info:
        await llm_call.acall("openai/other-model", "hi", retry=clock.policy())
    assert len(srv.requests) == 3  # failed fast: no request
    assert info.value.retry_in == pytest.approx(30.0)

    clock.advance(31)
    srv.add(Reply(text="back"))
    resp = await llm_call.acall("openai/m", "hi", retry=clock.policy())
    assert resp.text == "back" and len(srv.requests) == 4
    snapshot = health(clock.now())
    assert snapshot["ok"] is True and snapshot["breakers"]["openai"]["state"] == "closed"
    assert snapshot["breakers"]["openai"]["times_opened"] == 1


async def test_timeouts_the_caller_chose_do_not_open_the_breaker_but_provider_timeouts_do(
    srv: ScriptedLLMServer, use_settings: Callable[..., Settings]
) -> None:
    """One client's tiny timeouts say nothing about the route's health; the route's own do."""
    use_settings(retry={"max_retries": 0, "breaker_threshold": 2}, openai={"read_timeout": 0.2})
    srv.add(Reply(text="slow", latency=1.0, times=None))
    for _ in range(3):
        with pytest.raises(ProviderTimeout):
            await llm_call.acall("openai/m", "hi", timeout=0.1)
    assert health()["breakers"]["openai"]["state"] == "closed"
    for _ in range(2):
        with pytest.raises(ProviderTimeout):
            await llm_call.acall("openai/m", "hi")  # the configured read timeout trips
    assert health()["breakers"]["openai"]["state"] == "open"


async def test_failed_probe_reopens(srv: ScriptedLLMServer, use_settings: Callable[..., Settings]) -> None:
    use_settings(retry={"max_retries": 0, "breaker_threshold": 2, "breaker_cooldown": 10})
    clock = ManualClock()
    srv.add(Reply(fault=Fault.http(500), times=None))
    for _ in range(2):
        with pytest.raises(ProviderHTTPError):
            await llm_call.acall("openai/m", "hi", retry=clock.policy())
    clock.advance(11)
    with pytest.raises(ProviderHTTPError):
        await llm_call.acall("openai/m", "hi", retry=clock.policy())  # the probe
    with pytest.raises(CircuitOpen):
        await llm_call.acall("openai/m", "hi", retry=clock.policy())
    assert len(srv.requests) == 3


async def test_breakers_are_per_route_and_open_breaker_falls_back(
    srv: ScriptedLLMServer, use_settings: Callable[..., Settings]
) -> None:
    use_settings(
        retry={"max_retries": 0, "breaker_threshold": 1},
        endpoints={"backup": {"base_url": srv.openai_base_url}},
    )
    clock = ManualClock()
    srv.add(Reply(fault=Fault.http(503), match_model="m"), Reply(text="from endpoint", match_model="n", times=None))
    with pytest.raises(ProviderHTTPError):
        await llm_call.acall("openai/m", "hi", retry=clock.policy())
    resp = await llm_call.acall("openai/m", "hi", fallbacks=["backup/n"], retry=clock.policy())
    assert resp.text == "from endpoint"
    assert resp.attempts[0].error is not None and resp.attempts[0].error["type"] == "CircuitOpen"
    states = health(clock.now())["breakers"]
    assert states["openai"]["state"] == "open" and states["endpoint:backup"]["state"] == "closed"


async def test_connection_refused_counts_toward_the_breaker(monkeypatch: pytest.MonkeyPatch, use_settings: Callable[..., Settings]) -> None:
    use_settings(retry={"max_retries": 0, "breaker_threshold": 1})
    async with ScriptedLLMServer() as server:
        url = server.openai_base_url
    monkeypatch.setenv("OPENAI_BASE_URL", url)  # nobody listens there any more
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    clock = ManualClock()
    with pytest.raises(ProviderConnectionError):
        await llm_call.acall("openai/m", "hi", retry=clock.policy())
    with pytest.raises(CircuitOpen):
        await llm_call.acall("openai/m", "hi", retry=clock.policy())


def test_health_is_exported_lazily() -> None:
    assert llm_call.health is health
    assert health() == {"ok": True, "breakers": {}}
