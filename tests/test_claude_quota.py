"""The Claude subscription's quota: the real Claude Code CLI in subscription mode against the
scripted Anthropic server sending ``anthropic-ratelimit-unified-*`` headers.

The CLI turns those headers into ``rate_limit_event`` lines; llm_call keeps the state per account
in the task store, shows it (``/v1/usage/quota``, ``llm-call quota``) and schedules ``max/*``
tasks on it (wait for the reset, fall back, fail, refuse overage, slow down).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import llm_call
from llm_call.cli._tasks import _record_summary
from llm_call.errors import ProviderTimeout, QuotaExhausted, RateLimited
from llm_call.providers.claude_cli import pool_state
from llm_call.providers.claude_quota import QUOTA
from llm_call.providers.router import close_providers
from llm_call.tasks import TaskManager
from llm_call.testing import Fault, Reply, ScriptedLLMServer, unified_ratelimit_headers
from llm_call.types import TaskStatus
from support.claude_env import ClaudeEnv, claude_env
from support.llm_server import serve_llm
from support.tasks_env import managers

__all__ = ["claude_env", "managers", "serve_llm"]

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def _fresh_quota() -> Iterator[None]:
    QUOTA.clear()
    yield
    QUOTA.clear()


def warning(now: float, util: float = 0.93) -> dict[str, str]:
    return unified_ratelimit_headers(
        "allowed_warning",
        five_hour=(util, now + 3600, "allowed_warning"),
        seven_day=(0.41, now + 3 * 86400, "allowed"),
    )


def rejected(reset: float, *, overage: str = "rejected") -> dict[str, str]:
    return unified_ratelimit_headers(
        "rejected",
        five_hour=(1.0, reset, "rejected"),
        seven_day=(0.5, reset + 86400, "allowed"),
        overage_status=overage,
    )


def messages(srv: ScriptedLLMServer) -> list[Any]:
    return [r for r in srv.requests if r.path == "/v1/messages"]


@pytest.mark.parametrize("pool_size", [0, 2], ids=["one_shot", "pooled"])
async def test_a_warning_updates_the_quota_state(
    claude_env: ClaudeEnv, use_settings: Callable[..., Any], pool_size: int
) -> None:
    use_settings(retry={"max_retries": 0}, claude={"pool_size": pool_size})
    now = time.time()
    try:
        async with ScriptedLLMServer([Reply(text="hello", headers=warning(now))]) as srv:
            claude_env.use_subscription(srv)
            events: list[tuple[str, dict[str, Any]]] = []
            resp = await llm_call.acall("max/sonnet", "hi", progress=lambda k, d: events.append((k, d)))
            assert pool_state()["started"] == (1 if pool_size else 0)  # pooled when the pool is on
    finally:
        await close_providers()
    assert resp.text == "hello"
    state = QUOTA.get("default")
    assert state is not None
    five = state.windows["five_hour"]
    assert five.utilization == pytest.approx(0.93) and five.status == "allowed_warning"
    assert five.resets_at == int(now + 3600)
    assert state.windows["seven_day"].utilization == pytest.approx(0.41)
    assert state.overage_status == "rejected" and state.overage_disabled_reason == "org_level_disabled"
    assert ("quota", {"account": "default", "status": state.status, "window": "five_hour",
                      "utilization": pytest.approx(0.93), "resets_at": state.resets_at}) in events


@pytest.mark.parametrize("pool_size", [0, 2], ids=["one_shot", "pooled"])
async def test_a_rejection_is_quota_exhausted_with_retry_after(
    claude_env: ClaudeEnv, use_settings: Callable[..., Any], pool_size: int
) -> None:
    use_settings(retry={"max_retries": 2}, claude={"pool_size": pool_size})
    reset = time.time() + 1800
    script = [Reply(fault=Fault.http(429), headers=rejected(reset), times=None)]
    async with _closing_providers(), ScriptedLLMServer(script) as srv:
        claude_env.use_subscription(srv)
        with pytest.raises(RateLimited) as info:
            await llm_call.acall("max/sonnet", "hi")
        err = info.value
        assert isinstance(err, QuotaExhausted)
        assert err.window == "five_hour" and "five_hour" in str(err)
        assert err.retry_after is not None and 1790 < err.retry_after <= 1800
        assert len(messages(srv)) == 1  # not retried in the call: the reset is half an hour away
        # the next call is refused before it starts: no request reaches the subscription
        with pytest.raises(QuotaExhausted):
            await llm_call.acall("max/sonnet", "hi again")
        assert len(messages(srv)) == 1
        assert pool_state()["started"] == (1 if pool_size else 0)


@contextlib.asynccontextmanager
async def _closing_providers() -> AsyncIterator[None]:
    try:
        yield
    finally:
        await close_providers()  # pooled processes stay warm until then


async def result_of(mgr: TaskManager, task_id: str) -> Any:
    await mgr.wait(task_id, timeout=60)
    return await mgr.result(task_id)


async def _poll(predicate: Callable[[], Awaitable[bool]], what: str, limit: float = 60) -> None:
    async with asyncio.timeout(limit):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_a_background_task_waits_for_the_reset_then_completes(
    claude_env: ClaudeEnv, managers: Callable[..., Awaitable[TaskManager]], use_settings: Callable[..., Any]
) -> None:
    use_settings(retry={"max_retries": 0}, tasks={"heartbeat_s": 0.2})
    reset = int(time.time()) + 5  # the CLI must meet the rejection before the reset, even on a busy machine
    script = [
        Reply(fault=Fault.http(429), headers=rejected(reset)),
        Reply(text="after the reset", headers=warning(reset, util=0.05)),
    ]
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_subscription(srv)
        mgr = await managers()
        task_id = await mgr.submit({"model": "max/sonnet", "prompt": "hi"})

        async def waiting() -> bool:
            rec = await mgr.status(task_id)
            assert not rec.status.is_final, rec.error
            return bool(rec.progress.get("waiting"))

        await _poll(waiting, "the task shows that it waits")
        rec = await mgr.status(task_id)
        assert rec.progress["waiting"]["window"] == "five_hour"
        assert rec.progress["waiting"]["until"] == reset
        assert "five_hour" in rec.progress["waiting"]["reason"]
        resp = await result_of(mgr, task_id)
        assert resp.text == "after the reset"
        calls = messages(srv)
        assert len(calls) == 2 and calls[1].at >= reset  # upstream saw the retry only after the reset
        assert resp.attempts[0].kind == "quota_wait" and resp.attempts[0].error is not None
        assert resp.attempts[0].error["type"] == "QuotaExhausted"
        kinds = [e.kind async for e in mgr.events(task_id)]
        assert kinds.index("quota_wait") < kinds.index("quota_resume") < kinds.index("finished")
        rec = await mgr.status(task_id)
        assert rec.status is TaskStatus.SUCCEEDED and not rec.progress.get("waiting")


async def test_tasks_held_in_the_queue_say_why_and_until_when(
    claude_env: ClaudeEnv, managers: Callable[..., Awaitable[TaskManager]], use_settings: Callable[..., Any]
) -> None:
    """Not only the task that met the used-up window waits: every max/* task queued behind it
    is held until the reset, and its record (GET /v1/tasks/{id}, /ui) says so."""
    use_settings(retry={"max_retries": 0}, tasks={"heartbeat_s": 0.2})
    reset = int(time.time()) + 3600
    async with _closing_providers(), ScriptedLLMServer([Reply(fault=Fault.http(429), headers=rejected(reset))]) as srv:
        claude_env.use_subscription(srv)
        mgr = await managers(concurrency=1)
        first = await mgr.submit({"model": "max/sonnet", "prompt": "first"})

        async def first_waits() -> bool:
            return bool((await mgr.status(first)).progress.get("waiting"))

        await _poll(first_waits, "the first task waits")
        behind = await mgr.submit({"model": "max/sonnet", "prompt": "behind"})
        other = await mgr.submit({"model": "openai/x", "prompt": "other"}, reserve=False)
        for rec in [await mgr.status(behind), *(await mgr.list_tasks(TaskStatus.QUEUED))]:
            if rec.id == other:
                assert not rec.progress.get("waiting")
                continue
            assert rec.status is TaskStatus.QUEUED, rec.id
            waiting = rec.progress.get("waiting")
            assert waiting and waiting["window"] == "five_hour" and waiting["until"] == reset, (rec.id, rec.progress)
            assert "five_hour" in waiting["reason"]
        assert len(messages(srv)) == 1
        for task_id in (first, behind, other):
            await mgr.cancel(task_id)


async def test_a_task_falls_back_to_quota_fallback(
    claude_env: ClaudeEnv,
    managers: Callable[..., Awaitable[TaskManager]],
    use_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(
        retry={"max_retries": 0},
        claude={"on_quota_exhausted": "fallback", "quota_fallback": "openai/backup"},
    )
    reset = time.time() + 3600
    script = [Reply(fault=Fault.http(429), headers=rejected(reset)), Reply(text="from the API route", times=2)]
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_subscription(srv)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        mgr = await managers()
        task_id = await mgr.submit({"model": "max/sonnet", "prompt": "hi"})
        resp = await result_of(mgr, task_id)
        assert resp.text == "from the API route" and resp.model.endswith("backup")
        assert [r.api for r in srv.requests if r.method == "POST"] == ["anthropic", "openai"]
        assert resp.attempts[0].kind == "quota_fallback" and resp.attempts[0].model == "max/sonnet"
        events = [e async for e in mgr.events(task_id)]
        fallback = next(e for e in events if e.kind == "quota_fallback")
        assert fallback.data["to_model"] == "openai/backup" and fallback.data["window"] == "five_hour"
        # the window stays used up for an hour: later max/* tasks fall back too, rather than wait
        # in the queue for the reset
        later = await mgr.submit({"model": "max/sonnet", "prompt": "later"})
        assert (await result_of(mgr, later)).text == "from the API route"
        assert [r.api for r in srv.requests if r.method == "POST"] == ["anthropic", "openai", "openai"]


async def test_fail_policy_fails_the_task_with_the_window(
    claude_env: ClaudeEnv, managers: Callable[..., Awaitable[TaskManager]], use_settings: Callable[..., Any]
) -> None:
    use_settings(retry={"max_retries": 0}, claude={"on_quota_exhausted": "fail"})
    async with ScriptedLLMServer([Reply(fault=Fault.http(429), headers=rejected(time.time() + 600))]) as srv:
        claude_env.use_subscription(srv)
        mgr = await managers()
        task_id = await mgr.submit({"model": "max/sonnet", "prompt": "hi"})
        with pytest.raises(QuotaExhausted) as info:
            await result_of(mgr, task_id)
        assert info.value.window == "five_hour" and info.value.retry_after is not None
        rec = await mgr.status(task_id)
        assert rec.status is TaskStatus.FAILED
        assert "quota_fail" in [e.kind async for e in mgr.events(task_id)]


async def test_overage_is_refused_when_not_allowed(claude_env: ClaudeEnv, use_settings: Callable[..., Any]) -> None:
    # the five-hour window is used up; the subscription would serve the next call from extra usage
    reset = time.time() + 3600
    headers = unified_ratelimit_headers(
        "rejected",
        five_hour=(1.0, reset, "rejected"),
        overage_status="allowed",
        overage_reset=reset + 20 * 86400,
        overage_in_use=True,
    )
    async with ScriptedLLMServer(default=Reply(text="paid for", headers=headers, times=None)) as srv:
        claude_env.use_subscription(srv)
        use_settings(retry={"max_retries": 0})  # allow_overage defaults to true
        assert (await llm_call.acall("max/sonnet", "one")).text == "paid for"
        assert (await llm_call.acall("max/sonnet", "two")).text == "paid for"
        assert len(messages(srv)) == 2
        use_settings(retry={"max_retries": 0}, claude={"allow_overage": False})
        with pytest.raises(QuotaExhausted) as info:
            await llm_call.acall("max/sonnet", "three")
        assert "overage" in str(info.value) and info.value.window == "five_hour"
        assert len(messages(srv)) == 2  # stopped before spending extra usage


async def test_a_window_past_its_cap_does_not_stop_calls_the_subscription_still_serves(
    claude_env: ClaudeEnv, use_settings: Callable[..., Any]
) -> None:
    """The CLI documents its ``unifiedWindows``: "a rejected window alone does not mean requests
    are refused; the top-level status says whether they are" (usage may run past a window's cap).
    Only a refused status stops the next call."""
    use_settings(retry={"max_retries": 0})
    reset = time.time() + 3600
    headers = unified_ratelimit_headers(
        "allowed_warning", five_hour=(1.02, reset, "rejected"), seven_day=(0.6, reset + 86400, "allowed")
    )
    async with _closing_providers(), ScriptedLLMServer(default=Reply(text="served", headers=headers, times=None)) as srv:
        claude_env.use_subscription(srv)
        assert (await llm_call.acall("max/sonnet", "one")).text == "served"
        state = QUOTA.get("default")
        assert state is not None and state.windows["five_hour"].status == "rejected"  # recorded as said
        assert (await llm_call.acall("max/sonnet", "two")).text == "served"
        assert len(messages(srv)) == 2


async def test_a_used_up_opus_week_stops_opus_calls_only(
    claude_env: ClaudeEnv, managers: Callable[..., Awaitable[TaskManager]], use_settings: Callable[..., Any]
) -> None:
    """``seven_day_opus`` meters Opus only (the CLI itself suggests ``/model sonnet`` then): an
    Opus call refused for the week must not stop, or hold, every other max/* call until then."""
    use_settings(retry={"max_retries": 0}, tasks={"heartbeat_s": 0.2})
    reset = time.time() + 3 * 86400
    refused = unified_ratelimit_headers(
        "rejected", claim="seven_day_opus", reset=reset, five_hour=(0.3, time.time() + 3600, "allowed")
    )
    served = unified_ratelimit_headers("allowed", five_hour=(0.3, time.time() + 3600, "allowed"))
    script = [Reply(match_text="opus one", fault=Fault.http(429), headers=refused)]
    async with _closing_providers(), ScriptedLLMServer(script, default=Reply(text="from sonnet", headers=served, times=None)) as srv:
        claude_env.use_subscription(srv)
        with pytest.raises(QuotaExhausted) as info:
            await llm_call.acall("max/opus", "opus one")
        assert info.value.window == "seven_day_opus"
        with pytest.raises(QuotaExhausted):
            await llm_call.acall("max/claude-opus-4-5", "opus two")  # refused before it starts
        assert (await llm_call.acall("max/sonnet", "sonnet one")).text == "from sonnet"

        mgr = await managers(concurrency=1)
        opus_task = await mgr.submit({"model": "max/opus", "prompt": "opus task"})
        sonnet_task = await mgr.submit({"model": "max/sonnet", "prompt": "sonnet task"})
        assert (await result_of(mgr, sonnet_task)).text == "from sonnet"
        rec = await mgr.status(opus_task)
        assert rec.status is TaskStatus.QUEUED  # held until the Opus week resets
        assert [e.kind async for e in mgr.events(opus_task, follow=False)] == ["queued"]  # never claimed meanwhile
        assert rec.progress["waiting"]["window"] == "seven_day_opus"
        # what `llm-call tasks list` shows from another process: a manager that runs nothing and
        # knows the quota only from the store
        QUOTA.clear()
        viewer = await managers(execute=False)
        shown = {r.id: _record_summary(r) for r in await viewer.list_tasks()}
        assert "waiting for the Claude quota (seven_day_opus)" in shown[opus_task]
        assert "waiting" not in shown[sonnet_task]
        assert [r.last_user_text for r in messages(srv)] == ["opus one", "sonnet one", "sonnet task"]


def test_the_quota_is_shown_by_the_server_metrics_and_the_cli(
    claude_env: ClaudeEnv, serve_llm: Any, tmp_path: Any
) -> None:
    from typer.testing import CliRunner

    from llm_call.cli import app

    key = "quota-key-aaaaaaaaaaaa"
    served = serve_llm([Reply(text="hi", headers=warning(time.time()))], server={"api_keys": [key]})
    claude_env.use_subscription(served.upstream)
    answer = served.client(api_key=key).chat.completions.create(
        model="max/sonnet", messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.choices[0].message.content == "hi"
    import httpx

    assert httpx.get(served.url + "/v1/usage/quota").status_code == 401
    body = httpx.get(served.url + "/v1/usage/quota", headers={"Authorization": f"Bearer {key}"}).json()
    (account,) = body["accounts"]
    assert account["account"] == "default" and account["blocked"] is None and account["slowed"] is True
    five = account["windows"]["five_hour"]
    assert five["utilization"] == pytest.approx(0.93) and 3500 < five["resets_in_s"] <= 3600
    metrics = httpx.get(served.url + "/metrics", headers={"Authorization": f"Bearer {key}"}).text
    assert 'llm_call_claude_quota_utilization{account="default",window="five_hour"} 0.93' in metrics
    assert 'llm_call_claude_quota_status{account="default",window="five_hour"} 1.0' in metrics

    # another process reads it from the task store the server shares
    QUOTA.clear()
    store = str(tmp_path / "tasks.db")
    out = CliRunner().invoke(app, ["quota", "--tasks", store])
    assert out.exit_code == 0, out.output
    assert "five_hour" in out.output and "93.0%" in out.output and "seven_day" in out.output
    assert "overage: rejected (org_level_disabled)" in out.output
    from llm_call.cli._doctor import _quota

    check = _quota(served.settings)  # the doctor's quota line
    assert check.ok is True and "five_hour 93%" in check.detail and "slowed down" in check.detail


async def test_above_slowdown_at_max_tasks_run_one_at_a_time(
    claude_env: ClaudeEnv, managers: Callable[..., Awaitable[TaskManager]], use_settings: Callable[..., Any]
) -> None:
    use_settings(retry={"max_retries": 0}, claude={"slowdown_at": 0.9})
    now = time.time()
    first = Reply(text="first", headers=warning(now, util=0.95))
    slow_reply = Reply(text="later", headers=warning(now, util=0.96), latency=1.0, times=None)
    async with ScriptedLLMServer([first], default=slow_reply) as srv:
        claude_env.use_subscription(srv)
        assert (await llm_call.acall("max/sonnet", "learn the quota")).text == "first"
        mgr = await managers()
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, srv.in_flight)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            ids = [await mgr.submit({"model": "max/sonnet", "prompt": f"task {i}"}) for i in range(3)]
            for task_id in ids:
                assert (await result_of(mgr, task_id)).text == "later"
        finally:
            sampler.cancel()
        assert peak == 1  # route_limits allow 4 max/* tasks at once; the quota allowed one
        for task_id in ids:
            events = [e async for e in mgr.events(task_id)]
            slowdown = next(e for e in events if e.kind == "quota_slowdown")
            assert slowdown.data["utilization"] >= 0.95 and slowdown.data["concurrency"] == 1


async def test_a_call_waiting_for_a_slowdown_slot_keeps_its_timeout(
    claude_env: ClaudeEnv, use_settings: Callable[..., Any]
) -> None:
    """Above slowdown_at one max/* call runs at a time; another one that waits for it must still
    end at its own timeout, not whenever the running one (an agent, hours) is done."""
    use_settings(retry={"max_retries": 0}, claude={"slowdown_at": 0.9})
    script = [
        Reply(match_text="learn", text="first", headers=warning(time.time(), util=0.95)),
        Reply(match_text="long", fault=Fault.hang()),
    ]
    async with _closing_providers(), ScriptedLLMServer(script) as srv:
        claude_env.use_subscription(srv)
        assert (await llm_call.acall("max/sonnet", "learn the quota")).text == "first"
        long = asyncio.create_task(llm_call.acall("max/sonnet", "long one", retry=False))
        try:
            await _poll(lambda: _count(srv, 2), "the long call reaches the upstream")
            with pytest.raises(ProviderTimeout) as info:
                await asyncio.wait_for(llm_call.acall("max/sonnet", "short", timeout=1, retry=False), 20)
            assert "slowdown_at" in str(info.value)
        finally:
            long.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await long
        assert len(messages(srv)) == 2  # the short call never started a CLI


async def _count(srv: ScriptedLLMServer, n: int) -> bool:
    return len(messages(srv)) >= n

