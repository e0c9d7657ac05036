"""``llm-call ask --background``, ``llm-call worker`` and ``llm-call tasks ...`` as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_call.testing import Fault, Reply, ScriptedLLMServer
from support.tasks_env import MODEL, sync_eventually

LLM_CALL = [str(Path(sys.executable).parent / "llm-call")]


@pytest.fixture
def srv() -> Iterator[ScriptedLLMServer]:
    script = [Reply(text="forty-two", match_text="answer"), Reply(fault=Fault.http(400), match_text="broken")]
    with ScriptedLLMServer(script, default=Reply(text="ok", times=None)).running() as server:
        yield server


@pytest.fixture
def env(srv: ScriptedLLMServer, tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_CALL_", "OPENAI_", "ANTHROPIC_"))}
    e.update(
        OPENAI_BASE_URL=srv.openai_base_url,
        OPENAI_API_KEY="test",
        XDG_DATA_HOME=str(tmp_path / "xdg"),
        LLM_CALL_CONFIG=str(tmp_path / "llm_call.toml"),
    )
    (tmp_path / "llm_call.toml").write_text("[tasks]\nheartbeat_s = 0.2\n\n[retry]\nmax_retries = 0\n")
    return e


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLM_CALL, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_ask_background_then_worker_burst_then_wait(env: dict[str, str], tmp_path: Path, srv: ScriptedLLMServer) -> None:
    db = str(tmp_path / "cli.db")
    sub = run(env, "ask", "--background", "--tasks", db, "-m", MODEL, "the answer?")
    assert sub.returncode == 0, sub.stderr
    task_id = sub.stdout.strip()
    assert task_id.startswith("tk_")
    assert "no worker or server is running" in sub.stderr
    listed = run(env, "tasks", "list", "--tasks", db, "--json")
    assert [t["status"] for t in json.loads(listed.stdout)] == ["queued"]
    assert srv.requests == []  # nothing runs it until a worker does

    worker = run(env, "worker", "--burst", "--tasks", db, "--concurrency", "4")
    assert worker.returncode == 0, worker.stderr
    assert '"succeeded": 1' in worker.stderr

    waited = run(env, "tasks", "wait", task_id, "--tasks", db)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == "forty-two"
    assert "finished" in waited.stderr  # the event display
    shown = json.loads(run(env, "tasks", "show", task_id, "--tasks", db).stdout)
    assert shown["status"] == "succeeded" and shown["result"]["text"] == "forty-two"
    events = run(env, "tasks", "events", task_id, "--tasks", db, "--json")
    assert [json.loads(line)["kind"] for line in events.stdout.splitlines()] == ["queued", "started", "attempt", "finished"]


def test_failed_and_cancelled_tasks_exit_1(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "LLM_CALL_TASKS": str(tmp_path / "env.db")}  # the store from the environment
    broken = run(env, "ask", "--background", "-m", MODEL, "broken").stdout.strip()
    doomed = run(env, "ask", "--background", "-m", MODEL, "never runs").stdout.strip()
    cancel = run(env, "tasks", "cancel", doomed)
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout
    assert run(env, "worker", "--burst").returncode == 0
    failed = run(env, "tasks", "wait", broken, "--quiet")
    assert failed.returncode == 1 and "ProviderHTTPError" in failed.stderr
    cancelled = run(env, "tasks", "result", doomed)
    assert cancelled.returncode == 1 and "TaskCancelled" in cancelled.stderr
    again = run(env, "tasks", "cancel", broken)
    assert again.returncode == 1 and "already failed" in again.stderr
    missing = run(env, "tasks", "show", "tk_nope")
    assert missing.returncode == 1 and "TaskNotFound" in missing.stderr
    assert run(env, "tasks", "list", "--status", "bogus").returncode == 2


def test_live_worker_and_wait_in_other_processes(env: dict[str, str], tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    proc = subprocess.Popen([*LLM_CALL, "worker", "--tasks", db], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        sync_eventually(lambda: any("running tasks from" in line for line in lines), what="worker ready")
        sub = run(env, "ask", "--background", "--tasks", db, "-m", MODEL, "hello")
        assert sub.returncode == 0 and "no worker" not in sub.stderr
        waited = run(env, "tasks", "wait", sub.stdout.strip(), "--tasks", db)
        assert waited.returncode == 0 and waited.stdout.strip() == "ok"
        assert "started" in waited.stderr and "attempt" in waited.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=5)
    assert any("worker stopped" in line for line in lines)


def test_review_from_the_cli(
    env: dict[str, str], tmp_path: Path, srv: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from llm_call.config import Settings
    from llm_call.tasks import TaskManager

    db = tmp_path / "review.db"
    srv.add(Reply(text="nope"), Reply(text="7"))

    async def make_review_task() -> str:
        settings = Settings.model_validate({"retry": {"max_retries": 0}})
        async with TaskManager(db, settings=settings) as mgr:
            task_id = await mgr.submit(
                {"model": MODEL, "prompt": "digit?", "validate": ["regex:^\\d$"], "max_attempts": 1, "human_after": 1}
            )
            await mgr.wait(task_id, timeout=30)
            return task_id

    monkeypatch.setenv("OPENAI_BASE_URL", env["OPENAI_BASE_URL"])
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    task_id = asyncio.run(make_review_task())
    pending = run(env, "tasks", "result", task_id, "--tasks", str(db))
    assert pending.returncode == 1 and "HumanReviewNeeded" in pending.stderr and "tasks review" in pending.stderr
    assert run(env, "tasks", "review", task_id, "--tasks", str(db)).returncode == 2
    replied = run(env, "tasks", "review", task_id, "--reply", "One digit only.", "--tasks", str(db))
    assert replied.returncode == 0 and "queued" in replied.stdout
    assert run(env, "worker", "--burst", "--tasks", str(db)).returncode == 0
    done = run(env, "tasks", "result", task_id, "--tasks", str(db))
    assert done.returncode == 0 and done.stdout.strip() == "7"


def test_unusable_task_store_is_a_clear_error_at_start(env: dict[str, str], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"\x00garbage" * 1000)
    for cmd in (["worker", "--burst"], ["tasks", "list"], ["ask", "--background", "-m", MODEL, "x"]):
        res = run(env, *cmd, "--tasks", str(corrupt))
        assert res.returncode == 2, (cmd, res.stderr)
        assert "cannot be used" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "afile").write_text("")
    res = run(env, "worker", "--burst", "--tasks", str(tmp_path / "afile" / "x.db"))
    assert res.returncode == 2 and "cannot create directory" in res.stderr
