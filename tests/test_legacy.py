"""The original project's ``llm_config`` dicts: every key mapped, unknown keys refused, and
``llm_call.acall_config`` / ``call_config`` running them against the scripted OpenAI server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import llm_call
from llm_call.config import Settings
from llm_call.errors import ProviderHTTPError, UsageError, ValidationExhausted
from llm_call.legacy import JSON_INSTRUCTION, LEGACY_KEYS, map_llm_config
from llm_call.testing import Fault, Reply, ScriptedLLMServer
from llm_call.validation import parse_specs

MSG = [{"role": "user", "content": "hi"}]
MCP = {"mcpServers": {"files": {"command": "python", "args": ["files.py"]}}}


def test_every_key_maps_to_acall_arguments(use_settings: Callable[..., Settings]) -> None:
    use_settings()
    config = {
        "model": "openai/gpt-4o-mini",
        "messages": MSG,
        "temperature": 0.1,
        "max_tokens": 250,
        "timeout": 30,
        "stream": False,
        "response_format": {"type": "json_object"},
        "validation": [{"type": "response_not_empty"}, {"type": "field_present", "params": {"field_name": "name"}}],
        "retry_config": {"max_attempts": 3},
        "mcp_config": MCP,
        "max_attempts_before_tool_use": 2,
        "max_attempts_before_human": 3,
        "debug_tool_mcp_config": MCP,
        "default_validate": True,
    }
    assert set(config) == LEGACY_KEYS
    kwargs = map_llm_config(config)
    assert kwargs == {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "system", "content": JSON_INSTRUCTION}, *MSG],
        "temperature": 0.1,
        "max_tokens": 250,
        "timeout": 30.0,
        "response_format": {"type": "json_object"},
        "validate": [
            {"type": "response_not_empty", "params": {}},
            {"type": "json_string", "params": {}},
            {"type": "field_present", "params": {"path": "name"}},
        ],
        "max_attempts": 3,
        "retry": {"max_retries": 2},
        "mcp_config": MCP,
        "tools_after": 2,
        "tools_mcp_config": MCP,
        "human_after": 3,
    }
    assert len(parse_specs(kwargs["validate"])) == 3  # the same check twice is asked once


def test_json_mode_keeps_a_system_prompt_that_mentions_json_and_skips_response_format_for_claude(
    use_settings: Callable[..., Settings],
) -> None:
    use_settings(aliases={"max/json-expert": "max/sonnet"})
    messages = [{"role": "system", "content": "Reply in JSON."}, *MSG]
    kwargs = map_llm_config({"model": "max/json-expert", "messages": messages, "response_format": {"type": "json_object"}})
    assert kwargs["messages"] == messages
    assert "response_format" not in kwargs  # the Claude CLI has no such option; the json validator checks it
    assert kwargs["validate"] == [{"type": "json_string", "params": {}}]
    other = map_llm_config({"model": "openai/m", "messages": [{"role": "system", "content": "Be brief."}, *MSG],
                            "response_format": {"type": "json_object"}})
    assert other["messages"][0]["content"] == f"{JSON_INSTRUCTION} Be brief."


def test_original_validator_parameters_are_renamed() -> None:
    kwargs = map_llm_config(
        {
            "messages": MSG,
            "validation": [
                {"type": "length", "params": {"min_length": 3, "max_length": 9}},
                {"type": "regex", "params": {"pattern": "^a", "flags": 2 | 8}},
                {"type": "contains", "params": {"required_text": ["a", "b"]}},
                {"type": "contains", "params": {"required_text": "C", "case_sensitive": True}},
                {"type": "code", "params": {"language": "python"}},
                {"type": "schema", "params": {"schema": {"type": "object"}}},
                {"type": "field_present", "params": {"field_name": "a.b", "expected_value": 1}},
                {"type": "agent_task", "params": {"task_prompt_to_claude": "Check {CODE_TO_VALIDATE}",
                                                  "validation_model_alias": "max/opus", "mcp_config": MCP,
                                                  "success_criteria": {"agent_must_report_true": "ok"}}},
                {"type": "not_empty"},
                "json",
            ],
        }
    )
    assert kwargs["validate"] == [
        {"type": "length", "params": {"min": 3, "max": 9}},
        {"type": "regex", "params": {"pattern": "^a", "flags": "im"}},
        {"type": "contains", "params": {"ignore_case": True, "text": "a"}},
        {"type": "contains", "params": {"ignore_case": True, "text": "b"}},
        {"type": "contains", "params": {"ignore_case": False, "text": "C"}},
        {"type": "python", "params": {}},
        {"type": "schema", "params": {"schema": {"type": "object"}}},
        {"type": "field_present", "params": {"path": "a.b", "equals": 1}},
        {"type": "agent_task", "params": {"task_prompt_to_claude": "Check {CODE_TO_VALIDATE}",
                                          "validation_model": "max/opus", "mcp_config": MCP,
                                          "criteria": {"must_report_true": "ok"}}},
        {"type": "not_empty", "params": {}},
        "json",
    ]
    assert len(parse_specs(kwargs["validate"])) == 11


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"messages": MSG, "api_base": "http://x"}, ["unknown llm_config key 'api_base'", "endpoint"]),
        ({"messages": MSG, "debug_tool_name": "perplexity"}, ["'debug_tool_name'"]),
        ({"messages": MSG, "foo": 1, "bar": 2}, ["'foo'", "1 more", "'bar'"]),
        ({"model": "x/y"}, ["no 'messages'"]),
        ({"messages": MSG, "stream": True}, ["'stream': true", "astream"]),
        ({"messages": MSG, "retry_config": {"max_attempts": 2, "use_jitter": True}}, ["retry_config", "'use_jitter'"]),
        ({"messages": MSG, "retry_config": {"max_attempts": 0}}, ["retry_config.max_attempts", ">= 1"]),
        ({"messages": MSG, "retry_config": []}, ["'retry_config' must be an object"]),
        ({"messages": MSG, "validation": [{"type": "json", "args": {}}]}, ["validation[0]", "'args'"]),
        ({"messages": MSG, "validation": [{"params": {}}]}, ["validation[0] must be"]),
        ({"messages": MSG, "validation": [{"type": "code", "params": {"language": "rust"}}]}, ["only language 'python'"]),
        ({"messages": MSG, "validation": [{"type": "field_present", "params": {"field_name": "a", "should_exist": False}}]},
         ["should_exist=false"]),
        ({"messages": MSG, "validation": [{"type": "agent_task", "params": {"task_prompt": "x", "required_mcp_tools": ["a"]}}]},
         ["'required_mcp_tools' has no equivalent", "mcp_config"]),
        ({"messages": MSG, "validation": [{"type": "regex", "params": {"pattern": "a", "flags": 4096}}]}, ["flags 4096"]),
        ({"messages": MSG, "mcp_config": {"servers": {}}}, ["'mcp_config' must be an MCP config"]),
        ({"messages": MSG, "max_attempts_before_human": 0}, ["'max_attempts_before_human' must be an integer >= 1"]),
        ({"messages": MSG, "response_format": "json"}, ["'response_format' must be an object"]),
        ({"messages": MSG, "default_validate": "yes"}, ["'default_validate' must be true or false"]),
        ({"messages": MSG, "model": 5}, ["'model' must be a string"]),
    ],
)
def test_unknown_keys_and_bad_values_are_errors(config: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        map_llm_config(config)
    for word in words:
        assert word in str(info.value)


def test_retry_delays_map_to_a_retry_setting(caplog: pytest.LogCaptureFixture) -> None:
    kwargs = map_llm_config(
        {"messages": MSG, "retry_config": {"max_attempts": 5, "initial_delay": 0.5, "max_delay": 8, "backoff_factor": 2}}
    )
    assert kwargs["max_attempts"] == 5
    assert kwargs["retry"] == {"max_retries": 4, "base_delay": 0.5, "max_delay": 8.0}
    assert not caplog.records
    map_llm_config({"messages": MSG, "retry_config": {"backoff_factor": 3}})
    assert "backoff_factor=3" in caplog.text and "not configurable" in caplog.text


async def test_retry_config_retries_transient_failures(openai_at: Callable[[ScriptedLLMServer], None]) -> None:
    script = [Reply(fault=Fault.http(503)), Reply(text="ok")]
    async with ScriptedLLMServer(script) as srv:
        openai_at(srv)
        resp = await llm_call.acall_config(
            {"model": "openai/m", "messages": MSG, "retry_config": {"max_attempts": 2, "initial_delay": 0, "max_delay": 0}}
        )
    assert resp.text == "ok"
    async with ScriptedLLMServer([Reply(fault=Fault.http(503), times=None)]) as srv:
        openai_at(srv)
        with pytest.raises(ProviderHTTPError):
            await llm_call.acall_config(
                {"model": "openai/m", "messages": MSG, "retry_config": {"max_attempts": 2, "initial_delay": 0, "max_delay": 0}}
            )
        assert len([r for r in srv.requests if r.path.endswith("/chat/completions")]) == 2


@pytest.fixture
def openai_at(monkeypatch: pytest.MonkeyPatch, use_settings: Callable[..., Settings]) -> Callable[[ScriptedLLMServer], None]:
    def install(srv: ScriptedLLMServer) -> None:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        use_settings(openai={"base_url": srv.openai_base_url})

    return install


async def test_acall_config_validates_and_retries(openai_at: Callable[[ScriptedLLMServer], None]) -> None:
    script = [Reply(text="The sky is very blue today", times=1), Reply(text="Blue endless sky", times=None)]
    async with ScriptedLLMServer(script) as srv:
        openai_at(srv)
        resp = await llm_call.acall_config(
            {
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": "Describe the sky in exactly 3 words."}],
                "validation": [{"type": "length", "params": {"min_length": 3}},
                               {"type": "regex", "params": {"pattern": r"^\W*\w+\W+\w+\W+\w+\W*$"}}],
                "retry_config": {"max_attempts": 3},
                "temperature": 0,
            }
        )
        bodies = [r.body for r in srv.requests if r.path.endswith("/chat/completions")]
    assert resp.text == "Blue endless sky"
    assert [a.ok for a in resp.attempts if a.kind == "answer"] == [False, True]
    assert bodies[0]["temperature"] == 0


async def test_acall_config_exhausted_validation_raises(openai_at: Callable[[ScriptedLLMServer], None]) -> None:
    async with ScriptedLLMServer([], default=Reply(text="{}", times=None)) as srv:
        openai_at(srv)
        with pytest.raises(ValidationExhausted):
            await llm_call.acall_config(
                {"model": "openai/m", "messages": MSG, "response_format": {"type": "json_object"},
                 "validation": [{"type": "field_present", "params": {"field_name": "name"}}],
                 "retry_config": {"max_attempts": 2}}
            )
        assert len([r for r in srv.requests if r.path.endswith("/chat/completions")]) == 2


def test_call_config_from_sync_code(openai_at: Callable[[ScriptedLLMServer], None]) -> None:
    with ScriptedLLMServer([], default=Reply(text="4", times=None)).running() as srv:
        openai_at(srv)
        resp = llm_call.call_config({"model": "openai/m", "messages": [{"role": "user", "content": "2+2?"}]},
                                    validate=["contains:4"])
    assert resp.text == "4"


def test_import_llm_call_does_not_load_the_legacy_module() -> None:
    code = "import sys, llm_call; assert 'llm_call.legacy' not in sys.modules; llm_call.acall_config; assert 'llm_call.legacy' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
