"""Batch runs: many requests from a JSONL file, run through the task manager, results to JSONL.

Each input line is one request, in our format::

    {"id": "q1", "model": "openai/gpt-4o-mini", "prompt": "What is 2 + 2?",
     "validation": ["contains:4"], "max_attempts": 2, "timeout": 60}

(keys: ``id``, ``model``, ``prompt`` or ``messages``, ``system``, ``validation``,
``max_attempts``, ``escalate``, ``fallbacks``, ``mcp_config``, ``mcp_servers``, ``tool_profile``, ``allowed_tools``, ``timeout``,
``temperature``, ``max_tokens``, ``tools_after``, ``tools_mcp_config``, ``human_after``,
``budget_usd``, ``budget_tokens``, ``deadline_s``, ``options`` (provider options),
``description``), or in the original project's format: ``{"id": ..., "llm_config": {...}}`` or
a bare ``llm_config`` dict with an ``id`` (see :mod:`llm_call.legacy`). An unknown key is an
error naming the key and the line.

:func:`check_items` finds every problem of a file before anything runs (``--dry-run``);
:func:`run_batch` submits the lines to a
:class:`~llm_call.tasks.TaskManager` and appends one :class:`ItemResult` line per finished
request to the output file, flushed at once, so an interrupted run loses nothing and
``--resume`` skips the ids already there.

Example::

    from llm_call.batch import read_items, check_items, run_batch

    items, problems = read_items("prompts.jsonl")
    problems += check_items(items)          # fills in each item's route
    assert not problems, problems
    report = await run_batch(items, "out.jsonl", concurrency=16)
    print(report.exit_code, [row.to_dict() for row in report.summary()])
"""

from __future__ import annotations

from ._items import (
    NATIVE_KEYS,
    STATUSES,
    BatchItem,
    ItemResult,
    Problem,
    RouteStats,
    check_items,
    parse_line,
    percentile,
    read_done,
    read_items,
    summarize,
)
from ._run import BatchObserver, BatchReport, result_from_record, run_batch

__all__ = [
    "NATIVE_KEYS",
    "STATUSES",
    "BatchItem",
    "BatchObserver",
    "BatchReport",
    "ItemResult",
    "Problem",
    "RouteStats",
    "check_items",
    "parse_line",
    "percentile",
    "read_done",
    "read_items",
    "result_from_record",
    "run_batch",
    "summarize",
]
