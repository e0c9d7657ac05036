"""Fuzz every operation of the server's OpenAPI schema with schemathesis: no 5xx and no hang.

The server runs on a real port in front of the scripted LLM server (default reply), which is
also the ``openai/*`` route and the default model, so generated requests that are valid reach a
real upstream. Routes that would leave this machine or start heavy work (LiteLLM, the Claude
CLI, the local model) are switched off for the test: their provider factory raises ConfigError.
Each operation gets valid (positive) and invalid (negative) examples, bounded so that the whole
module runs in about a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from llm_call.config import Settings, set_settings
from llm_call.errors import ConfigError
from llm_call.providers import router
from llm_call.server import ServerThread, create_app
from llm_call.testing import Reply, ScriptedLLMServer

pytestmark = pytest.mark.timeout(180)

EXAMPLES = 40
CALL_TIMEOUT_S = 15  # a request that takes longer is a hang


@pytest.fixture
def fuzz_schema(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    real_create = router._create

    def local_routes_only(route: router.Route, s: Settings) -> Any:
        if route.kind not in ("openai", "endpoint"):
            raise ConfigError(f"route {route.kind} is switched off in the fuzz test")
        return real_create(route, s)

    monkeypatch.setattr(router, "_create", local_routes_only)
    with ScriptedLLMServer([], default=Reply(text="fuzzed")).running() as up:
        monkeypatch.setenv("OPENAI_BASE_URL", up.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        settings_ = Settings.model_validate(
            {
                "default_model": "up/x",
                "endpoints": {"up": {"base_url": up.openai_base_url}},
                "retry": {"max_retries": 0},
                "tasks": {"store": str(tmp_path / "tasks.db")},
                "server": {"request_timeout": 10},
            }
        )
        set_settings(settings_)
        with ServerThread(create_app(settings_)) as srv:
            yield schemathesis.openapi.from_url(srv.url + "/openapi.json")


def _operations() -> list[tuple[str, str]]:
    doc = create_app(Settings()).openapi()
    return [(method.upper(), path) for path, ops in doc["paths"].items() for method in ops]


@pytest.mark.parametrize(("method", "path"), _operations(), ids=lambda v: str(v))
def test_no_server_error_and_no_hang(fuzz_schema: Any, method: str, path: str) -> None:
    operation = fuzz_schema[path][method]

    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              database=None)
    def run(case: Any) -> None:
        case.call_and_validate(checks=[not_a_server_error], timeout=CALL_TIMEOUT_S)

    run()
