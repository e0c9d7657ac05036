"""Shared fixtures. Every test runs isolated: no provider keys or llm_call variables from the
caller's environment, a temporary working directory and XDG data dir, fresh settings, and
providers closed afterwards (so no session leaks between event loops).

Engineers: put fixtures for one area in that area's test files or in ``tests/support/``;
keep this file to what every test needs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_call.config import Settings, set_settings
from llm_call.providers.router import close_providers
from llm_call.testing import Reply, ScriptedLLMServer

_SCRUB_PREFIXES = ("LLM_CALL_", "OPENAI_", "ANTHROPIC_", "CLAUDE")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_SCRUB_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.chdir(tmp_path)
    set_settings(None)
    yield
    set_settings(None)


@pytest.fixture(autouse=True)
async def _close_providers() -> AsyncIterator[None]:
    yield
    await close_providers()


@pytest.fixture(autouse=True)
def _reset_breakers() -> Iterator[None]:
    """Circuit breakers are process-wide: start and end every test with none."""
    from llm_call._retry import reset_breakers

    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture(autouse=True)
def _reset_quota() -> Iterator[None]:
    """The Claude quota state is process-wide: a test that saw a rejection (even from a server
    still stopping after the test body) must not hold every later max/* call until its reset."""
    from llm_call.providers.claude_quota import QUOTA

    QUOTA.clear()
    yield
    QUOTA.clear()


@pytest.fixture
async def srv(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ScriptedLLMServer]:
    """A scripted server behind the ``openai/*`` route (default answer: "default answer")."""
    async with ScriptedLLMServer(default=Reply(text="default answer", times=None)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
        yield server


@pytest.fixture
def use_settings() -> Callable[..., Settings]:
    """Install settings built from keyword sections, e.g. ``use_settings(endpoints={...})``."""

    def install(**data: Any) -> Settings:
        settings = Settings.model_validate(data)
        set_settings(settings)
        return settings

    return install
