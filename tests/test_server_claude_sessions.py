"""``max/*`` calls over HTTP leave no CLI session on disk (``claude.persist_sessions``).

The Claude CLI saves every conversation under ``~/.claude/projects`` (a folder per working
directory, so a new one per call) so that ``resume=`` can continue it. A request cannot resume a
session, so under ``llm-call serve`` that only kept every key's prompts and answers in the server
user's home, growing without bound. The real bundled CLI against the scripted upstream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.testing import Reply, ScriptedLLMServer
from support.claude_env import ClaudeEnv, claude_env
from support.llm_server import serve_llm

__all__ = ["claude_env", "serve_llm"]

LLM_CALL = [str(Path(sys.executable).parent / "llm-call")]

pytestmark = pytest.mark.timeout(120)


def _saved(env: ClaudeEnv, text: str) -> list[str]:
    return [str(p) for p in env.home.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.parametrize("pool_size", [0, 1], ids=["one_shot", "pooled"])
def test_server_calls_are_not_saved_as_cli_sessions(claude_env: ClaudeEnv, serve_llm: Any, pool_size: int) -> None:
    served = serve_llm([Reply(text="ans", times=None)], claude={"use_api_key": True, "pool_size": pool_size})
    claude_env.use_server(served.upstream)
    for i in range(2):
        r = httpx.post(served.base_url + "/chat/completions", timeout=90,
                       json={"model": "max/haiku", "messages": [{"role": "user", "content": f"PRIVATE-PROMPT-{i}"}]})
        assert r.status_code == 200, r.text
    assert _saved(claude_env, "PRIVATE-PROMPT-") == []


def test_an_operator_may_keep_them(claude_env: ClaudeEnv, serve_llm: Any) -> None:
    served = serve_llm([Reply(text="ans", times=None)], claude={"use_api_key": True, "persist_sessions": True})
    claude_env.use_server(served.upstream)
    r = httpx.post(served.base_url + "/chat/completions", timeout=90,
                   json={"model": "max/haiku", "messages": [{"role": "user", "content": "KEPT-PROMPT"}]})
    assert r.status_code == 200, r.text
    assert _saved(claude_env, "KEPT-PROMPT")


def test_a_worker_running_queued_tasks_does_not_save_them(claude_env: ClaudeEnv, tmp_path: Path) -> None:
    """``llm-call worker`` runs the server's tasks (and anyone's on the store): the same default."""
    with ScriptedLLMServer([], default=Reply(text="ans", times=None)).running() as upstream:
        claude_env.use_server(upstream)
        (tmp_path / "empty.toml").write_text("")  # the defaults, whatever the machine's config says
        env = {**os.environ, "LLM_CALL_CONFIG": str(tmp_path / "empty.toml")}
        db = str(tmp_path / "tasks.db")
        sub = subprocess.run([*LLM_CALL, "ask", "--background", "--tasks", db, "-m", "max/haiku", "WORKER-PROMPT"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert sub.returncode == 0, sub.stderr
        ran = subprocess.run([*LLM_CALL, "worker", "--burst", "--tasks", db], env=env, capture_output=True, text=True, timeout=100)
        assert ran.returncode == 0 and '"succeeded": 1' in ran.stderr, ran.stderr
        assert upstream.requests  # the real CLI answered through the scripted upstream
    assert _saved(claude_env, "WORKER-PROMPT") == []
