"""Claude Code on any model: the real bundled ``claude -p`` with ``ANTHROPIC_BASE_URL`` pointing at
``llm-call serve``, which answers its ``/v1/messages?beta=true`` streams from the scripted
upstream (OpenAI wire format) through the endpoint ``up``. Includes a turn where Claude Code
runs its own Read tool because the upstream model asked for it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llm_call.testing import Reply, ToolCall
from support.claude_env import ClaudeEnv, claude_env
from support.llm_server import Served, serve_llm

__all__ = ["claude_env", "serve_llm"]

pytestmark = pytest.mark.timeout(120)

KEY = "cc-test-key"


def _claude_cli() -> str:
    import claude_agent_sdk

    return str(Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude")


def _run_claude(served: Served, cwd: Path, prompt: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ, ANTHROPIC_BASE_URL=served.url, ANTHROPIC_API_KEY=KEY)
    proc = subprocess.run(
        [_claude_cli(), "-p", prompt, "--output-format", "json", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, f"claude failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _chat_requests(served: Served) -> list[Any]:
    return [r for r in served.upstream.requests if r.path == "/v1/chat/completions"]


def test_claude_code_uses_its_read_tool_on_any_model(claude_env: ClaudeEnv, serve_llm: Any, tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    note = work / "note.txt"
    note.write_text("the secret is 42\n")
    served: Served = serve_llm(
        [Reply(tool_calls=[ToolCall("Read", {"file_path": str(note)})]), Reply(text="The note says 42.")],
        server={"api_keys": [KEY]},
        aliases={"claude-*": "up/x"},  # --model sonnet arrives as claude-sonnet-...
    )
    result = _run_claude(served, work, "Read note.txt and tell me the secret.", "--model", "sonnet", "--allowedTools", "Read")
    assert result["is_error"] is False
    assert result["result"] == "The note says 42."
    first, second = _chat_requests(served)
    assert first.body["model"] == "x" and first.stream
    assert "Read" in [t["function"]["name"] for t in first.tools]
    assert first.last_user_text.endswith("Read note.txt and tell me the secret.")
    # Claude Code ran Read on the real file and sent its output back as the tool's result
    (assistant,) = [m for m in second.messages if m["role"] == "assistant"]
    (call,) = assistant["tool_calls"]
    assert call["function"]["name"] == "Read" and json.loads(call["function"]["arguments"]) == {"file_path": str(note)}
    (tool,) = [m for m in second.messages if m["role"] == "tool"]
    assert tool["tool_call_id"] == call["id"] and "the secret is 42" in tool["content"]


def test_claude_code_with_a_model_name_of_the_server(claude_env: ClaudeEnv, serve_llm: Any, tmp_path: Path) -> None:
    served: Served = serve_llm([Reply(text="Bonjour.")], server={"api_keys": [KEY]})
    result = _run_claude(served, tmp_path, "Say hello in French.", "--model", "up/x")
    assert result["result"] == "Bonjour."
    (request,) = _chat_requests(served)
    assert request.body["model"] == "x"
    assert request.last_user_text.endswith("Say hello in French.")
