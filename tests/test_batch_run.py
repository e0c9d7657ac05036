"""``run_batch`` in process: lines become tasks of a SQLite-backed task manager, against the
scripted OpenAI server on 127.0.0.1. Outcomes, the output file, resume, fail-fast, stop, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from llm_call import batch
from llm_call.batch import BatchItem, BatchReport, ItemResult, check_items, parse_line, run_batch
from llm_call.config import Settings
from llm_call.tasks import TaskManager
from llm_call.testing import Fault, Reply, ScriptedLLMServer
from llm_call.types import TaskStatus

pytestmark = pytest.mark.timeout(60)


class Observer:
    """Records what a display is told, and checks the output file is written as results arrive."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.begun: tuple[int, dict[str, int], int] | None = None
        self.running = 0
        self.max_running = 0
        self.results: list[ItemResult] = []
        self.lines_seen: list[int] = []

    def begin(self, total: int, routes: Mapping[str, int], skipped: int) -> None:
        self.begun = (total, dict(routes), skipped)

    def started(self, item: BatchItem) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def finished(self, item: BatchItem, result: ItemResult) -> None:
        self.running -= 1
        self.results.append(result)
        self.lines_seen.append(len(self.out.read_text().splitlines()))


@pytest.fixture
async def openai_env(monkeypatch: pytest.MonkeyPatch, use_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def install(srv: ScriptedLLMServer, **data: Any) -> Settings:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        data.setdefault("openai", {})["base_url"] = srv.openai_base_url
        data.setdefault("retry", {"max_retries": 0, "base_delay": 0})
        return use_settings(**data)

    return install


def items_of(lines: list[dict[str, Any]], settings: Settings) -> list[BatchItem]:
    items = [parse_line(line, n) for n, line in enumerate(lines, start=1)]
    assert check_items(items, settings) == []
    return items


def read_out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


async def statuses_in_store(store: Path, task_ids: list[str]) -> dict[str, TaskStatus]:
    async with TaskManager(store, execute=False) as mgr:
        return {t: (await mgr.status(t)).status for t in task_ids}


async def test_every_outcome_through_the_task_manager(openai_env: Any, tmp_path: Path) -> None:
    script = [
        Reply(text="4", match_text="2 + 2", times=None),
        Reply(text="not json", match_text="give json", times=None),
        Reply(fault=Fault.http(400), match_text="bad request", times=None),
        Reply(text="wrong", match_text="needs a human", times=None),
    ]
    async with ScriptedLLMServer(script, default=Reply(text="ok", times=None)) as srv:
        settings = openai_env(srv)
        items = items_of(
            [
                {"id": "pass", "model": "openai/m", "prompt": "2 + 2?", "validation": ["contains:4"]},
                {"id": "fail", "model": "openai/m", "prompt": "give json", "validation": ["json"], "max_attempts": 2},
                {"id": "err", "model": "openai/m", "prompt": "bad request"},
                {"id": "human", "model": "openai/m", "prompt": "needs a human", "validation": ["contains:right"],
                 "max_attempts": 3, "human_after": 1},
            ],
            settings,
        )
        out = tmp_path / "out.jsonl"
        observer = Observer(out)
        report = await run_batch(items, out, concurrency=4, observer=observer, store=tmp_path / "tasks.db", settings=settings)

    by_id = {r["id"]: r for r in read_out(out)}
    assert {k: v["status"] for k, v in by_id.items()} == {
        "pass": "passed", "fail": "failed_validation", "err": "error", "human": "needs_review"
    }
    assert by_id["pass"]["text"] == "4" and by_id["pass"]["error_type"] is None
    assert by_id["fail"]["error_type"] == "ValidationExhausted" and len(by_id["fail"]["attempts"]) == 2
    assert by_id["err"]["error_type"] == "ProviderHTTPError" and "400" in by_id["err"]["error_message"]
    assert by_id["human"]["error_type"] == "HumanReviewNeeded"
    assert report.exit_code == 1 and not report.all_passed and report.ran == 4 and not report.not_run
    assert [r.id for r in report.results] == ["pass", "fail", "err", "human"]
    # each result was in the file when the display heard of it
    assert observer.lines_seen == [1, 2, 3, 4]
    assert observer.begun == (4, {"openai": 4}, 0)
    # they ran as tasks: the store has each one, in the matching state
    stored = await statuses_in_store(tmp_path / "tasks.db", [r["task_id"] for r in by_id.values()])
    assert sorted(s.value for s in stored.values()) == ["failed", "failed", "needs_review", "succeeded"]


async def test_resume_skips_ids_already_written_and_appends(openai_env: Any, tmp_path: Path) -> None:
    async with ScriptedLLMServer([], default=Reply(text="ok", times=None)) as srv:
        settings = openai_env(srv)
        items = items_of([{"id": f"q{i}", "model": "openai/m", "prompt": f"question {i}"} for i in range(6)], settings)
        out = tmp_path / "out.jsonl"
        earlier = [ItemResult("q1", "passed", route="openai", text="old"), ItemResult("q4", "error", route="openai")]
        out.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in earlier) + '{"id": "q5", "stat')
        observer = Observer(out)
        report = await run_batch(items, out, resume=True, observer=observer, store=tmp_path / "t.db", settings=settings)
        asked = sorted(r.last_user_text for r in srv.requests if r.path.endswith("/chat/completions"))

    assert asked == ["question 0", "question 2", "question 3", "question 5"]
    lines = read_out(out)
    assert sorted(r["id"] for r in lines) == [f"q{i}" for i in range(6)]
    assert next(r for r in lines if r["id"] == "q1")["text"] == "old"
    assert report.skipped == 2 and report.ran == 4
    assert [r.id for r in report.results] == [f"q{i}" for i in range(6)]
    assert report.exit_code == 1  # q4 was an error in the earlier run
    assert observer.begun == (4, {"openai": 4}, 2)


