"""Batch files: parsing every line form, checking (``--dry-run``), results, resume files, summaries.

No network here: the runs against the scripted server are in ``test_batch_run.py`` and the
command line in ``test_batch_cli.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_call.batch import (
    NATIVE_KEYS,
    BatchItem,
    BatchReport,
    ItemResult,
    check_items,
    parse_line,
    percentile,
    read_done,
    read_items,
    result_from_record,
    summarize,
)
from llm_call.config import Settings
from llm_call.errors import (
    HumanReviewNeeded,
    ProviderHTTPError,
    TaskCancelled,
    TaskInterrupted,
    UsageError,
    ValidationExhausted,
    error_to_dict,
)
from llm_call.types import TaskRecord, TaskStatus

MSG = [{"role": "user", "content": "hi"}]


def settings(**data: Any) -> Settings:
    return Settings.model_validate(data)


# -- one line ----------------------------------------------------------------------------------


def test_native_line_maps_every_key_to_acall_arguments() -> None:
    item = parse_line(
        {
            "id": "q1",
            "description": "free text",
            "model": "openai/gpt-4o-mini",
            "prompt": "What is 2 + 2?",
            "system": "Be brief.",
            "validation": "contains:4",
            "max_attempts": 3,
            "escalate": "openai/gpt-4o",
            "fallbacks": ["openai/gpt-4.1"],
            "timeout": 30,
            "temperature": 0.2,
            "max_tokens": 20,
            "budget_usd": 0.5,
            "budget_tokens": 1000,
            "deadline_s": 60,
            "tools_after": 2,
            "human_after": 3,
            "options": {"seed": 7, "stop": ["\n"]},
        },
        4,
    )
    assert item.id == "q1" and item.line == 4
    assert item.kwargs == {
        "model": "openai/gpt-4o-mini",
        "prompt": "What is 2 + 2?",
        "system": "Be brief.",
        "validate": ["contains:4"],
        "max_attempts": 3,
        "escalate": ["openai/gpt-4o"],
        "fallbacks": ["openai/gpt-4.1"],
        "timeout": 30,
        "temperature": 0.2,
        "max_tokens": 20,
        "budget_usd": 0.5,
        "budget_tokens": 1000,
        "deadline_s": 60,
        "tools_after": 2,
        "human_after": 3,
        "seed": 7,
        "stop": ["\n"],
    }


def test_claude_options_and_allowed_tools_as_a_comma_list() -> None:
    mcp = {"mcpServers": {"files": {"command": "python", "args": ["server.py"]}}}
    item = parse_line(
        {"id": 7, "model": "max/sonnet", "prompt": "x", "mcp_config": mcp, "allowed_tools": "a, b", "tools_mcp_config": mcp},
        1,
    )
    assert item.id == "7"
    assert item.kwargs["allowed_tools"] == ["a", "b"]
    assert item.kwargs["mcp_config"] == mcp and item.kwargs["tools_mcp_config"] == mcp


def test_missing_id_is_the_line_number() -> None:
    assert parse_line({"model": "openai/x", "prompt": "hi"}, 12).id == "line-12"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"id": "a", "promt": "x"}, ["line 3", "'promt'", "did you mean 'prompt'"]),
        ({"id": "a", "prompt": 5}, ["line 3", "'prompt' must be a string"]),
        ({"id": "a", "prompt": "x", "max_attempts": "3"}, ["line 3", "'max_attempts' must be an integer"]),
        ({"id": "a", "prompt": "x", "timeout": True}, ["'timeout' must be a number"]),
        ({"id": "a", "prompt": "x", "mcp_config": {"servers": {}}}, ["'mcp_config'", "mcpServers"]),
        ({"id": "a", "prompt": "x", "escalate": [1]}, ["'escalate' must be a string or a list"]),
        ({"id": "a", "messages": "hi"}, ["'messages' must be a list"]),
        ({"id": "a", "prompt": "x", "options": {"model": "y"}}, ["options ['model'] must be given as top-level keys"]),
        ({"id": "a", "prompt": "x", "options": []}, ["'options' must be an object"]),
        ({"id": ["a"], "prompt": "x"}, ["'id' must be a string or an integer"]),
        ({"id": " ", "prompt": "x"}, ["'id' is empty"]),
        ([1, 2], ["line 3", "expected a JSON object"]),
    ],
)
def test_bad_native_lines_name_the_key_and_the_line(data: Any, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse_line(data, 3)
    for word in words:
        assert word in str(info.value)


def test_original_llm_config_wrapped_and_bare() -> None:
    config = {
        "model": "openai/gpt-4o-mini",
        "messages": MSG,
        "max_attempts_before_tool_use": 2,
        "retry_config": {"max_attempts": 4},
    }
    wrapped = parse_line({"test_case_id": "t1", "description": "d", "llm_config": config}, 2)
    bare = parse_line({"id": "t1", **config}, 2)
    assert wrapped.id == bare.id == "t1"
    assert wrapped.kwargs == bare.kwargs
    assert wrapped.kwargs["tools_after"] == 2 and wrapped.kwargs["max_attempts"] == 4


def test_original_form_errors_name_the_key_and_the_line() -> None:
    with pytest.raises(UsageError, match=r"line 5: unknown llm_config key 'api_base'"):
        parse_line({"id": "x", "llm_config": {"messages": MSG, "api_base": "http://h"}}, 5)
    with pytest.raises(UsageError, match=r"line 5: unknown key 'extra' next to 'llm_config'"):
        parse_line({"id": "x", "extra": 1, "llm_config": {"messages": MSG}}, 5)
    with pytest.raises(UsageError, match=r"line 5: unknown key 'prompt'.*original llm_config format because it has 'retry_config'"):
        parse_line({"id": "x", "prompt": "hi", "retry_config": {"max_attempts": 2}}, 5)
    with pytest.raises(UsageError, match="not both"):
        parse_line({"id": "x", "test_case_id": "y", "llm_config": {"messages": MSG}}, 5)


def test_native_keys_are_the_issue_keys_and_more() -> None:
    required = {"id", "model", "prompt", "messages", "system", "validation", "max_attempts", "escalate",
                "fallbacks", "mcp_config", "allowed_tools", "timeout"}
    assert required <= set(NATIVE_KEYS)


# -- a file -------------------------------------------------------------------------------------


def test_read_items_reports_every_bad_line_and_skips_comments(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        "# a comment\n"
        '{"id": "a", "model": "openai/x", "prompt": "hi"}\n'
        "\n"
        "{not json\n"
        '{"id": "b", "modle": "openai/x", "prompt": "hi"}\n'
        '// another comment\n'
        '{"id": "c", "model": "openai/x", "prompt": "hi"}\n'
    )
    items, problems = read_items(path)
    assert [(i.id, i.line) for i in items] == [("a", 2), ("c", 7)]
    assert [p.line for p in problems] == [4, 5]
    assert "not valid JSON" in problems[0].message
    assert "'modle'" in str(problems[1]) and str(problems[1]).startswith("line 5: ")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n# nothing\n")
    items, problems = read_items(empty)
    assert not items and "has no requests" in str(problems[0])
    with pytest.raises(UsageError, match="cannot read batch file"):
        read_items(tmp_path / "missing.jsonl")


def test_a_file_saved_with_a_byte_order_mark_reads_like_any_other(tmp_path: Path) -> None:
    # Windows editors (Notepad, PowerShell's Out-File) start UTF-8 files with a BOM; it was
    # "line 1: not valid JSON: Unexpected UTF-8 BOM"
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "model": "openai/x", "prompt": "hi"}\n')
    items, problems = read_items(path)
    assert problems == [] and [i.id for i in items] == ["a"]


def test_check_items_finds_every_problem_without_sending_anything() -> None:
    s = settings(aliases={"max/text-general": "max/sonnet"}, endpoints={"vllm": {"base_url": "http://127.0.0.1:9/v1"}})
    items = [
        parse_line({"id": "ok", "model": "max/text-general", "prompt": "hi", "validation": ["json", "length:max=9"]}, 1),
        parse_line({"id": "bad-model", "model": "nonsense", "prompt": "hi"}, 2),
        parse_line({"id": "bad-spec", "model": "openai/x", "prompt": "hi", "validation": ["jsn"]}, 3),
        parse_line({"id": "bad-spec", "model": "openai/x", "prompt": "hi"}, 4),
        parse_line({"id": "claude-opt", "model": "vllm/m", "prompt": "hi", "allowed_tools": ["x"]}, 5),
        parse_line({"id": "no-prompt", "model": "openai/x"}, 6),
        parse_line({"id": "bad-escalate", "model": "openai/x", "prompt": "hi", "validation": "json", "escalate": ["zzz"], "max_attempts": 0}, 7),
        parse_line({"id": "legacy-spec", "llm_config": {"model": "openai/x", "messages": MSG,
                                                         "validation": [{"type": "length", "params": {"min_length": "x"}}]}}, 8),
    ]
    problems = check_items(items, s)
    by_line: dict[int, list[str]] = {}
    for p in problems:
        by_line.setdefault(p.line, []).append(p.message)
    assert 1 not in by_line
    assert "unknown model 'nonsense'" in by_line[2][0]
    assert "unknown validator 'jsn'" in by_line[3][0]
    assert by_line[4] == ["duplicate id 'bad-spec' (first on line 3)"]
    assert "apply only to max/*" in by_line[5][0]
    assert "no prompt and no messages" in by_line[6][0]
    assert any("max_attempts must be >= 1" in m for m in by_line[7])
    assert any("escalate 'zzz'" in m for m in by_line[7])
    assert "min" in by_line[8][0] and "integer" in by_line[8][0]
    assert [i.route for i in items[:1]] == ["max"]
    assert items[4].route == "vllm"


# -- results --------------------------------------------------------------------------------------


def _record(status: TaskStatus, **kw: Any) -> TaskRecord:
    return TaskRecord(id="tk_1", status=status, request={}, route="openai/x", started_at=10.0, finished_at=12.5, **kw)


ATTEMPT = {"number": 1, "model": "openai/x", "kind": "answer", "ok": False, "text": "no", "feedback": "bad",
           "error": None, "latency_s": 0.1, "usage": {"prompt_tokens": 3, "completion_tokens": 2}, "cost_usd": 0.01}


def test_result_of_a_success() -> None:
    result = {"text": "4", "model": "openai/x", "usage": {"prompt_tokens": 5, "completion_tokens": 1},
              "cost_usd": 0.002, "latency_s": 0.05, "parsed": {"a": 1},
              "attempts": [dict(ATTEMPT, ok=True, cost_usd=0.002, usage={"prompt_tokens": 5, "completion_tokens": 1})]}
    item = BatchItem("q", 3, {"model": "openai/x"}, route="openai")
    out = result_from_record(item, _record(TaskStatus.SUCCEEDED, result=result))
    assert out.status == "passed" and out.passed
    assert (out.text, out.parsed, out.model, out.route, out.line, out.task_id) == ("4", {"a": 1}, "openai/x", "openai", 3, "tk_1")
    assert out.latency_s == 2.5
    assert out.usage["total_tokens"] == 6 and out.cost_usd == 0.002
    assert out.error_type is None


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (TaskStatus.FAILED, ValidationExhausted("no valid answer", attempts=[ATTEMPT, ATTEMPT]), "failed_validation"),
        (TaskStatus.FAILED, ProviderHTTPError("HTTP 400", provider="openai", model="x", status=400), "error"),
        (TaskStatus.NEEDS_REVIEW, HumanReviewNeeded("review", history=[], errors=["bad"], attempts=[ATTEMPT]), "needs_review"),
        (TaskStatus.CANCELLED, TaskCancelled("cancelled", task_id="tk_1"), "cancelled"),
        (TaskStatus.INTERRUPTED, TaskInterrupted("died", task_id="tk_1"), "error"),
    ],
)
def test_a_failure_is_never_a_pass(status: TaskStatus, error: Exception, expected: str) -> None:
    item = BatchItem("q", 1, {"model": "openai/x"}, route="openai")
    out = result_from_record(item, _record(status, error=error_to_dict(error)))
    assert out.status == expected and not out.passed
    assert out.text is None
    assert out.error_type == type(error).__name__ and out.error_message
    attempts = getattr(error, "attempts", None) or []
    assert len(out.attempts) == len(attempts)
    if attempts:
        assert out.cost_usd == pytest.approx(0.01 * len(attempts))
        assert out.usage["total_tokens"] == 5 * len(attempts)


def test_a_success_without_a_result_is_an_error() -> None:
    out = result_from_record(BatchItem("q", 1, {}), _record(TaskStatus.SUCCEEDED))
    assert out.status == "error"


def test_item_result_round_trips() -> None:
    r = ItemResult("q", "passed", line=2, route="max", text="t", attempts=[ATTEMPT], usage={"total_tokens": 1}, cost_usd=0.1)
    assert ItemResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


# -- output files (resume) --------------------------------------------------------------------------


def test_read_done_repairs_an_unfinished_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    good = [ItemResult("a", "passed"), ItemResult("b", "error")]
    out.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in good) + '{"id": "c", "sta')
    assert set(read_done(out)) == {"a", "b"}
    assert out.read_text().endswith('"sta')  # not repaired unless asked
    assert set(read_done(out, repair=True)) == {"a", "b"}
    assert out.read_text().endswith("\n") and out.read_text().count("\n") == 2


def test_read_done_of_a_missing_or_foreign_file(tmp_path: Path) -> None:
    assert read_done(tmp_path / "none.jsonl") == {}
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"name": "not a result"}\n')
    with pytest.raises(UsageError, match="line 1 is not a batch result"):
        read_done(foreign)


# -- summary -----------------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_summary_counts_by_route_with_latency_and_cost() -> None:
    results = [
        ItemResult("a", "passed", route="openai", latency_s=1.0, cost_usd=0.5),
        ItemResult("b", "failed_validation", route="openai", latency_s=3.0, cost_usd=0.25),
        ItemResult("c", "error", route="max", latency_s=None),
        ItemResult("d", "needs_review", route="max", latency_s=2.0),
        ItemResult("e", "cancelled", route="max", latency_s=4.0),
    ]
    rows = {r.route: r for r in summarize(results)}
    assert list(rows) == ["max", "openai", "total"]
    assert (rows["openai"].passed, rows["openai"].failed_validation, rows["openai"].errors) == (1, 1, 0)
    assert (rows["max"].errors, rows["max"].needs_review, rows["max"].cancelled) == (1, 1, 1)
    assert rows["openai"].p50_s == 1.0 and rows["openai"].p95_s == 3.0
    assert rows["total"].total == 5 and rows["total"].cost_usd == pytest.approx(0.75)
    assert rows["max"].p50_s == 2.0


def test_exit_code_only_zero_when_every_line_ran_and_passed() -> None:
    passed = [ItemResult("a", "passed")]
    assert BatchReport(results=passed).exit_code == 0
    assert BatchReport(results=[*passed, ItemResult("b", "failed_validation")]).exit_code == 1
    assert BatchReport(results=passed, not_run=["b"]).exit_code == 1
    assert BatchReport(results=passed, not_run=["b"], interrupted=True).exit_code == 130
    assert BatchReport(results=[]).exit_code == 0
