"""The MCP server: ``llm-call mcp`` (stdio, a real subprocess) and ``/mcp`` on ``llm-call serve``
(streamable HTTP behind the server's keys), driven by the official ``mcp`` Python client and by
the real Claude Code CLI, in front of the scripted upstream (endpoint ``up``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

import llm_call
from llm_call.testing import Fault, Reply, ScriptedLLMServer, ToolCall
from support.claude_env import MARKER_VAR, ClaudeEnv, claude_env
from support.llm_server import Served, serve_llm

__all__ = ["claude_env", "serve_llm"]

pytestmark = pytest.mark.timeout(90)

A, B, ADMIN = "alice-mcp-key-0123456789", "bob-mcp-key-0123456789", "admin-mcp-key-0123456789"
KEYS = {"api_keys": [A, B], "admin_keys": [ADMIN]}
SLOW = Reply(text="slow answer", latency=60, match_text="slow", times=None)
#: the llm_call this test imports: the stdio server subprocesses run the same code
SRC = str(Path(llm_call.__file__).resolve().parents[1])
CLI = ["-c", "from llm_call.cli import main; main()"]


@asynccontextmanager
async def http_session(served: Served, key: str) -> AsyncIterator[ClientSession]:
    http = create_mcp_http_client(headers={"authorization": f"Bearer {key}"})
    async with http, streamable_http_client(served.url + "/mcp", http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


def _config(tmp_path: Path, up: ScriptedLLMServer) -> Path:
    path = tmp_path / "llm_call.toml"
    path.write_text(f'[endpoints.up]\nbase_url = "{up.openai_base_url}"\n\n[tasks]\nstore = "{tmp_path / "tasks.db"}"\n')
    return path


def _stdio_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))


@asynccontextmanager
async def stdio_session(config: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=[*CLI, "--config", str(config), "mcp"], env=_stdio_env())
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def _text(result: Any) -> str:
    return "".join(part.text for part in result.content if getattr(part, "type", None) == "text")


def _chat(up: ScriptedLLMServer) -> list[Any]:
    return [r for r in up.requests if r.path == "/v1/chat/completions"]


def test_stdio_ask_validates_reports_progress_and_runs_tasks(tmp_path: Path) -> None:
    script = [Reply(text="about forty", match_text="How many"), Reply(text="42", match_text="How many"), Reply(text="task answer", match_text="task")]
    with ScriptedLLMServer(script).running() as up:
        config = _config(tmp_path, up)

        async def run() -> None:
            async with stdio_session(config) as session:
                names = {t.name for t in (await session.list_tools()).tools}
                assert names == {"ask", "submit", "status", "wait", "cancel", "models"}
                progress: list[str] = []

                async def on_progress(value: float, total: float | None, message: str | None) -> None:
                    progress.append(message or "")

                result = await session.call_tool(
                    "ask", {"prompt": "How many?", "model": "up/x", "validate": ["regex:^\\d+$"]}, progress_callback=on_progress
                )
                assert not result.is_error and _text(result) == "42"
                # one notification per attempt and per rejected answer, as they happened
                assert [p.split(":")[0] for p in progress] == ["attempt", "validation_failed", "attempt"]
                assert "regular expression" in progress[1]

                submitted = await session.call_tool("submit", {"prompt": "a task please", "model": "up/x"})
                assert not submitted.is_error
                task_id = submitted.structured_content["task_id"]
                assert task_id.startswith("tk_")
                done = await session.call_tool("wait", {"task_id": task_id, "timeout": 30})
                assert not done.is_error
                assert done.structured_content["status"] == "succeeded"
                assert done.structured_content["answer"] == "task answer"
                status = await session.call_tool("status", {"task_id": task_id})
                assert status.structured_content["answer"] == "task answer"

                models = await session.call_tool("models", {})
                assert "up/*" in {m["id"] for m in models.structured_content["result"]}

                # over stdio too, arguments go through the request parser: no file reads
                refused = await session.call_tool("ask", {"prompt": "x", "model": "up/x", "validate": [f"schema:@{config}"]})
                assert refused.is_error and "cannot read files" in _text(refused)

        asyncio.run(run())
        prompts = [r.last_user_text for r in _chat(up)]
        assert prompts[0] == "How many?" and "regular expression" in prompts[1] and prompts[2] == "a task please"
        assert len(prompts) == 3  # the refused ask never reached the model


def test_http_ask_with_progress_and_errors_as_tool_errors(serve_llm: Any, tmp_path: Path) -> None:
    served: Served = serve_llm(
        [Reply(text="not json", match_text="Give JSON"), Reply(text='{"a": 1}', match_text="Give JSON"),
         Reply(fault=Fault.http(400), match_text="broken", times=None)],
        server=KEYS,
    )

    async def run() -> None:
        async with http_session(served, A) as session:
            progress: list[str] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress.append(message or "")

            result = await session.call_tool(
                "ask", {"prompt": "Give JSON", "model": "up/x", "system": "be terse", "validate": ["json"], "max_attempts": 2},
                progress_callback=on_progress,
            )
            assert not result.is_error and _text(result) == '{"a": 1}'
            assert [p.split(":")[0] for p in progress] == ["attempt", "validation_failed", "attempt"]

            failed = await session.call_tool("ask", {"prompt": "broken", "model": "up/x"})
            assert failed.is_error and "ProviderHTTPError" in _text(failed)

            cases = [
                ({"validate": ["schema:@/etc/passwd"]}, "cannot read files"),
                ({"validate": ["regex:(a)\\1"]}, "validation[0]"),
                ({"model": "local//etc/passwd"}, "not available to requests"),
                ({"validate": [{"type": "agent", "params": {"prompt": "ok? {TEXT_TO_VALIDATE}", "model": "up/x",
                                                            "mcp_config": {"mcpServers": {"sh": {"command": "sh"}}}}}]},
                 "mcp_config cannot be sent over HTTP"),
                ({"max_attempts": 0}, "max_attempts"),
            ]
            for extra, expected in cases:
                args = {"prompt": "never sent", "model": "up/x", **extra}
                refused = await session.call_tool("ask", args)
                assert refused.is_error, extra
                assert expected in _text(refused), (extra, _text(refused))
            # no argument of a tool carries a raw MCP config or tools, and an unknown one is refused
            raw = await session.call_tool("ask", {"prompt": "never sent", "model": "up/x", "mcp_config": {"mcpServers": {}}})
            assert raw.is_error and "takes no argument mcp_config" in _text(raw)

    asyncio.run(run())
    prompts = [r.last_user_text for r in _chat(served.upstream)]
    assert "never sent" not in prompts
    first = _chat(served.upstream)[0]
    assert first.system == "be terse" and first.last_user_text == "Give JSON"


def test_http_tasks_submit_status_wait_cancel(serve_llm: Any) -> None:
    served: Served = serve_llm([SLOW, Reply(text="quick answer", match_text="quick")], server=KEYS)

    async def run() -> None:
        async with http_session(served, A) as session:
            slow = await session.call_tool("submit", {"prompt": "slow job", "model": "up/x"})
            task_id = slow.structured_content["task_id"]
            pending = await session.call_tool("wait", {"task_id": task_id, "timeout": 0.5})
            assert not pending.is_error
            assert pending.structured_content["status"] in ("queued", "running")
            assert "call wait again" in pending.structured_content["note"]
            cancelled = await session.call_tool("cancel", {"task_id": task_id})
            assert cancelled.structured_content["status"] == "cancelled"
            waited = await session.call_tool("wait", {"task_id": task_id, "timeout": 5})
            assert waited.is_error and f"task {task_id} cancelled" in _text(waited)

            quick = await session.call_tool("submit", {"prompt": "quick job", "model": "up/x"})
            quick_id = quick.structured_content["task_id"]
            done = await session.call_tool("wait", {"task_id": quick_id, "timeout": 30})
            assert done.structured_content["answer"] == "quick answer"
            too_long = await session.call_tool("wait", {"task_id": quick_id, "timeout": 100000})
            assert too_long.is_error and "timeout" in _text(too_long)

    asyncio.run(run())
    # the tasks are the key's tasks on the HTTP task API as well
    with httpx.Client(timeout=10) as http:
        listed = http.get(served.base_url + "/tasks", headers={"authorization": f"Bearer {A}"}).json()["data"]
        assert {t["status"] for t in listed} == {"cancelled", "succeeded"}


def test_http_mcp_needs_a_valid_key(serve_llm: Any) -> None:
    served: Served = serve_llm([], server=KEYS)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"accept": "application/json, text/event-stream"}
    with httpx.Client(timeout=10) as http:
        for auth in ({}, {"authorization": "Bearer wrong-key"}):
            r = http.post(served.url + "/mcp", json=body, headers={**headers, **auth})
            assert r.status_code == 401, r.text
            assert "API key" in r.json()["error"]["message"]
        # stateless: no standalone event stream that would stay open with nothing on it
        r = http.get(served.url + "/mcp", headers={"accept": "text/event-stream", "authorization": f"Bearer {A}"})
        assert r.status_code == 405

    async def listed() -> set[str]:
        async with http_session(served, B) as session:
            return {t.name for t in (await session.list_tools()).tools}

    assert "ask" in asyncio.run(listed())  # the right key gets in
    connected = False

    async def run() -> None:
        nonlocal connected
        async with http_session(served, "wrong-key"):
            connected = True

    # the official client cannot even initialize a session with a wrong key
    with pytest.raises(BaseExceptionGroup) as info:
        asyncio.run(run())
    assert info.group_contains(MCPError)
    assert not connected


def test_another_key_cannot_see_a_task(serve_llm: Any) -> None:
    served: Served = serve_llm([SLOW], server=KEYS)

    async def run() -> None:
        async with http_session(served, A) as alice:
            task_id = (await alice.call_tool("submit", {"prompt": "slow secret", "model": "up/x"})).structured_content["task_id"]
            async with http_session(served, B) as bob:
                for tool, args in (("status", {}), ("wait", {"timeout": 1}), ("cancel", {})):
                    result = await bob.call_tool(tool, {"task_id": task_id, **args})
                    assert result.is_error and _text(result).endswith(f"no task with id {task_id!r} (submit returns task ids)")
                    unknown = await bob.call_tool(tool, {"task_id": "tk_doesnotexist", **args})
                    assert _text(unknown).replace("tk_doesnotexist", task_id) == _text(result)  # no probing
            still = await alice.call_tool("status", {"task_id": task_id})
            assert still.structured_content["status"] in ("queued", "running")  # Bob's cancel did nothing
            async with http_session(served, ADMIN) as admin:
                seen = await admin.call_tool("cancel", {"task_id": task_id})
                assert seen.structured_content["status"] == "cancelled"

    asyncio.run(run())


def _claude_cli() -> str:
    import claude_agent_sdk

    return str(Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude")


def test_claude_code_asks_another_model_through_llm_call_mcp(claude_env: ClaudeEnv, tmp_path: Path) -> None:
    upstream_answer = "Paris, says the other model"
    ask = ToolCall("mcp__llm_call__ask", {"prompt": "What is the capital of France?", "model": "up/x"})
    claude_model = [
        Reply(tool_calls=[ask], match_text="Ask the other model"),
        # served only when Claude Code sent the MCP tool's result back to its model
        Reply(text="The other model answered: Paris.", match_text=upstream_answer),
    ]
    with ScriptedLLMServer(claude_model, default=Reply(text="unexpected request", times=None)).running() as cc, \
            ScriptedLLMServer([Reply(text=upstream_answer, match_text="capital of France")]).running() as up:
        config = _config(tmp_path, up)
        server = {"command": sys.executable, "args": [*CLI, "--config", str(config), "mcp"],
                  "env": {"PYTHONPATH": _stdio_env()["PYTHONPATH"], MARKER_VAR: claude_env.marker}}
        mcp_config = tmp_path / "mcp.json"
        mcp_config.write_text(json.dumps({"mcpServers": {"llm_call": server}}))
        env = dict(os.environ, ANTHROPIC_BASE_URL=cc.anthropic_base_url, ANTHROPIC_API_KEY="test-key")
        proc = subprocess.run(
            [_claude_cli(), "-p", "Ask the other model for the capital of France.", "--output-format", "json",
             "--mcp-config", str(mcp_config), "--strict-mcp-config", "--allowedTools", "mcp__llm_call__ask"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
        )
        assert proc.returncode == 0, f"claude failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        result = json.loads(proc.stdout)
        assert result["is_error"] is False
        assert result["result"] == "The other model answered: Paris."
        (asked,) = _chat(up)
        assert asked.last_user_text == "What is the capital of France?" and asked.body["model"] == "x"
        # Claude Code got the upstream's answer as the tool's result
        tool_results = [r for r in cc.requests if upstream_answer in r.last_user_text]
        assert tool_results, [r.last_user_text for r in cc.requests]


def test_a_slow_ask_sends_heartbeats_and_a_cancelled_ask_stops_its_call(tmp_path: Path) -> None:
    from mcp import Client

    from llm_call.config import Settings, set_settings
    from llm_call.server._auth import OPEN
    from llm_call.server._mcp import build_mcp_server

    with ScriptedLLMServer([Reply(text="too late", latency=60)]).running() as up:
        settings = Settings.model_validate({"endpoints": {"up": {"base_url": up.openai_base_url}}})
        set_settings(settings)
        server = build_mcp_server(settings, manager=lambda: None, caller_of=lambda ctx: OPEN, heartbeat_s=0.05)

        async def run() -> None:
            messages: list[str] = []
            beating = asyncio.Event()

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                messages.append(message or "")
                if (message or "").startswith("working"):
                    beating.set()

            async with Client(server) as client:
                call = asyncio.create_task(client.call_tool("ask", {"prompt": "take your time", "model": "up/x"},
                                                            progress_callback=on_progress))
                await asyncio.wait_for(beating.wait(), 30)  # heartbeats while the upstream is silent
                assert up.in_flight == 1 and not call.done()
                call.cancel()  # the client gives up: notifications/cancelled
                for _ in range(200):
                    if up.in_flight == 0:
                        break
                    await asyncio.sleep(0.05)
                assert up.in_flight == 0  # the upstream request was closed, not left running
            assert messages[0].startswith("attempt") and all(m.startswith("working") for m in messages[1:])

        asyncio.run(run())


def test_http_ask_is_bounded_by_the_request_timeout(serve_llm: Any) -> None:
    served: Served = serve_llm([SLOW], server={**KEYS, "request_timeout": 0.5})

    async def run() -> None:
        async with http_session(served, A) as session:
            result = await session.call_tool("ask", {"prompt": "slow question", "model": "up/x"})
            assert result.is_error
            assert "server.request_timeout" in _text(result) and "use submit" in _text(result)

    asyncio.run(run())


def test_models_lists_only_what_allowed_models_lets_a_call_use(serve_llm: Any) -> None:
    served: Served = serve_llm(server={**KEYS, "allowed_models": ["up/x"]})

    async def run() -> list[str]:
        async with http_session(served, A) as session:
            listed = await session.call_tool("models", {})
            assert not listed.is_error
            return [row["id"] for row in listed.structured_content["result"]]

    ids = asyncio.run(run())
    with httpx.Client(timeout=10) as http:
        http_ids = [m["id"] for m in http.get(served.base_url + "/models", headers={"authorization": f"Bearer {A}"}).json()["data"]]
    assert ids == http_ids == ["up/*"]  # not max/*, local/smollm2 or LiteLLM's <provider>/<model>: each a 403
