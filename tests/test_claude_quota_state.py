"""The quota state without a CLI: parsing ``rate_limit_event`` lines, the decisions taken on
them, and the state shared through the task store (SQLite file and Redis) so that a second
process schedules on what the first one learnt. The real-CLI tests are in test_claude_quota.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_call.errors import QuotaExhausted, error_from_dict, error_to_dict
from llm_call.providers.claude_quota import (
    QUOTA,
    QuotaBook,
    QuotaState,
    block_of,
    parse_rate_limit_info,
    quota_report,
    record_rate_limit_event,
    slow,
)
from llm_call.tasks import TaskManager, open_store
from llm_call.types import TaskStatus
from support.redis_server import RedisServer, redis_server
from support.tasks_env import openai_server

__all__ = ["redis_server"]

NOW = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _fresh_quota() -> Iterator[None]:
    QUOTA.clear()
    yield
    QUOTA.clear()


def info(status: str = "allowed", **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "resetsAt": NOW + 3600,
        "rateLimitType": "five_hour",
        "overageStatus": "rejected",
        "overageDisabledReason": "org_level_disabled",
        "isUsingOverage": False,
        "unifiedWindows": {
            "five_hour": {"utilization": 0.5, "resetsAt": NOW + 3600, "status": status},
            "seven_day": {"utilization": 0.2, "resetsAt": NOW + 86400, "status": "allowed"},
        },
        **extra,
    }


def test_a_line_without_a_window_keeps_the_last_reading_of_it() -> None:
    first = parse_rate_limit_info(info(), "me", now=NOW)
    line = info("allowed_warning", unifiedWindows={"five_hour": {"utilization": 0.91, "resetsAt": NOW + 3000, "status": "allowed_warning"}})
    second = parse_rate_limit_info(line, "me", first, now=NOW + 1)
    assert second.windows["five_hour"].utilization == 0.91
    assert second.windows["seven_day"].utilization == 0.2  # not in the line: kept
    assert QuotaState.from_dict(second.to_dict()) == second


def test_record_takes_the_raw_stream_json_line_or_its_info() -> None:
    line = {"type": "rate_limit_event", "rate_limit_info": info("rejected"), "uuid": "u", "session_id": "s"}
    state = record_rate_limit_event(line, "pool")
    assert state is not None and QUOTA.get("pool") is state and state.status == "rejected"
    assert record_rate_limit_event({"type": "assistant", "message": {}}, "pool") is None
    assert record_rate_limit_event(info(), "sdk") is not None  # RateLimitInfo.raw


@pytest.mark.parametrize(
    ("status", "overage", "allow_overage", "expected"),
    [
        ("allowed_warning", "rejected", True, None),
        ("rejected", "rejected", True, ("five_hour", "rejected")),
        ("rejected", "allowed", True, None),  # extra usage pays for the next call
        ("rejected", "allowed", False, ("five_hour", "overage")),
    ],
)
def test_block_decisions(status: str, overage: str, allow_overage: bool, expected: tuple[str, str] | None) -> None:
    state = parse_rate_limit_info(info(status, overageStatus=overage), "me", now=NOW)
    block = block_of(state, allow_overage=allow_overage, now=NOW)
    assert (None if block is None else (block.window, block.reason)) == expected
    if block is not None:
        assert block.until == NOW + 3600
        assert block_of(state, allow_overage=allow_overage, now=NOW + 3601) is None  # after the reset


def test_a_window_rejected_while_the_account_is_served_blocks_nothing() -> None:
    """Only the top-level status refuses calls; a window may run past its cap (the CLI's words)."""
    line = info("allowed_warning")
    line["unifiedWindows"]["five_hour"] = {"utilization": 1.02, "resetsAt": NOW + 3600, "status": "rejected"}
    state = parse_rate_limit_info(line, "me", now=NOW)
    assert block_of(state, allow_overage=False, now=NOW) is None
    # refused again later: that window and a later-resetting rejected one both hold the account
    line = info("rejected")
    line["unifiedWindows"]["seven_day"] = {"utilization": 1.0, "resetsAt": NOW + 86400, "status": "rejected"}
    block = block_of(parse_rate_limit_info(line, "me", state, now=NOW + 5), allow_overage=False, now=NOW + 5)
    assert block is not None and block.until == NOW + 86400


def test_a_model_window_blocks_that_model_only() -> None:
    line = info("rejected", rateLimitType="seven_day_opus", resetsAt=NOW + 86400)
    line["unifiedWindows"]["five_hour"]["status"] = "allowed"
    state = parse_rate_limit_info(line, "me", now=NOW)
    # a Sonnet answer afterwards says "allowed": it does not lift the Opus week
    later = parse_rate_limit_info(info("allowed"), "me", state, now=NOW + 5)
    for st in (state, later):
        for model in ("opus", "claude-opus-4-5", None):  # None: any model (what is held, shown)
            block = block_of(st, allow_overage=True, now=NOW + 5, model=model)
            assert block is not None and block.window == "seven_day_opus" and block.until == NOW + 86400
        assert block_of(st, allow_overage=True, now=NOW + 5, model="sonnet") is None
        assert block_of(st, allow_overage=True, now=NOW + 5, model="haiku") is None
        assert block_of(st, allow_overage=True, now=NOW + 86401, model="opus") is None


def test_overage_in_use_is_refused_before_the_next_call_when_not_allowed() -> None:
    state = parse_rate_limit_info(info("allowed", isUsingOverage=True, overageStatus="allowed"), "me", now=NOW)
    assert block_of(state, allow_overage=True, now=NOW) is None
    block = block_of(state, allow_overage=False, now=NOW)
    assert block is not None and block.reason == "overage"


def test_slowdown_counts_only_windows_that_have_not_reset() -> None:
    line = info(unifiedWindows={"seven_day": {"utilization": 0.97, "resetsAt": NOW + 10, "status": "allowed_warning"}})
    state = parse_rate_limit_info(line, "me", now=NOW)
    assert slow(state, 0.9, now=NOW) == 0.97
    assert slow(state, 0.9, now=NOW + 11) is None
    assert slow(state, 1.0, now=NOW) is None  # 1.0 turns it off


def test_quota_exhausted_survives_the_task_store() -> None:
    err = QuotaExhausted("used up", provider="max", model="sonnet", retry_after=12.0, window="five_hour", resets_at=NOW)
    back = error_from_dict(error_to_dict(err))
    assert isinstance(back, QuotaExhausted) and back.window == "five_hour" and back.retry_after == 12.0


async def _shared_between_processes(location: str) -> None:
    writer_store, reader_store = await open_store(location), await open_store(location)
    try:
        writer, reader = QuotaBook(), QuotaBook()
        writer.attach(writer_store)
        writer.observe(info("allowed_warning"), "team")
        await writer.flush()
        states = await reader.refresh(reader_store)
        assert states["team"].windows["five_hour"].utilization == 0.5
        assert states["team"].overage_disabled_reason == "org_level_disabled"
    finally:
        await writer_store.close()
        await reader_store.close()


async def test_state_is_shared_through_sqlite(tmp_path: Path) -> None:
    await _shared_between_processes(str(tmp_path / "tasks.db"))


async def test_state_is_shared_through_redis(redis_server: RedisServer) -> None:
    await _shared_between_processes(f"{redis_server.url}?prefix=quota")


async def test_a_worker_holds_max_tasks_while_another_process_saw_the_window_used_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_settings: Any
) -> None:
    use_settings(retry={"max_retries": 0}, tasks={"heartbeat_s": 0.2})
    location = str(tmp_path / "tasks.db")
    other = await open_store(location)  # another process learnt the quota
    reset = time.time() + 3600
    line = info("rejected", resetsAt=reset, unifiedWindows={"five_hour": {"utilization": 1.0, "resetsAt": reset, "status": "rejected"}})
    await other.put_meta("claude_quota:default", parse_rate_limit_info(line, "default").to_dict())
    await other.close()
    async with openai_server(monkeypatch) as srv:
        async with TaskManager(location, claims="all") as mgr:
            held = await mgr.submit({"model": "max/sonnet", "prompt": "wait for me"}, reserve=False)
            other_route = await mgr.submit({"model": "openai/x", "prompt": "run me"}, reserve=False)
            async with asyncio.timeout(30):
                await mgr.wait(other_route)
            assert (await mgr.status(other_route)).status is TaskStatus.SUCCEEDED
            assert (await mgr.status(held)).status is TaskStatus.QUEUED  # no CLI was started for it
            assert len(srv.requests) == 1


