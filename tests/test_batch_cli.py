"""``llm-call batch`` as a user runs it: a subprocess against the scripted server on 127.0.0.1.

Dry runs, exit codes, the progress display (plain lines when stderr is not a terminal, the rich
bar when forced), Ctrl-C (SIGINT) with finished results kept, and ``--resume`` completing the rest
without duplicate ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from llm_call.tasks import TaskManager
from llm_call.testing import Fault, Reply, ScriptedLLMServer

pytestmark = pytest.mark.timeout(90)

LLM_CALL_BIN = Path(sys.executable).with_name("llm-call")


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def env_for(srv: ScriptedLLMServer, tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        OPENAI_BASE_URL=srv.openai_base_url,
        OPENAI_API_KEY="test-key",
        LLM_CALL_TASKS=str(tmp_path / "tasks.db"),
        COLUMNS="120",
    )


async def start(*args: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(LLM_CALL_BIN), *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def run(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await start(*args, env=env, cwd=cwd)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def read_out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


async def test_dry_run_reports_every_problem_and_runs_nothing(tmp_path: Path) -> None:
    batch = write_lines(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "model": "openai/m", "prompt": "fine"},
            {"id": "b", "model": "nonsense", "prompt": "x"},
            {"id": "c", "model": "openai/m", "prompt": "x", "validation": ["regex:("]},
            {"id": "a", "model": "openai/m", "prompt": "dup", "validaton": ["json"]},
        ],
    )
    with (tmp_path / "in.jsonl").open("a") as fh:
        fh.write("{broken\n")
    async with ScriptedLLMServer([], default=Reply(text="ok", times=None)) as srv:
        env = env_for(srv, tmp_path)
        code, _out, err = await run("batch", str(batch), "--dry-run", env=env, cwd=tmp_path)
        code_run, _, err_run = await run("batch", str(batch), "-o", "out.jsonl", env=env, cwd=tmp_path)
        assert not srv.requests
    assert code == 2 and code_run == 2
    for needle in ("line 2: model 'nonsense'", "line 3: validation", "line 4: unknown key 'validaton'", "line 5: not valid JSON"):
        assert needle in err, err
    assert "4 problem(s)" in err and "nothing was run" in err
    assert err_run == err
    assert not (tmp_path / "out.jsonl").exists()


async def test_flags_are_checked(tmp_path: Path) -> None:
    batch = write_lines(tmp_path / "in.jsonl", [{"id": "a", "model": "openai/m", "prompt": "x"}])
    env = dict(os.environ)
    code, _, err = await run("batch", str(batch), env=env, cwd=tmp_path)
    assert code == 2 and "-o OUT.jsonl" in err
    code, _, err = await run("batch", str(batch), "-o", str(batch), env=env, cwd=tmp_path)
    assert code == 2 and "output file is the input file" in err
    code, _, err = await run("batch", str(batch), "-o", "o.jsonl", "--progress", "fancy", env=env, cwd=tmp_path)
    assert code == 2 and "--progress" in err
    code, _, err = await run("batch", "missing.jsonl", "--dry-run", env=env, cwd=tmp_path)
    assert code == 2 and "cannot read batch file" in err


async def test_all_passed_exits_zero_with_plain_progress_and_a_summary(tmp_path: Path) -> None:
    batch = write_lines(
        tmp_path / "in.jsonl",
        [{"id": f"q{i}", "model": "openai/m", "prompt": f"q{i}", "validation": ["contains:ok"]} for i in range(5)],
    )
    async with ScriptedLLMServer([], default=Reply(text="ok", times=None)) as srv:
        code, out, err = await run("batch", str(batch), "-o", "out.jsonl", env=env_for(srv, tmp_path), cwd=tmp_path)
    assert code == 0, out + err
    assert err.startswith("batch: 5 request(s) (openai: 5)")
    assert err.count(" passed (openai, ") == 5 and "[5/5]" in err
    assert "batch summary" in out and "all passed" in out and "NOT" not in out
    assert "│ openai │     5 │      5 │" in out
    assert len(read_out(tmp_path / "out.jsonl")) == 5


async def test_plain_progress_shows_a_line_that_passed_after_feedback(tmp_path: Path) -> None:
    batch = write_lines(
        tmp_path / "in.jsonl",
        [{"id": "retried", "model": "openai/m", "prompt": "say ok", "validation": ["contains:ok"], "max_attempts": 3}],
    )
    async with ScriptedLLMServer([Reply(text="nope"), Reply(text="ok")]) as srv:
        code, out, err = await run("batch", str(batch), "-o", "out.jsonl", env=env_for(srv, tmp_path), cwd=tmp_path)
    assert code == 0, out + err
    assert "retried passed (openai, " in err and ", 2 attempts, " in err
    assert "after feedback: contains:" in err


async def test_rich_progress_and_a_failed_line_exits_one(tmp_path: Path) -> None:
    batch = write_lines(
        tmp_path / "in.jsonl",
        [
            {"id": "good", "model": "openai/m", "prompt": "good"},
            {"id": "bad", "model": "openai/m", "prompt": "bad", "validation": ["contains:never"], "max_attempts": 2},
            {"id": "boom", "model": "openai/m", "prompt": "boom"},
        ],
    )
    script = [Reply(fault=Fault.http(400), match_text="boom", times=None)]
    async with ScriptedLLMServer(script, default=Reply(text="ok", times=None)) as srv:
        code, out, err = await run(
            "batch", str(batch), "-o", "out.jsonl", "--progress", "rich", env=env_for(srv, tmp_path), cwd=tmp_path
        )
    assert code == 1
    assert "running" in err and "failed" in err and "ETA" in err and "$0.0000" in err
    assert "line 2 bad: failed_validation ValidationExhausted" in out
    assert "line 3 boom: error ProviderHTTPError" in out
    assert "NOT all passed" in out
    statuses = {r["id"]: r["status"] for r in read_out(tmp_path / "out.jsonl")}
    assert statuses == {"good": "passed", "bad": "failed_validation", "boom": "error"}


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def _wait_for_lines(path: Path, n: int, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(45):
        while _count_lines(path) < n:
            assert proc.returncode is None, "the batch ended before it could be interrupted"
            await asyncio.sleep(0.05)


async def test_ctrl_c_keeps_finished_results_and_resume_completes_the_rest(tmp_path: Path) -> None:
    ids = [f"q{i:02d}" for i in range(24)]
    batch = write_lines(tmp_path / "in.jsonl", [{"id": i, "model": "openai/m", "prompt": f"question {i}"} for i in ids])
    out_file = tmp_path / "out.jsonl"
    async with ScriptedLLMServer([], default=Reply(text="ok", times=None, latency=0.3)) as srv:
        env = env_for(srv, tmp_path)
        proc = await start("batch", str(batch), "-o", str(out_file), "--concurrency", "3", env=env, cwd=tmp_path)
        await _wait_for_lines(out_file, 3, proc)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 45)
        assert proc.returncode == 130, out.decode() + err.decode()
        assert "stopping" in err.decode()
        assert "not run (interrupted); run again with --resume" in out.decode()

        first = read_out(out_file)
        assert 3 <= len(first) < len(ids)
        assert all(r["status"] == "passed" for r in first)
        async with TaskManager(tmp_path / "tasks.db", execute=False) as mgr:
            left = await mgr.list_tasks(limit=100)
        assert {t.status.value for t in left} <= {"succeeded", "cancelled"}, "nothing left queued or running"

        code, out2, err2 = await run("batch", str(batch), "-o", str(out_file), "--resume", env=env, cwd=tmp_path)
        asked = [r.last_user_text for r in srv.requests if r.path.endswith("/chat/completions")]

    assert code == 0, out2 + err2
    assert "resuming" not in err2  # plain display
    assert f"{len(first)} already in the output file" in err2
    final = read_out(out_file)
    assert sorted(r["id"] for r in final) == ids, "every id exactly once"
    assert final[: len(first)] == first
    # the finished lines were not asked again
    for r in first:
        assert asked.count(f"question {r['id']}") == 1
