"""The eight essential cases (examples/essential.jsonl), offline and end to end.

``llm-call batch`` runs as a subprocess with ``examples/llm_call.toml``: the ``max/*`` aliases go
through the real Claude Code CLI (bundled with claude-agent-sdk) to the scripted server's
Anthropic API, ``openai/*`` to its OpenAI API, and the file case through the real MCP files server
(the example names the public ``@modelcontextprotocol/server-filesystem`` package; the test points
the same ``files`` server name at ``tests/support/mcp_files_server.py``, which has the same
``write_file`` tool). The JSON case is scripted to keep failing validation: it must be reported as
``failed_validation`` and make the exit code 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from llm_call.testing import Reply, ScriptedLLMServer, ToolCall
from support.claude_env import ClaudeEnv, claude_env

__all__ = ["claude_env"]

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
LLM_CALL_BIN = Path(sys.executable).with_name("llm-call")

EXPECTED = {
    "simple_question": "passed",
    "messages_format": "passed",
    "system_prompt": "passed",
    "code_with_agent_validation": "passed",
    "mcp_file_operations": "passed",
    "json_structured": "failed_validation",
    "openai_compatible": "passed",
    "validation_retry": "passed",
}

CODE = "```python\ndef add(a, b):\n    return a + b\n```"
VERDICT = '{"validation_passed": true, "explanation": "add(a, b) returns a + b", "details": {}}'


def script() -> list[Reply]:
    """Matched replies, most specific first (the judge's prompt also contains the code)."""
    return [
        Reply(text="Paris is the capital of France.", match_text="capital of France", times=None),
        Reply(text="Green.", match_text="favourite colour", times=None),
        Reply(text="Arr, ahoy there, matey!", match_text="Greet me", times=None),
        Reply(text=VERDICT, match_text="Review this Python code", times=None),
        Reply(text=CODE, match_text="Write a Python function add", times=None),
        Reply(
            tool_calls=[ToolCall("mcp__files__write_file", {"path": "essential_test.txt", "content": "Hello from llm_call."})],
            match_text="essential_test.txt",
        ),
        Reply(text="done", match_text="essential_test.txt", times=None),
        # never has a city: fails field_present on every attempt
        Reply(text='{"name": "Ada Lovelace", "age": 36}', match_text="fictional person", times=None),
        Reply(text="2 + 2 = 4", match_text="What is 2 + 2?", times=None),
        Reply(text="The sky is very blue today", match_text="exactly 3 words"),
        Reply(text="Blue endless sky", match_text="exactly 3 words", times=None),
    ]


def essential_lines(env: ClaudeEnv) -> list[dict[str, Any]]:
    lines = [json.loads(raw) for raw in (EXAMPLES / "essential.jsonl").read_text().splitlines() if raw.strip()]
    for line in lines:
        if line["id"] == "mcp_file_operations":
            assert set(line["mcp_config"]["mcpServers"]) == {"files"}
            line["mcp_config"] = env.mcp_files("files")
    return lines


async def run_cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 200) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(LLM_CALL_BIN),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for raw in path.read_text().splitlines():
        data = json.loads(raw)
        assert data["id"] not in results, f"duplicate id {data['id']}"
        results[data["id"]] = data
    return results


def test_examples_cover_the_eight_cases_and_check_offline() -> None:
    lines = [json.loads(raw) for raw in (EXAMPLES / "essential.jsonl").read_text().splitlines() if raw.strip()]
    assert [line["id"] for line in lines] == list(EXPECTED)
    code = next(line for line in lines if line["id"] == "code_with_agent_validation")
    assert "{CODE_TO_VALIDATE}" in json.dumps(code["validation"])
    toml = (EXAMPLES / "llm_call.toml").read_text()
    for alias in ("max/text-general", "max/code-expert", "max/claude-mcp-agent", "max/json-expert"):
        assert f'[aliases."{alias}"]' in toml


async def test_dry_run_of_the_examples(tmp_path: Path) -> None:
    code, out, err = await run_cli(
        "--config", str(EXAMPLES / "llm_call.toml"), "batch", str(EXAMPLES / "essential.jsonl"), "--dry-run",
        cwd=tmp_path, env=dict(os.environ),
    )
    assert code == 0, err
    assert "8 request(s) OK (max: 6, openai: 2)" in out


async def test_essential_suite_end_to_end(claude_env: ClaudeEnv, tmp_path: Path) -> None:
    batch_file = tmp_path / "essential.jsonl"
    batch_file.write_text("".join(json.dumps(line) + "\n" for line in essential_lines(claude_env)))
    out_file = tmp_path / "out.jsonl"
    async with ScriptedLLMServer(script(), default=Reply(text="ok", times=None)) as srv:
        claude_env.use_server(srv)
        env = dict(os.environ, OPENAI_BASE_URL=srv.openai_base_url, OPENAI_API_KEY="test-key")
        code, out, err = await run_cli(
            "--config", str(EXAMPLES / "llm_call.toml"),
            "batch", str(batch_file), "-o", str(out_file), "--concurrency", "8",
            cwd=tmp_path, env=env,
        )
        requests = list(srv.requests)

    results = read_results(out_file)
    assert {k: v["status"] for k, v in results.items()} == EXPECTED, err
    assert code == 1, "a failed case must make the exit code non-zero"
    assert "NOT all passed" in out and "json_structured: failed_validation" in out

    for case_id, result in results.items():
        assert result["route"] == ("openai" if case_id in ("openai_compatible", "validation_retry") else "max")
        assert result["attempts"], case_id
        assert result["latency_s"] is not None and result["latency_s"] >= 0
        if result["status"] == "passed":
            assert result["text"] and result["error_type"] is None
        else:
            assert result["text"] is None and result["error_type"] == "ValidationExhausted"

    assert "Paris" in results["simple_question"]["text"]
    assert results["messages_format"]["text"] == "Green."
    assert results["system_prompt"]["text"].startswith("Arr")
    # the judge ran, on the max/* route, and approved
    code_attempts = results["code_with_agent_validation"]["attempts"]
    assert [(a["kind"], a["ok"]) for a in code_attempts] == [("answer", True), ("judge", True)]
    assert (tmp_path / "essential_test.txt").read_text() == "Hello from llm_call."
    assert results["mcp_file_operations"]["text"] == "done"
    json_attempts = [a for a in results["json_structured"]["attempts"] if a["kind"] == "answer"]
    assert len(json_attempts) == 2 and not any(a["ok"] for a in json_attempts)
    assert "city" in json_attempts[-1]["feedback"]
    assert results["openai_compatible"]["text"] == "2 + 2 = 4"
    retry = [a for a in results["validation_retry"]["attempts"] if a["kind"] == "answer"]
    assert [a["ok"] for a in retry] == [False, True]
    assert results["validation_retry"]["text"] == "Blue endless sky"

    anthropic = [r for r in requests if r.api == "anthropic" and r.path.startswith("/v1/messages") and "count_tokens" not in r.path]
    assert any("pirate" in (r.system or "") for r in anthropic), "the system prompt reached Claude"
    assert any("Noted: your favourite colour is green." in r.last_user_text for r in anthropic), "earlier turns reached Claude"
    assert any("You must respond with a valid JSON object." in (r.system or "") for r in anthropic)
    assert {r.api for r in requests if r.path.endswith("/chat/completions")} == {"openai"}
