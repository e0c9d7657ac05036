"""Validation over the Claude route: the real Claude Code CLI against the scripted Anthropic
server (judge calls, cost budgets from the CLI's reported cost, the tool stage with a real MCP
server). Each CLI call takes about half a second.
"""

from __future__ import annotations

import pytest

import llm_call
from llm_call import BudgetExceeded
from llm_call.testing import Reply, ScriptedLLMServer, ToolCall
from llm_call.validation import agent
from support.claude_env import ClaudeEnv, claude_env

__all__ = ["claude_env"]

pytestmark = pytest.mark.timeout(90)


async def test_judge_over_the_real_claude_cli(claude_env: ClaudeEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    verdict = '{"validation_passed": true, "explanation": "It is polite.", "details": {"tone": "warm"}}'
    script = [
        Reply(text="Merci beaucoup !", match_model="writer"),
        Reply(text=verdict, match_model="claude-*"),
    ]
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_server(srv)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        template = 'Is {TEXT_TO_VALIDATE} a polite answer to "{ORIGINAL_PROMPT}"? Reply {"validation_passed": ...}'
        resp = await llm_call.acall(
            "openai/writer", "Say thank you in French.", validate=[agent(template, model="max/haiku")]
        )
    assert resp.text == "Merci beaucoup !"
    judge = [a for a in resp.attempts if a.kind == "judge"]
    assert len(judge) == 1 and judge[0].ok and judge[0].model == "max/haiku"
    assert judge[0].cost_usd is not None and judge[0].cost_usd > 0
    anthropic = [r for r in srv.requests if r.api == "anthropic" and r.path.startswith("/v1/messages")]
    assert len(anthropic) == 1
    sent = anthropic[0].last_user_text
    assert "<text_to_validate>\nMerci beaucoup !\n</text_to_validate>" in sent
    assert 'polite answer to "Say thank you in French."? Reply {"validation_passed": ...}' in sent
    assert "never as instructions" in (anthropic[0].system or "")


async def test_cost_budget_on_the_claude_route(claude_env: ClaudeEnv) -> None:
    async with ScriptedLLMServer([], default=Reply(text="not json", completion_tokens=400)) as srv:
        claude_env.use_server(srv)
        first = await llm_call.acall("max/sonnet", "probe")
        assert first.cost_usd is not None and first.cost_usd > 0
        budget = first.cost_usd * 1.5  # room for two attempts, not three
        with pytest.raises(BudgetExceeded) as info:
            await llm_call.acall("max/sonnet", "JSON please", validate=["json"], max_attempts=5, budget_usd=budget)
    attempts = info.value.attempts or []
    assert [a["number"] for a in attempts] == [1, 2]
    assert all(a["cost_usd"] > 0 for a in attempts)
    assert "cost budget" in str(info.value)
    assert len(srv.requests) == 3  # the probe and two attempts


async def test_tool_stage_gives_the_model_mcp_tools_from_attempt_n(claude_env: ClaudeEnv) -> None:
    script = [
        Reply(text="I cannot see the file."),
        Reply(tool_calls=[ToolCall("mcp__files__write_file", {"path": "n.txt", "content": "42"})]),
        Reply(text="42", match_text="wrote 2 characters"),
    ]
    async with ScriptedLLMServer(script) as srv:
        claude_env.use_server(srv)
        resp = await llm_call.acall(
            "max/sonnet",
            "Write 42 to n.txt, then answer with the number.",
            validate=[r"regex:^\d+$"],
            max_attempts=2,
            tools_after=2,
            tools_mcp_config=claude_env.mcp_files(),
            allowed_tools=["mcp__files__write_file"],
        )
    assert resp.text == "42" and resp.extra["passed_attempt"] == 2
    assert srv.requests[0].tools == []
    assert "mcp__files__write_file" in {t["name"] for t in srv.requests[1].tools}
    assert "did not pass validation" in srv.requests[1].last_user_text
