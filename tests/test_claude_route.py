"""The ``max/*`` route: the real Claude Code CLI (bundled with claude-agent-sdk), a real MCP
server, and the scripted Anthropic server on 127.0.0.1.

Every test runs the CLI with a temporary HOME and checks, on teardown, that no process it
started is left (``claude_env``). A CLI call takes about half a second (more with MCP).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llm_call
from llm_call.errors import (
    AuthError,
    ConfigError,
    MalformedResponse,
    ModelNotFound,
    ProviderFailed,
    ProviderHTTPError,
    ProviderTimeout,
    RateLimited,
    UsageError,
    is_transient,
)
from llm_call.testing import Fault, Reply, ScriptedLLMServer, ToolCall
from support.claude_env import ClaudeEnv, child_pids, claude_env

__all__ = ["claude_env"]

pytestmark = pytest.mark.timeout(90)

LLM_CALL_BIN = Path(sys.executable).with_name("llm-call")


def _events(log: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [data for k, data in log if k == kind]


def _working_directory(raw: bytes) -> str:
    """The working directory the CLI told the model about (in its environment section)."""
    match = re.search(rb"Primary working directory: ([^\\\s]+)", raw)
    assert match is not None
    return match.group(1).decode()


def _existing(paths: set[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]


async def _wait_for_request(srv: ScriptedLLMServer, n: int = 1) -> None:
    async with asyncio.timeout(60):
        while len([r for r in srv.requests if r.path == "/v1/messages"]) < n:
            await asyncio.sleep(0.02)


# -- answers -----------------------------------------------------------------------------


async def test_plain_answer(claude_env: ClaudeEnv) -> None:
    async with ScriptedLLMServer([Reply(text="Paris is the capital.")]) as srv:
        claude_env.use_server(srv)
        resp = await llm_call.acall("max/sonnet", "Capital of France?")
    assert resp.text == "Paris is the capital."
    assert resp.model == "max/sonnet"
    assert resp.finish_reason == "stop"
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0
    assert resp.cost_usd is not None
    assert resp.extra["num_turns"] == 1
    assert resp.extra["session_id"]
    assert resp.raw["result"] == "Paris is the capital."
    (req,) = srv.requests
    assert req.last_user_text == "Capital of France?"
    assert req.headers["x-api-key"] == "test-key"
    assert req.tools == []  # no tools unless the call allows them


async def test_system_prompt_and_earlier_turns_reach_claude(claude_env: ClaudeEnv) -> None:
    async with ScriptedLLMServer([Reply(text="Your name is Ada.")]) as srv:
        claude_env.use_server(srv)
        resp = await llm_call.acall(
            "max/sonnet",
            messages=[
                {"role": "system", "content": "You are a terse butler."},
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Noted, madam."},
                {"role": "user", "content": "What is my name?"},
            ],
        )
    assert resp.text == "Your name is Ada."
    (req,) = srv.requests
    assert req.system is not None and "You are a terse butler." in req.system
    sent = req.last_user_text
    assert "My name is Ada." in sent
    assert "Noted, madam." in sent
    assert sent.rstrip().endswith("What is my name?")
    assert sent.index("My name is Ada.") < sent.index("Noted, madam.") < sent.index("What is my name?")


async def test_stream_yields_chunks_that_add_up_to_the_text(claude_env: ClaudeEnv) -> None:
    text = "one two three four five"
    async with ScriptedLLMServer([Reply(text=text)]) as srv:
        claude_env.use_server(srv)
        chunks = [c async for c in llm_call.astream("max/sonnet", "Count to five.")]
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3
    assert "".join(texts) == text
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].data is not None and chunks[-1].data["session_id"]


async def test_resume_continues_a_cli_session(claude_env: ClaudeEnv) -> None:
    async with ScriptedLLMServer([Reply(text="Hello Ada."), Reply(text="You are Ada.")]) as srv:
        claude_env.use_server(srv)
        first = await llm_call.acall("max/sonnet", "I am Ada.")
        second = await llm_call.acall("max/sonnet", "Who am I?", resume=first.extra["session_id"])
    assert second.text == "You are Ada."
    texts = [str(m.get("content")) for m in srv.requests[-1].messages]
    assert any("I am Ada." in t for t in texts)
    assert any("Hello Ada." in t for t in texts)


# -- MCP tools and workspaces ------------------------------------------------------------


async def test_mcp_write_file_end_to_end(claude_env: ClaudeEnv, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = [
        Reply(tool_calls=[ToolCall("mcp__files__write_file", {"path": "a.txt", "content": "hello from MCP"})]),
        Reply(text="I wrote a.txt.", match_text="wrote 14 characters"),
    ]
    log: list[tuple[str, dict[str, Any]]] = []
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_server(srv)
        chunks = [
            c
            async for c in llm_call.astream(
                "max/sonnet",
                "Write a.txt.",
                mcp_config=claude_env.mcp_files(),
                allowed_tools=["mcp__files__write_file"],
                cwd=str(workspace),
                progress=lambda kind, data: log.append((kind, data)),
            )
        ]
    assert (workspace / "a.txt").read_text() == "hello from MCP"
    assert "".join(c.text for c in chunks) == "I wrote a.txt."
    assert chunks[-1].data is not None and chunks[-1].data["num_turns"] == 2
    # the tool ran between the two model calls, and its result went back to the model
    assert len(srv.requests) == 2
    assert "wrote 14 characters to a.txt" in srv.requests[1].last_user_text
    assert {t["name"] for t in srv.requests[0].tools} >= {"mcp__files__write_file"}
    assert _events(log, "tool_started") == [{"tool": "mcp__files__write_file", "id": _events(log, "tool_started")[0]["id"]}]
    (finished,) = _events(log, "tool_finished")
    assert finished["tool"] == "mcp__files__write_file" and finished["is_error"] is False
    kinds = [c.event for c in chunks if c.event]
    assert kinds == ["tool_started", "tool_finished"]


async def test_tools_are_denied_unless_allowed(claude_env: ClaudeEnv, tmp_path: Path) -> None:
    script = [
        Reply(tool_calls=[ToolCall("mcp__files__write_file", {"path": "a.txt", "content": "x"})]),
        Reply(text="I could not write it."),
    ]
    log: list[tuple[str, dict[str, Any]]] = []
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_server(srv)
        resp = await llm_call.acall(
            "max/sonnet",
            "Write a.txt.",
            mcp_config=claude_env.mcp_files(),  # the server is there, but no allowed_tools
            cwd=str(tmp_path),
            progress=lambda kind, data: log.append((kind, data)),
        )
    assert not (tmp_path / "a.txt").exists()
    assert resp.text == "I could not write it."
    assert resp.extra["permission_denials"]
    (finished,) = _events(log, "tool_finished")
    assert finished["is_error"] is True


async def test_concurrent_calls_have_separate_workspaces_and_mcp_servers(claude_env: ClaudeEnv) -> None:
    script = [
        Reply(match_text="task A", tool_calls=[ToolCall("mcp__filesA__write_file", {"path": "a.txt", "content": "A"})]),
        Reply(match_text="task B", tool_calls=[ToolCall("mcp__filesB__write_file", {"path": "b.txt", "content": "B"})]),
        Reply(match_text="to a.txt", text="A done"),
        Reply(match_text="to b.txt", text="B done"),
    ]
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_server(srv)
        a, b = await asyncio.gather(
            llm_call.acall(
                "max/sonnet", "task A", mcp_config=claude_env.mcp_files("filesA"), allowed_tools=["mcp__filesA__write_file"]
            ),
            llm_call.acall(
                "max/sonnet", "task B", mcp_config=claude_env.mcp_files("filesB"), allowed_tools=["mcp__filesB__write_file"]
            ),
        )
    assert (a.text, b.text) == ("A done", "B done")
    # what each call's workspace held right after its own write: only its own file
    listings = sorted(re.findall(r"to (\w\.txt); files here: ([\w., ]*)", " ".join(r.last_user_text for r in srv.requests)))
    assert listings == [("a.txt", "a.txt"), ("b.txt", "b.txt")]
    for req in srv.requests:
        names = {t["name"] for t in req.tools if t["name"].startswith("mcp__")}
        assert names in ({"mcp__filesA__write_file", "mcp__filesA__read_file"}, {"mcp__filesB__write_file", "mcp__filesB__read_file"})
    # each call ran in its own temporary workspace, removed after the call
    workspaces = {_working_directory(r.raw) for r in srv.requests}
    assert len(workspaces) == 2
    assert not _existing(workspaces)


async def test_mcp_server_that_fails_to_start_is_an_error(claude_env: ClaudeEnv) -> None:
    bad = {"mcpServers": {"broken": {"command": str(claude_env.home / "no-such-server")}}}
    async with ScriptedLLMServer([], default=Reply(text="answer without tools")) as srv:
        claude_env.use_server(srv)
        with pytest.raises(ProviderFailed) as info:
            await llm_call.acall("max/sonnet", "hi", mcp_config=bad, allowed_tools=["mcp__broken__x"])
    assert info.value.subtype == "mcp_server_failed"


# -- errors ------------------------------------------------------------------------------


async def test_not_logged_in_is_an_auth_error(claude_env: ClaudeEnv) -> None:
    with pytest.raises(AuthError) as info:
        await llm_call.acall("max/sonnet", "hi")
    assert "Not logged in" in str(info.value)
    assert info.value.hint is not None and "claude /login" in info.value.hint


async def test_api_key_is_removed_from_the_cli_by_default(claude_env: ClaudeEnv) -> None:
    async with ScriptedLLMServer([], default=Reply(text="should not be reached")) as srv:
        claude_env.use_server(srv)
        claude_env.monkeypatch.delenv("LLM_CALL_CLAUDE_USE_API_KEY")
        with pytest.raises(AuthError):
            await llm_call.acall("max/sonnet", "hi")
    assert srv.requests == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(529, ProviderHTTPError), (500, ProviderHTTPError), (429, RateLimited), (401, AuthError), (404, ModelNotFound)],
)
async def test_api_errors_reported_by_the_cli_are_typed(
    claude_env: ClaudeEnv, status: int, error: type[Exception]
) -> None:
    async with ScriptedLLMServer([Reply(fault=Fault.http(status), times=None)]) as srv:
        claude_env.use_server(srv)
        with pytest.raises(error) as info:
            await llm_call.acall("max/sonnet", "hi", retry=False)
    exc = info.value
    if isinstance(exc, ProviderHTTPError):
        assert exc.status == status
    assert is_transient(exc) == (status in (529, 500, 429))


async def test_transient_cli_error_is_retried_by_the_retry_layer(claude_env: ClaudeEnv) -> None:
    async with ScriptedLLMServer([Reply(fault=Fault.http(529)), Reply(text="recovered")]) as srv:
        claude_env.use_server(srv)
        resp = await llm_call.acall("max/sonnet", "hi")
    assert resp.text == "recovered"
    assert len(srv.requests) == 2
    assert resp.attempts[0].kind == "provider_error"


async def test_the_cli_own_api_retries_are_progress_events(claude_env: ClaudeEnv) -> None:
    claude_env.monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "1")
    log: list[tuple[str, dict[str, Any]]] = []
    async with ScriptedLLMServer([Reply(fault=Fault.http(529)), Reply(text="recovered")]) as srv:
        claude_env.use_server(srv)
        resp = await llm_call.acall("max/sonnet", "hi", retry=False, progress=lambda k, d: log.append((k, d)))
    assert resp.text == "recovered"
    (wait,) = _events(log, "retry_wait")
    assert wait["source"] == "claude_cli" and wait["status"] == 529


async def test_max_turns_is_a_typed_error(claude_env: ClaudeEnv) -> None:
    script = [Reply(tool_calls=[ToolCall("mcp__nowhere__tool", {})], times=None)]
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_server(srv)
        with pytest.raises(ProviderFailed) as info:
            await llm_call.acall("max/sonnet", "loop", max_turns=1)
    assert info.value.subtype == "error_max_turns"


async def test_server_hang_trips_the_idle_watchdog(claude_env: ClaudeEnv, use_settings: Any) -> None:
    use_settings(claude={"use_api_key": True, "idle_timeout": 2})
    async with ScriptedLLMServer([Reply(fault=Fault.hang())]) as srv:
        claude_env.use_server(srv)
        with pytest.raises(ProviderTimeout) as info:
            await llm_call.acall("max/sonnet", "hi", retry=False)
    assert "idle timeout" in str(info.value)
    assert not claude_env.processes()


async def test_total_timeout(claude_env: ClaudeEnv) -> None:
    async with ScriptedLLMServer([Reply(fault=Fault.hang())]) as srv:
        claude_env.use_server(srv)
        with pytest.raises(ProviderTimeout) as info:
            await llm_call.acall("max/sonnet", "hi", timeout=3, retry=False)
    assert "total timeout" in str(info.value)


async def test_cancelling_a_call_kills_the_cli(claude_env: ClaudeEnv) -> None:
    async with ScriptedLLMServer([Reply(fault=Fault.hang())]) as srv:
        claude_env.use_server(srv)
        task = asyncio.create_task(llm_call.acall("max/sonnet", "hi", mcp_config=claude_env.mcp_files()))
        await _wait_for_request(srv)
        assert len(claude_env.processes()) >= 2  # the CLI and its MCP server
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not claude_env.processes()


async def test_closing_a_stream_early_ends_the_cli(claude_env: ClaudeEnv) -> None:
    before = child_pids()
    async with ScriptedLLMServer([Reply(chunks=["first ", "never sent"], chunk_delay=60)]) as srv:
        claude_env.use_server(srv)
        async with contextlib.aclosing(llm_call.astream("max/sonnet", "hi")) as stream:
            async for chunk in stream:
                if chunk.text:
                    assert chunk.text == "first "
                    break
        # the layers above the provider do not close their inner generators explicitly, so the
        # provider's stream is closed by the event loop's async-generator finalizer: soon, not
        # necessarily at once
        async with asyncio.timeout(30):
            while claude_env.processes() or child_pids() - before:
                await asyncio.sleep(0.05)


async def test_concurrency_limit_queues_cli_processes(claude_env: ClaudeEnv, use_settings: Any) -> None:
    use_settings(claude={"use_api_key": True, "max_concurrency": 1})
    script = [Reply(match_text="first", fault=Fault.hang()), Reply(match_text="second", text="second done")]
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_server(srv)
        first = asyncio.create_task(llm_call.acall("max/sonnet", "first"))
        await _wait_for_request(srv)
        second = asyncio.create_task(llm_call.acall("max/sonnet", "second"))
        await asyncio.sleep(1.0)
        assert len(srv.requests) == 1  # the second call waits for a free CLI slot
        assert not second.done()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (await second).text == "second done"


# -- a misbehaving CLI (stand-in via LLM_CALL_CLAUDE_CLI) --------------------------------


@pytest.mark.parametrize("mode", ["garbage", "corrupt", "no_result"])
async def test_cli_output_that_is_not_an_answer(claude_env: ClaudeEnv, mode: str) -> None:
    claude_env.fake_cli(mode)
    with pytest.raises(MalformedResponse):
        await llm_call.acall("max/sonnet", "hi")


async def test_non_zero_exit_after_a_result_is_not_an_answer(claude_env: ClaudeEnv) -> None:
    claude_env.fake_cli("exit_after_result")
    with pytest.raises(ProviderFailed) as info:
        await llm_call.acall("max/sonnet", "hi")
    assert info.value.subtype == "exit_code"
    assert "must not be returned" not in str(info.value)


async def test_a_credential_the_cli_prints_is_scrubbed_from_its_error(claude_env: ClaudeEnv) -> None:
    """The CLI's stderr goes into the error, which HTTP clients of the server and the task store
    see: a credential of the environment in it becomes ***."""
    claude_env.fake_cli("stderr_secret")
    claude_env.monkeypatch.setenv("FAKE_CLAUDE_LEAK_NAME", "SOME_SERVICE_TOKEN")
    claude_env.monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-0123456789abcdef")
    with pytest.raises(ProviderFailed) as info:
        await llm_call.acall("max/sonnet", "hi", retry=False)
    assert "was refused" in str(info.value) and "***" in str(info.value)
    assert "tok-0123456789abcdef" not in str(info.value)


@pytest.mark.parametrize("subtype", ["error_during_execution", "error_max_budget_usd", "error_max_turns"])
async def test_error_results_are_typed(claude_env: ClaudeEnv, subtype: str) -> None:
    claude_env.fake_cli("error_result")
    claude_env.monkeypatch.setenv("FAKE_CLAUDE_SUBTYPE", subtype)
    with pytest.raises(ProviderFailed) as info:
        await llm_call.acall("max/sonnet", "hi")
    assert info.value.subtype == subtype
    assert "it went wrong" in str(info.value)


async def test_cli_path_runs_another_executable(claude_env: ClaudeEnv) -> None:
    claude_env.fake_cli("ok")
    resp = await llm_call.acall("max/sonnet", "hi")
    assert resp.text == "fake answer"


@pytest.mark.parametrize("use_api_key", [False, True])
async def test_cli_environment_and_flags(claude_env: ClaudeEnv, use_settings: Any, use_api_key: bool) -> None:
    cli = claude_env.fake_cli("env")
    use_settings(claude={"cli_path": cli, "use_api_key": use_api_key})
    claude_env.monkeypatch.setenv("CLAUDECODE", "1")  # as inside a Claude Code session
    claude_env.monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    resp = await llm_call.acall("max/opus", "hi", max_tokens=123)
    seen = json.loads(resp.text)
    assert seen["env"]["CLAUDECODE"] is None
    assert seen["env"]["ANTHROPIC_API_KEY"] == ("sk-secret" if use_api_key else "")
    assert seen["env"]["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "123"
    argv = seen["argv"]
    assert argv[argv.index("--model") + 1] == "opus"
    assert argv[argv.index("--permission-mode") + 1] == "dontAsk"  # never bypass by default
    assert argv[argv.index("--tools") + 1] == ""  # no built-in tools
    assert "--strict-mcp-config" in argv
    # a fresh temporary workspace, removed after the call
    assert Path(seen["cwd"]).name.startswith("llm-call-claude-")
    assert not _existing({seen["cwd"]})


async def test_alias_bundles_model_system_prompt_mcp_and_tools(claude_env: ClaudeEnv, use_settings: Any) -> None:
    cli = claude_env.fake_cli("env")
    mcp = claude_env.mcp_files()
    use_settings(
        claude={"cli_path": cli},
        aliases={
            "code-expert": {
                "model": "max/opus",
                "system": "You are a code expert.",
                "mcp_config": mcp,
                "allowed_tools": ["mcp__files__write_file"],
            }
        },
    )
    argv = json.loads((await llm_call.acall("code-expert", "hi")).text)["argv"]
    assert argv[argv.index("--model") + 1] == "opus"
    assert argv[argv.index("--system-prompt") + 1] == "You are a code expert."
    assert argv[argv.index("--allowedTools") + 1] == "mcp__files__write_file"
    assert json.loads(argv[argv.index("--mcp-config") + 1]) == mcp


async def test_hang_after_result_trips_the_exit_deadline_and_kills_the_tree(
    claude_env: ClaudeEnv, use_settings: Any
) -> None:
    claude_env.fake_cli("hang_after_result")
    use_settings(claude={"cli_path": os.environ["LLM_CALL_CLAUDE_CLI"], "exit_timeout": 1})
    with pytest.raises(ProviderTimeout) as info:
        await llm_call.acall("max/sonnet", "hi", retry=False)
    assert "exit timeout" in str(info.value)
    assert not claude_env.processes()  # the CLI and the child it started


async def test_idle_watchdog_kills_the_cli_and_its_children(claude_env: ClaudeEnv, use_settings: Any) -> None:
    claude_env.fake_cli("hang_with_child")
    use_settings(claude={"cli_path": os.environ["LLM_CALL_CLAUDE_CLI"], "idle_timeout": 1})
    with pytest.raises(ProviderTimeout) as info:
        await llm_call.acall("max/sonnet", "hi", retry=False)
    assert "idle timeout" in str(info.value)
    assert not claude_env.processes()


async def test_missing_cli_is_a_config_error(claude_env: ClaudeEnv) -> None:
    claude_env.monkeypatch.setenv("LLM_CALL_CLAUDE_CLI", str(claude_env.home / "no-claude-here"))
    with pytest.raises(ConfigError):
        await llm_call.acall("max/sonnet", "hi")


# -- usage errors (no process is started) ------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
            "remote image URLs",
        ),
        ({"prompt": "hi", "seed": 1}, "not supported by the max/* route"),
        ({"prompt": "hi", "cwd": "/no/such/dir"}, "not an existing directory"),
        ({"prompt": "hi", "permission_mode": "yolo"}, "permission_mode"),
        ({"prompt": "hi", "mcp_config": {"servers": {}}}, "mcpServers"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]}, "ends with a assistant"),
    ],
)
async def test_usage_errors(claude_env: ClaudeEnv, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError) as info:
        await llm_call.acall("max/sonnet", **kwargs)
    assert needle in str(info.value)


# -- the command line --------------------------------------------------------------------


def _run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LLM_CALL_BIN), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_cli_ask_prints_the_scripted_answer(claude_env: ClaudeEnv) -> None:
    with ScriptedLLMServer([Reply(text="Hi from the scripted server.")]).running() as srv:
        out = _run_cli(
            ["ask", "-m", "max/sonnet", "hi"],
            LLM_CALL_CLAUDE_USE_API_KEY="1",
            ANTHROPIC_BASE_URL=srv.anthropic_base_url,
            ANTHROPIC_API_KEY="test-key",
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Hi from the scripted server."


def test_cli_ask_not_logged_in_exits_1_with_the_hint(claude_env: ClaudeEnv) -> None:
    out = _run_cli(["ask", "-m", "max/sonnet", "hi"])
    assert out.returncode == 1
    assert "AuthError" in out.stderr and "claude /login" in out.stderr


def test_doctor_reports_cli_version_and_login(claude_env: ClaudeEnv) -> None:
    out = _run_cli(["doctor"])
    assert "CLI found" in out.stdout and "(Claude Code)" in out.stdout
    assert out.returncode == 1  # the temporary HOME has no login
    assert "claude /login" in out.stdout


def test_doctor_live_makes_a_tiny_call(claude_env: ClaudeEnv) -> None:
    with ScriptedLLMServer([Reply(text="OK")]).running() as srv:
        out = _run_cli(
            ["doctor", "--live"],
            LLM_CALL_CLAUDE_USE_API_KEY="1",
            ANTHROPIC_BASE_URL=srv.anthropic_base_url,
            ANTHROPIC_API_KEY="test-key",
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "answered 'OK'" in out.stdout
        assert srv.requests[0].last_user_text == "Reply with the single word OK."


# -- the request as a CLI call (no process) ----------------------------------------------


def test_render_prompt_keeps_every_turn_in_order() -> None:
    from llm_call.providers._claude_plan import render_prompt

    system, prompt = render_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": "How far is Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "distance", "arguments": '{"to": "Paris"}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "distance", "content": "450 km"},
            {"role": "assistant", "content": "About 450 km."},
            {"role": "user", "content": [{"type": "text", "text": "And in miles?"}]},
        ]
    )
    assert system == "Be brief.\n\nUse metric units."
    order = ["How far is Paris?", 'called tool distance with {"to": "Paris"}', '<turn role="tool distance">\n450 km', "About 450 km.", "And in miles?"]
    positions = [prompt.index(part) for part in order]
    assert positions == sorted(positions)
    assert prompt.endswith("And in miles?")


def test_single_user_message_is_sent_as_is() -> None:
    from llm_call.providers._claude_plan import render_prompt

    assert render_prompt([{"role": "user", "content": "hi"}]) == (None, "hi")


def test_allowed_builtin_tools_are_enabled_and_mcp_tools_only_allowed() -> None:
    from llm_call.config import ClaudeConfig
    from llm_call.providers._claude_plan import plan_call
    from llm_call.types import Request

    request = Request(
        model="sonnet",
        messages=[{"role": "user", "content": "hi"}],
        options={"allowed_tools": "Read, Bash(git status:*), mcp__files__write_file", "permission_mode": "acceptEdits"},
    )
    plan = plan_call(ClaudeConfig(), request, environ={"ANTHROPIC_API_KEY": "sk"})
    kw = plan.sdk_options
    assert kw["tools"] == ["Bash", "Read"]
    assert kw["allowed_tools"] == ["Read", "Bash(git status:*)", "mcp__files__write_file"]
    assert kw["permission_mode"] == "acceptEdits"
    assert kw["env"]["ANTHROPIC_API_KEY"] == ""
    assert plan.cwd is None