def test_a_window_past_its_reset_is_shown_as_reset_not_as_its_last_reading(tmp_path: Path) -> None:
    """The state keeps the last reading until the next call reports a new one; once a window's
    reset has passed, what shows it (/v1/usage/quota, the gauges, llm-call quota and doctor)
    must not go on saying "rejected, 100%"."""
    from llm_call.cli._quota import quota_line
    from llm_call.server._metrics import ServerMetrics

    now = time.time()
    line = info("rejected", resetsAt=now - 5)
    line["unifiedWindows"] = {
        "five_hour": {"utilization": 1.0, "resetsAt": now - 5, "status": "rejected"},
        "seven_day": {"utilization": 0.4, "resetsAt": now + 86400, "status": "allowed"},
    }
    state = parse_rate_limit_info(line, "me", now=now - 60)
    (row,) = quota_report({"me": state}, True, 0.9)
    assert row["reset"] is True and row["blocked"] is None
    assert row["windows"]["five_hour"]["reset"] is True and row["windows"]["seven_day"]["reset"] is False
    metrics = ServerMetrics()
    metrics.set_quota([row])
    text = metrics.render().decode()
    assert 'llm_call_claude_quota_status{account="me",window="overall"} 0.0' in text
    assert 'llm_call_claude_quota_status{account="me",window="five_hour"} 0.0' in text
    assert 'llm_call_claude_quota_utilization{account="me",window="five_hour"} 0.0' in text
    assert 'llm_call_claude_quota_utilization{account="me",window="seven_day"} 0.4' in text
    ok, detail = quota_line([row])
    assert ok is True and "five_hour reset" in detail and "100%" not in detail and "seven_day 40%" in detail

    from typer.testing import CliRunner

    from llm_call.cli import app
    from llm_call.providers.claude_quota import META_PREFIX

    async def store_it() -> None:
        store = await open_store(str(tmp_path / "tasks.db"))
        try:
            await store.put_meta(META_PREFIX + "me", state.to_dict())  # type: ignore[attr-defined]
        finally:
            await store.close()

    asyncio.run(store_it())
    QUOTA.clear()
    out = CliRunner().invoke(app, ["quota", "--tasks", str(tmp_path / "tasks.db")])
    assert out.exit_code == 0, out.output
    five = next(line for line in out.output.splitlines() if "five_hour" in line)
    assert "reset (was rejected)" in five and "100" not in five


