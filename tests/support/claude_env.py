"""Fixtures for tests of the ``max/*`` route: the real Claude Code CLI against a scripted server.

:func:`claude_env` points the CLI at nothing yet but makes it safe and fast: a temporary
``HOME`` (no real login), no telemetry, auto-updater or non-essential traffic, no API retries
inside the CLI (``CLAUDE_CODE_MAX_RETRIES=0``), and a unique marker variable that every process
of the test inherits, so :meth:`ClaudeEnv.processes` finds leftovers (orphans included)
without seeing other people's processes. :meth:`ClaudeEnv.use_server` sends the CLI to a
:class:`~llm_call.testing.ScriptedLLMServer` with an API key, :meth:`ClaudeEnv.use_subscription`
in subscription mode (the only mode in which the CLI reports the quota).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llm_call.testing import ScriptedLLMServer

SUPPORT = Path(__file__).resolve().parent
MCP_FILES_SERVER = SUPPORT / "mcp_files_server.py"
FAKE_CLAUDE = SUPPORT / "fake_claude.py"
MARKER_VAR = "LLM_CALL_TEST_MARKER"


def _state(pid: int) -> tuple[int, str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), fields[0].decode()


def child_pids() -> set[int]:
    """Direct children of this process (zombies included: an unreaped child is a leak too)."""
    me = os.getpid()
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _state(int(name))
            if st is not None and st[0] == me:
                found.add(int(name))
    return found


@dataclass
class ClaudeEnv:
    home: Path
    marker: str
    monkeypatch: pytest.MonkeyPatch

    def use_server(self, srv: ScriptedLLMServer) -> None:
        """Send the CLI to ``srv`` with an API key (``LLM_CALL_CLAUDE_USE_API_KEY=1``)."""
        self.monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        self.monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        self.monkeypatch.setenv("LLM_CALL_CLAUDE_USE_API_KEY", "1")

    def use_subscription(self, srv: ScriptedLLMServer) -> None:
        """Send the CLI to ``srv`` in subscription mode (``CLAUDE_CODE_OAUTH_TOKEN``, no API key):
        only then does it turn ``anthropic-ratelimit-unified-*`` headers into rate_limit_event lines."""
        self.monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        self.monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "x")
        self.monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        self.monkeypatch.delenv("LLM_CALL_CLAUDE_USE_API_KEY", raising=False)

    def mcp_files(self, name: str = "files") -> dict[str, Any]:
        """An ``mcp_config`` with the real MCP files server under ``name``."""
        server = {
            "command": sys.executable,
            "args": [str(MCP_FILES_SERVER)],
            "env": {MARKER_VAR: self.marker},
        }
        return {"mcpServers": {name: server}}

    def fake_cli(self, mode: str) -> str:
        """Install the misbehaving stand-in CLI in ``mode``; returns its path."""
        path = self.home / f"fake-claude-{mode}"
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CLAUDE}" "$@"\n')
        path.chmod(0o755)
        self.monkeypatch.setenv("FAKE_CLAUDE_MODE", mode)
        self.monkeypatch.setenv("LLM_CALL_CLAUDE_CLI", str(path))
        return str(path)

    def processes(self) -> list[int]:
        """Running processes (anywhere) started for this test: they carry its marker."""
        needle = f"{MARKER_VAR}={self.marker}".encode()
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{name}/environ").read_bytes()
            except OSError:
                continue
            st = _state(int(name))
            if needle in environ.split(b"\0") and st is not None and st[1] != "Z":
                found.append(int(name))
        return found


@pytest.fixture
def claude_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ClaudeEnv]:
    home = tmp_path / "home"
    home.mkdir()
    marker = uuid.uuid4().hex
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(MARKER_VAR, marker)
    for name, value in {
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }.items():
        monkeypatch.setenv(name, value)
    env = ClaudeEnv(home, marker, monkeypatch)
    before = child_pids()
    yield env
    leftovers = env.processes()
    new_children = child_pids() - before
    assert not leftovers, f"processes left behind: {leftovers}"
    assert not new_children, f"child processes not reaped: {new_children}"
