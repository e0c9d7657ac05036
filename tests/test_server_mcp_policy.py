"""Requests over HTTP name MCP servers and tool profiles the operator declared; they can never
start a process of their own (issue 12). End to end: HTTP client -> the app on a socket -> the
real Claude Code CLI -> the scripted Anthropic server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.testing import Reply, ToolCall
from support.claude_env import MARKER_VAR, MCP_FILES_SERVER, ClaudeEnv, claude_env
from support.llm_server import Served, serve_llm

__all__ = ["claude_env", "serve_llm"]

pytestmark = pytest.mark.timeout(120)

HI = [{"role": "user", "content": "hi"}]


def _files_server(claude_env: ClaudeEnv) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(MCP_FILES_SERVER)], "env": {MARKER_VAR: claude_env.marker}}


def _serve(claude_env: ClaudeEnv, serve_llm: Any, script: list[Reply], **claude: Any) -> Served:
    served: Served = serve_llm(script, claude={"use_api_key": True, **claude})
    claude_env.use_server(served.upstream)
    return served


def _messages_requests(served: Served) -> list[Any]:
    return [r for r in served.upstream.requests if r.path.startswith("/v1/messages")]


def _attacks(marker_file: Path) -> list[tuple[str, dict[str, Any]]]:
    server = {"command": "sh", "args": ["-c", f"date > {marker_file}"]}
    mcp = {"mcpServers": {"x": server}}
    judge = {"type": "agent", "params": {"prompt": "ok? {TEXT_TO_VALIDATE}", "mcp_config": mcp}}
    return [
        ("/chat/completions", {"model": "max/sonnet", "messages": HI, "mcp_config": mcp}),
        ("/chat/completions", {"model": "max/sonnet", "messages": HI, "validation": ["not_empty"], "tools_after": 1, "tools_mcp_config": mcp}),
        ("/chat/completions", {"model": "max/sonnet", "messages": HI, "validation": [judge]}),
        ("/messages", {"model": "max/sonnet", "max_tokens": 50, "messages": HI, "mcp_config": mcp}),
        ("/responses", {"model": "max/sonnet", "input": "hi", "mcp_config": mcp}),
        ("/responses", {"model": "max/sonnet", "input": "hi", "background": True, "mcp_config": mcp}),
        ("/tasks", {"model": "max/sonnet", "prompt": "hi", "mcp_config": mcp}),
        ("/tasks", {"model": "max/sonnet", "prompt": "hi", "validation": ["not_empty"], "tools_after": 1, "tools_mcp_config": mcp}),
    ]


def test_no_request_starts_an_mcp_command(claude_env: ClaudeEnv, serve_llm: Any, tmp_path: Path) -> None:
    served = _serve(claude_env, serve_llm, [], )
    marker_file = tmp_path / "pwned"
    import json

    for path, body in _attacks(marker_file):
        for content_type in ("application/json", "text/plain"):
            r = httpx.post(served.base_url + path, content=json.dumps(body), headers={"content-type": content_type}, timeout=60)
            assert r.status_code in (400, 415), (path, content_type, r.status_code, r.text)
            if r.status_code == 400:
                message = r.json()["error"]["message"]  # the OpenAI and the Anthropic error shapes
                assert "[claude.mcp_servers." in message, message
    assert not marker_file.exists()
    assert not _messages_requests(served)
    assert not claude_env.processes()


def test_a_declared_server_reaches_the_cli_by_name(claude_env: ClaudeEnv, serve_llm: Any) -> None:
    script = [
        Reply(tool_calls=[ToolCall("mcp__files__write_file", {"path": "a.txt", "content": "hello"})]),
        Reply(text="I wrote a.txt.", match_text="wrote 5 characters"),
    ]
    served = _serve(claude_env, serve_llm, script, mcp_servers={"files": _files_server(claude_env)})
    r = httpx.post(
        served.base_url + "/chat/completions",
        json={"model": "max/sonnet", "messages": HI, "mcp_servers": ["files"], "allowed_tools": ["mcp__files__write_file"]},
        timeout=100,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "I wrote a.txt."
    first, second = _messages_requests(served)
    assert "mcp__files__write_file" in {t["name"] for t in first.tools}
    assert "wrote 5 characters to a.txt" in second.last_user_text


def test_a_tool_profile_gives_its_servers_and_tools(claude_env: ClaudeEnv, serve_llm: Any) -> None:
    script = [
        Reply(tool_calls=[ToolCall("mcp__files__write_file", {"path": "b.txt", "content": "hi"})]),
        Reply(text="done", match_text="wrote 2 characters"),
    ]
    served = _serve(
        claude_env,
        serve_llm,
        script,
        mcp_servers={"files": _files_server(claude_env)},
        tool_profiles={"writer": {"allowed_tools": ["mcp__files__write_file"], "mcp_servers": ["files"]}},
    )
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "max/sonnet", "messages": HI, "tool_profile": "writer"}, timeout=100)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "done"
    assert len(_messages_requests(served)) == 2


@pytest.mark.parametrize(
    ("extra", "param", "names"),
    [
        ({"mcp_servers": ["nope"]}, "mcp_servers.0", "[claude.mcp_servers.nope]"),
        ({"tool_profile": "nope"}, "tool_profile", "[claude.tool_profiles.nope]"),
        ({"validation": ["not_empty"], "tools_after": 1, "tools_mcp_servers": ["nope"]}, "tools_mcp_servers.0", "[claude.mcp_servers.nope]"),
        ({"allowed_tools": ["Bash"]}, "allowed_tools.0", "[claude.tool_profiles.NAME]"),
        ({"mcp_servers": ["files"], "allowed_tools": ["mcp__files__x", "Read"]}, "allowed_tools.1", "[claude.tool_profiles.NAME]"),
        ({"allowed_tools": ["mcp__files__write_file"]}, "allowed_tools.0", "mcp__SERVER__TOOL"),
        ({"validation": [{"type": "agent", "params": {"prompt": "p", "mcp_servers": ["nope"]}}]}, "validation[0].mcp_servers.0", "[claude.mcp_servers.nope]"),
    ],
)
def test_undeclared_names_and_builtin_tools_are_400_naming_the_config_key(
    serve_llm: Any, extra: dict[str, Any], param: str, names: str
) -> None:
    served = serve_llm(claude={"mcp_servers": {"files": {"command": "true"}}})
    for path, base in (
        ("/chat/completions", {"model": "max/sonnet", "messages": HI}),
        ("/tasks", {"model": "max/sonnet", "prompt": "hi"}),
        ("/responses", {"model": "max/sonnet", "input": "hi", "background": True}),
    ):
        r = httpx.post(served.base_url + path, json={**base, **extra}, timeout=30)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["param"] == param and names in error["message"], error
    assert not served.upstream.requests


def test_the_tool_stage_uses_declared_servers_by_name(claude_env: ClaudeEnv, serve_llm: Any) -> None:
    script = [
        Reply(text="I cannot see the file."),
        Reply(tool_calls=[ToolCall("mcp__files__write_file", {"path": "n.txt", "content": "42"})]),
        Reply(text="42", match_text="wrote 2 characters"),
    ]
    served = _serve(claude_env, serve_llm, script, mcp_servers={"files": _files_server(claude_env)})
    r = httpx.post(
        served.base_url + "/chat/completions",
        json={
            "model": "max/sonnet",
            "messages": [{"role": "user", "content": "Write 42 to n.txt, then answer with the number."}],
            "validation": [r"regex:^\d+$"],
            "max_attempts": 2,
            "tools_after": 2,
            "tools_mcp_servers": ["files"],
            "allowed_tools": ["mcp__files__write_file"],
        },
        timeout=100,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "42"
    first, second, _ = _messages_requests(served)
    assert not first.tools  # attempt 1: no MCP server
    assert "mcp__files__write_file" in {t["name"] for t in second.tools}