async def test_without_resume_the_output_is_replaced(openai_env: Any, tmp_path: Path) -> None:
    async with ScriptedLLMServer([], default=Reply(text="ok", times=None)) as srv:
        settings = openai_env(srv)
        items = items_of([{"id": "a", "model": "openai/m", "prompt": "hi"}], settings)
        out = tmp_path / "out.jsonl"
        out.write_text(json.dumps(ItemResult("a", "error").to_dict()) + "\n" + json.dumps(ItemResult("zz", "passed").to_dict()) + "\n")
        report = await batch.run_batch(items, out, store=tmp_path / "t.db", settings=settings)  # the public name
    assert [r["id"] for r in read_out(out)] == ["a"]
    assert report.exit_code == 0 and report.all_passed


async def test_fail_fast_stops_and_cancels_what_is_in_flight(openai_env: Any, tmp_path: Path) -> None:
    script = [
        Reply(fault=Fault.http(400), match_text="first", times=None),
        Reply(fault=Fault.hang(), match_text="slow", times=None),
    ]
    async with ScriptedLLMServer(script, default=Reply(text="ok", times=None)) as srv:
        settings = openai_env(srv)
        lines = [{"id": "first", "model": "openai/m", "prompt": "first"}]
        lines += [{"id": f"s{i}", "model": "openai/m", "prompt": f"slow {i}"} for i in range(6)]
        items = items_of(lines, settings)
        out = tmp_path / "out.jsonl"
        report = await run_batch(items, out, concurrency=3, fail_fast=True, store=tmp_path / "t.db", settings=settings)

    assert [r["id"] for r in read_out(out)] == ["first"]
    assert report.stopped_early and not report.interrupted and report.exit_code == 1
    assert report.not_run == [f"s{i}" for i in range(6)]
    async with TaskManager(tmp_path / "t.db", execute=False) as mgr:
        tasks = await mgr.list_tasks(limit=50)
    # the two slow lines that were in flight were cancelled in the store; nothing is left to run
    assert sorted(t.status.value for t in tasks) == ["cancelled", "cancelled", "failed"]


async def test_stop_event_interrupts_cleanly(openai_env: Any, tmp_path: Path) -> None:
    script = [Reply(fault=Fault.hang(), match_text="slow", times=None)]
    async with ScriptedLLMServer(script, default=Reply(text="ok", times=None)) as srv:
        settings = openai_env(srv)
        lines = [{"id": "quick", "model": "openai/m", "prompt": "quick"}]
        lines += [{"id": f"s{i}", "model": "openai/m", "prompt": f"slow {i}"} for i in range(4)]
        items = items_of(lines, settings)
        out = tmp_path / "out.jsonl"
        stop = asyncio.Event()

        class StopAfterFirst(Observer):
            def finished(self, item: BatchItem, result: ItemResult) -> None:
                super().finished(item, result)
                stop.set()

        report = await run_batch(items, out, concurrency=3, observer=StopAfterFirst(out), stop=stop,
                                 store=tmp_path / "t.db", settings=settings)

    assert [r["id"] for r in read_out(out)] == ["quick"]
    assert report.interrupted and report.exit_code == 130
    assert report.not_run == [f"s{i}" for i in range(4)]
    async with TaskManager(tmp_path / "t.db", execute=False) as mgr:
        counts = {t.status.value for t in await mgr.list_tasks(limit=50)}
    assert counts <= {"succeeded", "cancelled"}


