"""The real Claude Code CLI as the client of ``/mcp`` on a running ``llm-call serve`` (streamable
HTTP, keys configured), configured as users do: ``--mcp-config`` with ``{"type": "http", "url":
..., "headers": {"Authorization": "Bearer <key>"}}``.

The CLI's own model is a scripted Anthropic server (``cc``): it answers the prompt with a
``tool_use`` of ``mcp__llm_call__ask`` and, once the tool's result comes back, a final text. The
``ask`` goes through llm_call to the scripted upstream (endpoint ``up``, behind ``serve_llm``).

What the CLI does (version 2.1.x, MCP protocol 2026-07-28), seen by running it: only POSTs
(``server/discover``, ``prompts/list``, ``resources/list`` and ``tools/list`` at once, then
``tools/call``), no GET and no DELETE; it opens a ``subscriptions/listen`` stream, held for its
whole session, when the server advertises list changes; on a 401 it marks the server "failed" and
its model gets "No such tool available".
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.testing import Reply, ScriptedLLMServer, ToolCall
from support.claude_env import ClaudeEnv, claude_env
from support.llm_server import Served, serve_llm

__all__ = ["claude_env", "serve_llm"]

pytestmark = pytest.mark.timeout(120)

A, B = "alice-mcp-key-0123456789", "bob-mcp-key-0123456789"
UPSTREAM_ANSWER = "Paris, says the other model"
ASK = ToolCall("mcp__llm_call__ask", {"prompt": "What is the capital of France?", "model": "up/x"})
SUBMIT = ToolCall("mcp__llm_call__submit", {"prompt": "a background job please", "model": "up/x"})
ACCESS = "llm_call.server.access"


def _claude_cli() -> str:
    import claude_agent_sdk

    return str(Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude")


def _run_claude(tmp_path: Path, cc: ScriptedLLMServer, served: Served, headers: dict[str, str], prompt: str,
                allowed: str) -> list[dict[str, Any]]:
    """Run ``claude -p`` with llm_call's ``/mcp`` as an HTTP MCP server; its stream-json lines."""
    server: dict[str, Any] = {"type": "http", "url": served.url + "/mcp"}
    if headers:
        server["headers"] = headers
    mcp_config = tmp_path / "mcp-http.json"
    mcp_config.write_text(json.dumps({"mcpServers": {"llm_call": server}}))
    env = dict(os.environ, ANTHROPIC_BASE_URL=cc.anthropic_base_url, ANTHROPIC_API_KEY="test-key")
    proc = subprocess.run(
        [_claude_cli(), "-p", prompt, "--output-format", "stream-json", "--verbose",
         "--mcp-config", str(mcp_config), "--strict-mcp-config", "--allowedTools", allowed],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, f"claude failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _mcp_status(lines: list[dict[str, Any]]) -> str:
    (init,) = [m for m in lines if m.get("type") == "system" and m.get("subtype") == "init"]
    (server,) = [s for s in init["mcp_servers"] if s["name"] == "llm_call"]
    return str(server["status"])


def _tool_results(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [block for m in lines if m.get("type") == "user"
            for block in m["message"]["content"] if isinstance(block, dict) and block.get("type") == "tool_result"]


def _result(lines: list[dict[str, Any]]) -> dict[str, Any]:
    (result,) = [m for m in lines if m.get("type") == "result"]
    return result


def _mcp_requests(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS]
    return [line for line in lines if line["path"] == "/mcp"]


def _chat(up: ScriptedLLMServer) -> list[Any]:
    return [r for r in up.requests if r.path == "/v1/chat/completions"]


def test_claude_code_asks_and_submits_through_http_mcp(
    claude_env: ClaudeEnv, serve_llm: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    # Two requests in flight per key: Claude Code lists resources and tools at once. Before the
    # server stopped serving subscriptions/listen, the CLI's idle listen stream held one of the
    # two for the whole session and one of the lists got a 429 (no tools for the model).
    served: Served = serve_llm(
        [Reply(text=UPSTREAM_ANSWER, match_text="capital of France"), Reply(text="task answer", match_text="background job")],
        server={"api_keys": [A, B], "max_concurrent_per_key": 2},
    )
    claude_model = [
        Reply(tool_calls=[ASK], match_text="Ask the other model"),
        # served only once Claude Code sent the ask tool's result back to its model
        Reply(tool_calls=[SUBMIT], match_text=UPSTREAM_ANSWER),
        Reply(text="The other model answered: Paris. A background task is running.", match_text="task_id"),
    ]
    with ScriptedLLMServer(claude_model, default=Reply(text="unexpected request", times=None)).running() as cc:
        lines = _run_claude(tmp_path, cc, served, {"Authorization": f"Bearer {A}"},
                            "Ask the other model for the capital of France, then start a background job.",
                            "mcp__llm_call__ask,mcp__llm_call__submit")

    assert _mcp_status(lines) == "connected"
    results = _tool_results(lines)
    assert len(results) == 2 and not any(r.get("is_error") for r in results), results
    asked, submitted = results
    assert UPSTREAM_ANSWER in json.dumps(asked["content"])
    assert "tk_" in json.dumps(submitted["content"])
    result = _result(lines)
    assert result["is_error"] is False
    assert result["result"] == "The other model answered: Paris. A background task is running."

    # llm_call's upstream got the question exactly as the CLI's tool call put it
    first = _chat(served.upstream)[0]
    assert first.last_user_text == "What is the capital of France?" and first.body["model"] == "x"
    # every MCP request of the CLI was a POST that the server answered, as Alice
    requests = _mcp_requests(caplog)
    assert requests and all(r["method"] == "POST" and r["status"] == 200 for r in requests), requests
    assert {r["key"] for r in requests} == {"key1"}  # A is the first of server.api_keys

    # the task the CLI submitted is Alice's: Bob's key does not see it on the task API
    with httpx.Client(timeout=10) as http:
        def tasks(key: str) -> list[dict[str, Any]]:
            r = http.get(served.base_url + "/tasks", headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            data: list[dict[str, Any]] = r.json()["data"]
            return data

        (task,) = tasks(A)
        assert task["id"] in json.dumps(submitted["content"])
        assert tasks(B) == []


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer wrong-key"}, {}], ids=["wrong-key", "no-key"])
def test_claude_code_without_a_valid_key_gets_no_tools(
    claude_env: ClaudeEnv, serve_llm: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, headers: dict[str, str]
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    served: Served = serve_llm([Reply(text=UPSTREAM_ANSWER, match_text="capital of France")], server={"api_keys": [A, B]})
    claude_model = [
        Reply(tool_calls=[ASK], match_text="Ask the other model"),
        Reply(text="The tool is not available.", match_text="mcp__llm_call__ask"),
    ]
    with ScriptedLLMServer(claude_model, default=Reply(text="unexpected request", times=None)).running() as cc:
        lines = _run_claude(tmp_path, cc, served, headers, "Ask the other model for the capital of France.",
                            "mcp__llm_call__ask")

    assert _mcp_status(lines) == "failed"
    (refused,) = _tool_results(lines)
    assert refused["is_error"] is True and "No such tool available" in json.dumps(refused["content"])
    assert UPSTREAM_ANSWER not in json.dumps(lines)
    assert _result(lines)["result"] == "The tool is not available."
    assert _chat(served.upstream) == []  # no model call was made for the tool
    assert _mcp_requests(caplog), "the CLI never reached /mcp"
    # nothing was served without a valid key: not /mcp, nor the OAuth discovery paths (and dynamic
    # client registration) the CLI tries when it has no Authorization header
    served_any = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS]
    assert all(r["status"] == 401 and r["error"] == "invalid_api_key" for r in served_any), served_any


META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "probe", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def test_http_mcp_holds_no_idle_listen_stream(serve_llm: Any) -> None:
    """The tools never change: the server advertises no list changes and refuses
    ``subscriptions/listen`` at once, so no client holds a request in flight for nothing."""
    served: Served = serve_llm([], server={"api_keys": [A]})

    def post(http: httpx.Client, method: str, params: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
        headers = {"authorization": f"Bearer {A}", "accept": "application/json, text/event-stream",
                   "mcp-protocol-version": "2026-07-28", "mcp-method": method}
        body = {"jsonrpc": "2.0", "id": "probe-1", "method": method, "params": {"_meta": META, **params}}
        with http.stream("POST", served.url + "/mcp", json=body, headers=headers) as r:
            first = next(r.iter_raw())  # the first frame only: an open stream must not hang the test
            return r.status_code, r.headers.get("content-type", ""), json.loads(first.decode().split("data: ")[-1])

    with httpx.Client(timeout=10) as http:
        status, _, discovered = post(http, "server/discover", {})
        assert status == 200
        capabilities = discovered["result"]["capabilities"]
        assert not any(capabilities.get(kind, {}).get("listChanged") for kind in ("tools", "prompts", "resources"))

        status, content_type, answer = post(http, "subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        assert content_type.startswith("application/json")  # an answer, not an event stream left open
        assert answer["error"]["message"] == "Method not found"