def test_a_used_up_model_week_holds_the_routes_of_that_family_only() -> None:
    """What the dispatcher holds matches what the provider refuses (a model name of either
    case), so a held task is never claimed just to be refused and requeued again."""
    import fnmatch

    from llm_call.config import ClaudeConfig
    from llm_call.tasks._quota import QuotaScheduler

    line = info("rejected", rateLimitType="seven_day_opus", resetsAt=time.time() + 86400)
    line["unifiedWindows"]["five_hour"]["status"] = "allowed"
    line["unifiedWindows"]["five_hour"]["resetsAt"] = time.time() + 3600
    QUOTA.observe(line, "default")
    (row,) = quota_report(QUOTA.all(), True, 0.9)  # /v1/usage/quota, llm-call quota
    assert row["blocked"]["window"] == "seven_day_opus" and row["blocked"]["models"] == "opus"
    scheduler = QuotaScheduler()
    scheduler.cfg = ClaudeConfig(default_model="opus")
    held = scheduler.held()
    for route, is_held in [("max/opus", True), ("max/Claude-OPUS-4", True), ("max", True), ("max/sonnet", False), ("max/haiku", False)]:
        assert any(fnmatch.fnmatchcase(route, g) for g in held) is is_held, route
        model = route.split("/", 1)[1] if "/" in route else "opus"
        assert (block_of(QUOTA.get("default"), allow_overage=True, model=model) is not None) is is_held, route
        assert (scheduler.waiting_of(route) is not None) is is_held, route
    scheduler.cfg = ClaudeConfig(default_model="sonnet", on_quota_exhausted="fallback", quota_fallback="openai/x")
    assert scheduler.held() == []  # fallback and fail hold nothing
