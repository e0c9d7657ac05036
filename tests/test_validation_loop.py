"""The validation retry loop against the scripted server: feedback with the conversation,
exhaustion, escalation, human review and resume, budgets, streaming, progress events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import BaseModel

import llm_call
from llm_call import (
    AuthError,
    BudgetExceeded,
    HumanReviewNeeded,
    UsageError,
    ValidationExhausted,
)
from llm_call._request import build_request
from llm_call.retry import ManualClock
from llm_call.testing import Fault, Reply, ScriptedLLMServer, ToolCall
from llm_call.types import Chunk, Request, Response, Usage
from llm_call.validation import resume_validated
from support.progress import recorder


@pytest.fixture
async def srv(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ScriptedLLMServer]:
    async with ScriptedLLMServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield server




async def test_invalid_json_then_valid_sends_conversation_with_feedback(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="Sure! The answer is 4."), Reply(text='{"answer": 4}'))
    events, listen = recorder()
    resp = await llm_call.acall("openai/m", "What is 2+2? Reply in JSON.", validate=["json"], progress=listen)
    assert resp.text == '{"answer": 4}'
    assert resp.parsed == {"answer": 4}
    assert resp.extra["passed_attempt"] == 2
    assert len(srv.requests) == 2
    second = srv.requests[1].messages
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[0]["content"] == "What is 2+2? Reply in JSON."
    assert second[1]["content"] == "Sure! The answer is 4."
    feedback = second[2]["content"]
    assert "attempt 1 of 3" in feedback and "json:" in feedback and "not valid JSON" in feedback
    assert "What is 2+2? Reply in JSON." in feedback  # the request restated
    assert [(a.number, a.kind, a.ok) for a in resp.attempts] == [(1, "answer", False), (2, "answer", True)]
    assert resp.attempts[0].text == "Sure! The answer is 4." and "not valid JSON" in (resp.attempts[0].feedback or "")
    assert resp.attempts[0].verdicts[0]["validator"] == "json"
    assert resp.usage.total_tokens == sum(a.usage.total_tokens for a in resp.attempts)
    kinds = [k for k, _ in events]
    assert kinds == ["attempt", "validation_failed", "attempt"]
    assert events[0][1] == {"number": 1, "model": "openai/m"}
    assert events[1][1]["attempt"] == 1 and "JSON" in events[1][1]["feedback"]


async def test_a_tool_call_answer_is_returned_unvalidated_then_the_final_text_is_validated(
    srv: ScriptedLLMServer,
) -> None:
    srv.add(Reply(tool_calls=[ToolCall("lookup", {"q": "2+2"}, id="call_1")]), Reply(text="four"), Reply(text='{"a": 4}'))
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    step = await llm_call.acall("openai/m", "2+2 as JSON", tools=tools, validate=["json"])
    assert [c.name for c in step.tool_calls] == ["lookup"]
    assert step.extra["validation"] == "skipped: tool_calls" and step.parsed is None
    assert len(srv.requests) == 1  # no feedback retry for a tool step
    messages = [
        {"role": "user", "content": "2+2 as JSON"},
        {"role": "assistant", "content": None, "tool_calls": [c.to_openai() for c in step.tool_calls]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]
    final = await llm_call.acall("openai/m", messages=messages, tools=tools, validate=["json"])
    assert final.parsed == {"a": 4} and final.extra["passed_attempt"] == 2


async def test_a_streamed_tool_call_answer_is_not_retried_by_validation(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(tool_calls=[ToolCall("lookup", {"q": "x"}, id="call_1")]))
    chunks = [c async for c in llm_call.astream("openai/m", "go", tools=[], validate=["json"])]
    assert not any(c.event == "retry" for c in chunks)
    assert [c.name for c in llm_call.assemble_tool_calls(d for c in chunks for d in c.tool_calls)] == ["lookup"]
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].data is not None and chunks[-1].data["validation"] == "skipped: tool_calls"
    assert len(srv.requests) == 1


async def test_always_invalid_exhausts_with_every_attempt_recorded(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="prose", times=None))
    with pytest.raises(ValidationExhausted) as info:
        await llm_call.acall("openai/m", "JSON please", validate=["json", "length:max=3"], max_attempts=3)
    attempts = info.value.attempts or []
    assert [(a["number"], a["ok"]) for a in attempts] == [(1, False), (2, False), (3, False)]
    assert all("json:" in a["feedback"] and "length:" in a["feedback"] for a in attempts)
    assert len(srv.requests) == 3
    assert len(srv.requests[2].messages) == 5  # user, (assistant, feedback) x 2
    assert "after 3 attempts" in str(info.value) and "not valid JSON" in str(info.value)
    restored = llm_call.errors.error_from_dict(llm_call.errors.error_to_dict(info.value))
    assert isinstance(restored, ValidationExhausted) and len(restored.attempts or []) == 3


async def test_escalation_gives_the_next_model_the_history_and_feedback(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="nope", match_model="weak", times=None), Reply(text="42", match_model="strong"))
    events, listen = recorder()
    resp = await llm_call.acall(
        "openai/weak", "Number only", validate=[r"regex:^\d+$"], max_attempts=3, escalate=["openai/strong"],
        progress=listen,
    )
    assert [r.model for r in srv.requests] == ["weak", "weak", "strong"]
    strong = srv.requests[2].messages
    assert [m["content"] for m in strong if m["role"] == "assistant"] == ["nope", "nope"]
    assert "attempt 2 of 3" in strong[-1]["content"] and "regex" in strong[-1]["content"]
    assert resp.text == "42" and resp.attempts[-1].model == "openai/strong"
    assert ("escalated", {"from_model": "openai/weak", "to_model": "openai/strong", "attempt": 3}) in events


async def test_escalation_with_fewer_attempts_than_models_is_a_usage_error(srv: ScriptedLLMServer) -> None:
    with pytest.raises(UsageError, match="fewer than the 3 models"):
        await llm_call.acall("openai/a", "q", validate=["json"], max_attempts=2, escalate=["openai/b", "openai/c"])
    assert srv.requests == []


async def test_response_model_fills_parsed_with_an_instance(srv: ScriptedLLMServer) -> None:
    class Answer(BaseModel):
        value: int

    srv.add(Reply(text='{"value": "x"}'), Reply(text='```json\n{"value": 7}\n```'))
    resp = await llm_call.acall("openai/m", "value?", response_model=Answer)
    assert resp.parsed == Answer(value=7)
    assert "$.value" in srv.requests[1].last_user_text
    assert resp.to_dict()["parsed"] == {"value": 7}


async def test_provider_auth_error_inside_the_loop_is_raised_not_retried(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(401)))
    with pytest.raises(AuthError):
        await llm_call.acall("openai/m", "q", validate=["json"])
    assert len(srv.requests) == 1


# -- human stage -------------------------------------------------------------------------------


async def test_human_after_raises_review_and_resume_continues(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="bad 1"), Reply(text="bad 2"), Reply(text='{"fixed": true}', match_text="Use the key"))
    with pytest.raises(HumanReviewNeeded) as info:
        await llm_call.acall("openai/m", "JSON please", validate=["json"], max_attempts=5, human_after=2)
    review = info.value
    assert len(srv.requests) == 2
    assert review.history is not None and review.history[-1] == {"role": "assistant", "content": "bad 2"}
    assert review.errors is not None and len(review.errors) == 2 and "not valid JSON" in review.errors[0]
    assert [a["number"] for a in review.attempts or []] == [1, 2]

    request, opts = build_request("openai/m", "JSON please", validate=["json"], max_attempts=5, human_after=2)
    resp = await resume_validated(
        request, opts, history=review.history, attempts=review.attempts, reply='Use the key "fixed".'
    )
    assert resp.parsed == {"fixed": True}
    assert srv.requests[2].messages[-1] == {"role": "user", "content": 'Use the key "fixed".'}
    assert [(a.number, a.ok) for a in resp.attempts] == [(1, False), (2, False), (3, True)]
    assert resp.extra["passed_attempt"] == 3


async def test_human_after_at_least_attempts_asks_a_human_when_they_run_out(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="bad", times=None))
    with pytest.raises(HumanReviewNeeded):
        await llm_call.acall("openai/m", "q", validate=["json"], max_attempts=2, human_after=2)
    assert len(srv.requests) == 2


# -- budgets -------------------------------------------------------------------------------------


async def test_token_budget_stops_with_budget_exceeded(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="bad", prompt_tokens=40, completion_tokens=20, times=None))
    with pytest.raises(BudgetExceeded) as info:
        await llm_call.acall("openai/m", "q", validate=["json"], max_attempts=5, budget_tokens=100)
    assert len(srv.requests) == 2  # 60 tokens, then 120 >= 100: no third call
    assert [a["number"] for a in info.value.attempts or []] == [1, 2]
    assert "token budget of 100" in str(info.value)


async def test_deadline_stops_with_budget_exceeded_on_fake_clock(srv: ScriptedLLMServer) -> None:
    clock = ManualClock()

    def slow_validator(text: str) -> str:
        clock.advance(6)  # each attempt "takes" 6 s on the fake clock
        return "still wrong"

    srv.add(Reply(text="x", times=None))
    with pytest.raises(BudgetExceeded, match="deadline passed"):
        await llm_call.acall(
            "openai/m", "q", validate=[slow_validator], max_attempts=5, deadline_s=10, retry=clock.policy()
        )
    assert len(srv.requests) == 2


class CostingProvider:
    """An in-process provider that reports a cost, as the Claude route does (total_cost_usd)."""

    name = "costing"

    def __init__(self, answers: list[str], cost: float) -> None:
        self.answers = answers
        self.cost = cost
        self.requests: list[Request] = []

    async def complete(self, request: Request) -> Response:
        self.requests.append(request)
        text = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return Response(text=text, model=f"max/{request.model}", usage=Usage(10, 5), cost_usd=self.cost)

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        resp = await self.complete(request)
        yield Chunk(text=resp.text, model=resp.model)
        yield Chunk(model=resp.model, finish_reason="stop", usage=resp.usage)

    async def aclose(self) -> None:
        return None


@pytest.fixture
def costing(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str], float], CostingProvider]:
    from llm_call.providers import router

    create = router._create

    def install(answers: list[str], cost: float) -> CostingProvider:
        provider = CostingProvider(answers, cost)
        monkeypatch.setattr(
            router, "_create", lambda route, settings: provider if route.kind == "max" else create(route, settings)
        )
        router.reset_providers()
        return provider

    return install


async def test_cost_budget_stops_with_budget_exceeded(costing: Callable[[list[str], float], CostingProvider]) -> None:
    provider = costing(["bad"], 0.04)
    with pytest.raises(BudgetExceeded) as info:
        await llm_call.acall("max/sonnet", "q", validate=["json"], max_attempts=10, budget_usd=0.1)
    assert len(provider.requests) == 3  # 0.04, 0.08, 0.12 >= 0.10
    assert "cost budget of $0.1" in str(info.value)
    assert sum(a["cost_usd"] for a in info.value.attempts or []) == pytest.approx(0.12)


async def test_judge_calls_count_toward_the_cost_budget(costing: Callable[[list[str], float], CostingProvider]) -> None:
    provider = costing(["answer", '{"validation_passed": false, "explanation": "meh"}'] * 5, 0.03)
    judge = llm_call.validation.agent("ok? {TEXT_TO_VALIDATE}", model="max/haiku")
    with pytest.raises(BudgetExceeded) as info:
        await llm_call.acall("max/sonnet", "q", validate=[judge], max_attempts=10, budget_usd=0.1)
    kinds = [a["kind"] for a in info.value.attempts or []]
    assert kinds == ["answer", "judge", "answer", "judge"]  # 0.12 spent: no further call
    assert len(provider.requests) == 4


# -- tool stage ------------------------------------------------------------------------------------


async def test_tool_stage_adds_mcp_config_from_attempt_n(costing: Callable[[list[str], float], CostingProvider]) -> None:
    provider = costing(["bad", "bad", "{}"], 0.0)
    cfg = {"mcpServers": {"files": {"command": "python", "args": ["server.py"]}}}
    resp = await llm_call.acall(
        "max/sonnet", "q", validate=["json"], max_attempts=3, tools_after=2, tools_mcp_config=cfg
    )
    assert resp.extra["passed_attempt"] == 3
    assert ["mcp_config" in r.options for r in provider.requests] == [False, True, True]
    assert provider.requests[1].options["mcp_config"] == cfg


async def test_tool_stage_on_a_non_claude_route_is_a_usage_error(srv: ScriptedLLMServer) -> None:
    with pytest.raises(UsageError, match="only on the Claude route"):
        await llm_call.acall(
            "openai/m", "q", validate=["json"], tools_after=2, tools_mcp_config={"mcpServers": {}}
        )
    with pytest.raises(UsageError, match="go together"):
        await llm_call.acall("openai/m", "q", validate=["json"], tools_after=2)
    assert srv.requests == []


# -- streaming ---------------------------------------------------------------------------------------


async def test_stream_with_validation_marks_attempts_and_retries(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="not json at all"), Reply(text='{"a": 1}'))
    chunks = [c async for c in llm_call.astream("openai/m", "JSON", validate=["json"])]
    first = "".join(c.text for c in chunks if c.attempt == 1 and not c.event)
    second = "".join(c.text for c in chunks if c.attempt == 2 and not c.event)
    assert first == "not json at all" and second == '{"a": 1}'
    retry = [c for c in chunks if c.event == "retry"]
    assert len(retry) == 1 and retry[0].attempt == 2 and "JSON" in (retry[0].data or {})["feedback"]
    finals = [c for c in chunks if c.finish_reason]
    assert finals == [chunks[-1]] and chunks[-1].attempt == 2
    assert (chunks[-1].data or {})["passed_attempt"] == 2
    assert (chunks[-1].data or {})["parsed"] == {"a": 1}
    assert srv.requests[1].stream and srv.requests[1].messages[1]["content"] == "not json at all"


async def test_stream_exhausted_raises_after_the_text(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="nope", times=None))
    seen: list[Chunk] = []
    with pytest.raises(ValidationExhausted) as info:
        async for chunk in llm_call.astream("openai/m", "JSON", validate=["json"], max_attempts=2):
            seen.append(chunk)
    assert [c.event for c in seen if c.event] == ["retry"]
    assert not any(c.finish_reason for c in seen)
    assert len(info.value.attempts or []) == 2