async def test_concurrency_and_route_limits_bound_what_runs(openai_env: Any, tmp_path: Path) -> None:
    async with ScriptedLLMServer([], default=Reply(text="ok", times=None, latency=0.02)) as srv:
        settings = openai_env(srv, tasks={"route_limits": {"openai/*": 2}})
        items = items_of([{"id": f"q{i}", "model": "openai/m", "prompt": f"q{i}"} for i in range(12)], settings)
        out = tmp_path / "out.jsonl"
        observer = Observer(out)
        report = await run_batch(items, out, concurrency=8, observer=observer, store=tmp_path / "t.db", settings=settings)
    assert report.exit_code == 0
    assert 1 <= observer.max_running <= 2

    async with ScriptedLLMServer([], default=Reply(text="ok", times=None, latency=0.02)) as srv:
        settings = openai_env(srv)
        items = items_of([{"id": f"q{i}", "model": "openai/m", "prompt": f"q{i}"} for i in range(12)], settings)
        out = tmp_path / "out2.jsonl"
        observer = Observer(out)
        report = await run_batch(items, out, concurrency=3, observer=observer, store=tmp_path / "t2.db", settings=settings)
    assert report.exit_code == 0
    assert 1 <= observer.max_running <= 3


async def test_original_llm_config_lines_run(openai_env: Any, tmp_path: Path) -> None:
    script = [
        Reply(text='{"name": "Ada"}', match_text="person", times=1),
        Reply(text='{"name": "Ada", "city": "London"}', match_text="person", times=None),
    ]
    async with ScriptedLLMServer(script, default=Reply(text="ok", times=None)) as srv:
        settings = openai_env(srv)
        config = {
            "model": "openai/m",
            "messages": [{"role": "user", "content": "A person as JSON."}],
            "response_format": {"type": "json_object"},
            "validation": [{"type": "field_present", "params": {"field_name": "city"}}],
            "retry_config": {"max_attempts": 2},
        }
        items = items_of([{"id": "legacy", "llm_config": config}], settings)
        out = tmp_path / "out.jsonl"
        report: BatchReport = await run_batch(items, out, store=tmp_path / "t.db", settings=settings)
        first = next(r for r in srv.requests if r.path.endswith("/chat/completions"))
    [result] = read_out(out)
    assert result["status"] == "passed" and result["parsed"] == {"name": "Ada", "city": "London"}
    assert report.exit_code == 0
    assert first.body["response_format"] == {"type": "json_object"}
    assert first.system == "You must respond with a valid JSON object."


async def test_another_worker_on_the_same_store_may_help(openai_env: Any, tmp_path: Path) -> None:
    store = tmp_path / "shared.db"
    async with ScriptedLLMServer([], default=Reply(text="ok", times=None, latency=0.1)) as srv:
        helper_settings = openai_env(srv)
        async with TaskManager(store, settings=helper_settings, claims="all", kind="worker", poll_interval=0.05) as helper:
            await helper.start()
            # this batch runs one openai task at a time itself; the helper takes what waits
            settings = openai_env(srv, tasks={"route_limits": {"openai/*": 1}})
            items = items_of([{"id": f"q{i}", "model": "openai/m", "prompt": f"q{i}"} for i in range(10)], settings)
            out = tmp_path / "out.jsonl"
            report = await run_batch(items, out, concurrency=4, store=store, settings=settings)
            helper_id = helper.worker_id
    assert report.exit_code == 0
    results = read_out(out)
    assert sorted(r["id"] for r in results) == sorted(f"q{i}" for i in range(10))
    async with TaskManager(store, execute=False) as mgr:
        workers = [(await mgr.status(r["task_id"])).worker for r in results]
    assert helper_id in workers, "the helper ran some lines"
    assert any(w != helper_id for w in workers), "the batch ran some itself"
