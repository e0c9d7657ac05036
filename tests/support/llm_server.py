"""Fixtures for the server tests: ``llm-call serve``'s app on a real port (a uvicorn thread) in
front of the scripted LLM server (another thread), and the official ``openai`` SDK as client.

``serve_llm(script, default=..., server={...}, tasks=...)`` starts both and returns a
:class:`Served`; the endpoint ``up`` routes to the scripted server, so model ``up/x`` goes
there (``up_endpoint`` adds settings of that endpoint: ``api_key``, ``headers``...).
Everything stops at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from llm_call.config import Settings, set_settings
from llm_call.server import ServerThread, create_app
from llm_call.testing import Reply, ReplyLike, ScriptedLLMServer

__all__ = ["Served", "serve_llm"]


@dataclass
class Served:
    upstream: ScriptedLLMServer
    server: ServerThread
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def client(self, api_key: str = "unused", **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, **kwargs)

    def async_client(self, api_key: str = "unused", **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, **kwargs)


ServeLLM = Callable[..., Served]


@pytest.fixture
def serve_llm(tmp_path: Path) -> Iterator[ServeLLM]:
    stack = ExitStack()

    def start(
        script: Sequence[ReplyLike] = (),
        *,
        default: ReplyLike | None = None,
        server: dict[str, Any] | None = None,
        tasks: dict[str, Any] | None = None,
        task_manager: Any = None,
        up_endpoint: dict[str, Any] | None = None,
        **sections: Any,
    ) -> Served:
        up = stack.enter_context(
            ScriptedLLMServer(list(script), default=default if default is not None else Reply(text="ok")).running()
        )
        data: dict[str, Any] = {"endpoints": {"up": {"base_url": up.openai_base_url, **(up_endpoint or {})}}, **sections}
        data["server"] = server or {}
        data["tasks"] = {"store": str(tmp_path / "tasks.db"), **(tasks or {})}
        settings = Settings.model_validate(data)
        set_settings(settings)
        srv = stack.enter_context(ServerThread(create_app(settings, task_manager=task_manager)))
        return Served(up, srv, settings)

    try:
        yield start
    finally:
        stack.close()
