"""Batch lines: parse and check the input, the result lines, and the per-route summary.

The package docstring (``llm_call.batch``) describes the file formats.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, LLMCallError, UsageError
from ..legacy import LEGACY_KEYS, LEGACY_ONLY_KEYS, map_llm_config
from ..providers.base import CLAUDE_ONLY_OPTIONS

if TYPE_CHECKING:
    from ..config import Settings
    from ..providers.router import Route

__all__ = [
    "NATIVE_KEYS",
    "STATUSES",
    "BatchItem",
    "ItemResult",
    "Problem",
    "RouteStats",
    "check_items",
    "parse_line",
    "percentile",
    "read_done",
    "read_items",
    "summarize",
]

_log = logging.getLogger("llm_call.batch")

#: output statuses; only ``passed`` is a pass
STATUSES = ("passed", "failed_validation", "error", "needs_review", "cancelled")

#: keys of a line in our format, and the acall keyword each becomes (None: handled specially)
NATIVE_KEYS: dict[str, str | None] = {
    "id": None,
    "description": None,
    "options": None,
    "llm_config": None,
    "model": "model",
    "prompt": "prompt",
    "messages": "messages",
    "system": "system",
    "validation": "validate",
    "max_attempts": "max_attempts",
    "escalate": "escalate",
    "fallbacks": "fallbacks",
    "mcp_config": "mcp_config",
    "allowed_tools": "allowed_tools",
    "mcp_servers": "mcp_servers",
    "tool_profile": "tool_profile",
    "tools_mcp_servers": "tools_mcp_servers",
    "timeout": "timeout",
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "tools_after": "tools_after",
    "tools_mcp_config": "tools_mcp_config",
    "human_after": "human_after",
    "budget_usd": "budget_usd",
    "budget_tokens": "budget_tokens",
    "deadline_s": "deadline_s",
}

#: keys next to ``llm_config`` in the wrapped original form (the original's test-case files)
_WRAPPER_KEYS = frozenset({"id", "test_case_id", "description", "llm_config"})

_STR_KEYS = ("model", "prompt", "system", "tool_profile")
_INT_KEYS = ("max_attempts", "max_tokens", "tools_after", "human_after", "budget_tokens")
_NUM_KEYS = ("timeout", "temperature", "budget_usd", "deadline_s")
_MCP_KEYS = ("mcp_config", "tools_mcp_config")


@dataclass(slots=True)
class Problem:
    """One thing wrong with an input file, at a line (0: the file as a whole)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass(slots=True)
class BatchItem:
    """One request of a batch: its ``id``, input ``line`` and ``acall`` keyword arguments.

    ``route`` (``openai``, ``max``, an endpoint name ...) is filled in by :func:`check_items`.
    """

    id: str
    line: int
    kwargs: dict[str, Any]
    route: str = ""

    @property
    def model(self) -> str | None:
        model = self.kwargs.get("model")
        return model if isinstance(model, str) else None


def _close(key: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _item_id(value: Any, line: int, key: str = "id") -> str:
    if value is None:
        return f"line-{line}"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UsageError(f"line {line}: {key!r} must be a string or an integer, not {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise UsageError(f"line {line}: {key!r} is empty")
    return text


def _as_list(value: Any, key: str, line: int) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"line {line}: {key!r} must be a string or a list of strings")


def _native(data: Mapping[str, Any], line: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        target = NATIVE_KEYS.get(key)
        if target is None or value is None:
            continue
        if key in _STR_KEYS and not isinstance(value, str):
            raise UsageError(f"line {line}: {key!r} must be a string, not {type(value).__name__}")
        if key in _INT_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"line {line}: {key!r} must be an integer, not {value!r}")
        if key in _NUM_KEYS and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UsageError(f"line {line}: {key!r} must be a number, not {value!r}")
        if key in _MCP_KEYS and not (isinstance(value, dict) and isinstance(value.get("mcpServers"), dict)):
            raise UsageError(f"line {line}: {key!r} must be an MCP config object with an 'mcpServers' object")
        if key in ("escalate", "fallbacks", "mcp_servers", "tools_mcp_servers"):
            value = _as_list(value, key, line)
        elif key == "allowed_tools":
            value = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value
            value = _as_list(value, key, line)
        elif key == "validation":
            value = value if isinstance(value, list) else [value]
        elif key == "messages" and not isinstance(value, list):
            raise UsageError(f"line {line}: 'messages' must be a list of {{'role', 'content'}} objects")
        kwargs[target] = value
    options = data.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise UsageError(f"line {line}: 'options' must be an object of provider options")
        clash = sorted(set(options) & (set(kwargs) | set(NATIVE_KEYS)))
        if clash:
            raise UsageError(f"line {line}: options {clash} must be given as top-level keys of the line")
        kwargs.update(options)
    return kwargs


def _legacy(config: Any, line: int) -> dict[str, Any]:
    try:
        return map_llm_config(config)
    except UsageError as exc:
        raise UsageError(f"line {line}: {exc.message}", hint=exc.hint) from None


def parse_line(data: Any, line: int) -> BatchItem:
    """One decoded input line as a :class:`BatchItem`. Raises UsageError naming key and line."""
    if not isinstance(data, dict):
        raise UsageError(f"line {line}: expected a JSON object, not {type(data).__name__}")
    if "llm_config" in data:
        unknown = [k for k in data if k not in _WRAPPER_KEYS]
        if unknown:
            raise UsageError(
                f"line {line}: unknown key {unknown[0]!r} next to 'llm_config'"
                f"{_close(unknown[0], _WRAPPER_KEYS)}; known: {', '.join(sorted(_WRAPPER_KEYS))}"
            )
        if "id" in data and "test_case_id" in data:
            raise UsageError(f"line {line}: give 'id' or 'test_case_id', not both")
        key = "test_case_id" if "test_case_id" in data else "id"
        item_id = _item_id(data.get(key), line, key)
        return BatchItem(item_id, line, _legacy(data["llm_config"], line))
    if LEGACY_ONLY_KEYS & set(data):
        allowed = LEGACY_KEYS | {"id", "description"}
        unknown = [k for k in data if k not in allowed]
        if unknown:
            marker = sorted(LEGACY_ONLY_KEYS & set(data))[0]
            raise UsageError(
                f"line {line}: unknown key {unknown[0]!r}{_close(unknown[0], allowed)}: this line is read "
                f"in the original llm_config format because it has {marker!r}, which has no "
                f"{unknown[0]!r}; see docs/migration.md"
            )
        config = {k: v for k, v in data.items() if k not in ("id", "description")}
        return BatchItem(_item_id(data.get("id"), line), line, _legacy(config, line))
    unknown = [k for k in data if k not in NATIVE_KEYS]
    if unknown:
        raise UsageError(
            f"line {line}: unknown key {unknown[0]!r}{_close(unknown[0], NATIVE_KEYS)}; "
            f"known: {', '.join(NATIVE_KEYS)}"
        )
    return BatchItem(_item_id(data.get("id"), line), line, _native(data, line))


def read_items(path: str | os.PathLike[str]) -> tuple[list[BatchItem], list[Problem]]:
    """Read every line of a JSONL file; bad lines become problems, the rest items.

    Blank lines and lines starting with ``#`` or ``//`` are skipped. Raises UsageError when
    the file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM (some Windows editors) is not JSON
    except OSError as exc:
        raise UsageError(f"cannot read batch file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"batch file {path} is not UTF-8 text: {exc}") from None
    items: list[BatchItem] = []
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith(("#", "//")):
            continue
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            problems.append(Problem(number, f"not valid JSON: {exc}"))
            continue
        try:
            items.append(parse_line(data, number))
        except UsageError as exc:
            problems.append(Problem(number, str(exc).removeprefix(f"line {number}: ")))
    if not items and not problems:
        problems.append(Problem(0, f"{path} has no requests"))
    return items, problems


def _route_label(route: Route) -> str:
    """The route name results are grouped by: ``openai``, ``max``, ``local``, an endpoint name,
    a LiteLLM provider (``anthropic``) ..."""
    return route.model.split("/", 1)[0] if "/" in route.model else route.kind


def _route_problems(item: BatchItem, settings: Settings) -> list[str]:
    from .._request import default_model
    from ..providers.router import resolve

    out: list[str] = []
    model = item.model or default_model(settings)
    names = [("model", model)]
    names += [("escalate", m) for m in item.kwargs.get("escalate") or []]
    names += [("fallbacks", m) for m in item.kwargs.get("fallbacks") or []]
    for key, name in names:
        try:
            route = resolve(name, settings)
        except ConfigError as exc:
            out.append(f"{key} {name!r}: {exc.message}")
            continue
        if key == "model":
            item.route = _route_label(route)
            claude_opts = sorted(CLAUDE_ONLY_OPTIONS & set(item.kwargs))
            if route.kind != "max" and claude_opts:
                out.append(
                    f"option(s) {', '.join(claude_opts)} apply only to max/* models (Claude Code CLI), "
                    f"and {name!r} runs on the {route.kind} route"
                )
        missing = _missing_dependency(route.kind)
        if missing:
            out.append(f"{key} {name!r}: {missing}")
    return out


def _missing_dependency(kind: str) -> str | None:
    import importlib.util

    needs = {"max": ("claude_agent_sdk", "claude"), "local": ("llama_cpp", "local"), "litellm": ("litellm", "litellm")}
    if kind not in needs:
        return None
    module, extra = needs[kind]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"the {kind} route needs pip install 'llm-call[{extra}]'"


def _validation_problem(specs: Any) -> str | None:
    try:
        from ..validation import parse_specs
    except ImportError as exc:  # the validation layer is part of the package; this is a broken install
        return f"cannot check validation specs: {exc}"
    try:
        parse_specs(specs)
    except (UsageError, ConfigError) as exc:
        return f"validation: {exc}"
    return None


def check_items(items: list[BatchItem], settings: Settings | None = None) -> list[Problem]:
    """Every problem of ``items``: duplicate ids, bad arguments, unroutable models, bad specs.

    Nothing is sent anywhere. Fills in each item's ``route``.
    """
    from .._request import build_request

    if settings is None:
        from ..config import get_settings

        settings = get_settings()
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for item in items:
        if item.id in first_line:
            problems.append(Problem(item.line, f"duplicate id {item.id!r} (first on line {first_line[item.id]})"))
        else:
            first_line[item.id] = item.line
        try:
            build_request(**item.kwargs)
        except TypeError as exc:
            problems.append(Problem(item.line, f"bad arguments: {exc}"))
        except LLMCallError as exc:
            problems.append(Problem(item.line, exc.message))
        problems.extend(Problem(item.line, p) for p in _route_problems(item, settings))
        specs = item.kwargs.get("validate")
        if specs:
            problem = _validation_problem(specs)
            if problem:
                problems.append(Problem(item.line, problem))
    return sorted(problems, key=lambda p: p.line)


@dataclass(slots=True)
class ItemResult:
    """One output line: what became of one request.

    ``status`` is one of :data:`STATUSES`; only ``passed`` is a pass. ``attempts`` is the record
    of every model call (answers and judges), also for failures.
    """

    id: str
    status: str
    line: int = 0
    route: str = ""
    model: str | None = None
    text: str | None = None
    parsed: Any = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    latency_s: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    task_id: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "line": self.line,
            "route": self.route,
            "model": self.model,
            "text": self.text,
            "parsed": self.parsed,
            "attempts": self.attempts,
            "usage": self.usage,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "task_id": self.task_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemResult:
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in data.items() if k in known}
        d["id"] = str(d["id"])
        d["attempts"] = list(d.get("attempts") or [])
        d["usage"] = dict(d.get("usage") or {})
        return cls(**d)


def read_done(path: str | os.PathLike[str], *, repair: bool = False) -> dict[str, ItemResult]:
    """Results already in an output file, by id (for ``--resume``).

    A last line without its newline is what a killed run leaves behind; with ``repair`` it is
    cut off the file (and logged), otherwise it is ignored. Any other bad line is an error.
    """
    p = Path(path)
    if not p.exists():
        return {}
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read output file {p}: {exc.strerror or exc}") from None
    done: dict[str, ItemResult] = {}
    complete, _, partial = data.rpartition(b"\n")
    if partial.strip():
        _log.warning("%s ends with an unfinished line (%d bytes): ignoring it", p, len(partial))
        if repair:
            with p.open("r+b") as fh:
                fh.truncate(len(complete) + 1 if complete or data.startswith(b"\n") else 0)
    for number, raw in enumerate(complete.split(b"\n") if complete else [], start=1):
        if not raw.strip():
            continue
        try:
            result = ItemResult.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"output file {p} line {number} is not a batch result ({exc}); "
                "pass a different -o file or remove the line"
            ) from None
        done[result.id] = result
    return done


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values``, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


@dataclass(slots=True)
class RouteStats:
    """Counts, latency percentiles and cost of the results of one route (or ``total``)."""

    route: str
    total: int = 0
    passed: int = 0
    failed_validation: int = 0
    errors: int = 0
    needs_review: int = 0
    cancelled: int = 0
    p50_s: float | None = None
    p95_s: float | None = None
    cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "total": self.total,
            "passed": self.passed,
            "failed_validation": self.failed_validation,
            "errors": self.errors,
            "needs_review": self.needs_review,
            "cancelled": self.cancelled,
            "p50_s": self.p50_s,
            "p95_s": self.p95_s,
            "cost_usd": self.cost_usd,
        }


def summarize(results: Iterable[ItemResult]) -> list[RouteStats]:
    """One row per route (sorted) and a last ``total`` row."""
    groups: dict[str, list[ItemResult]] = {}
    everything: list[ItemResult] = []
    for r in results:
        groups.setdefault(r.route or "?", []).append(r)
        everything.append(r)
    rows = [_stats(name, groups[name]) for name in sorted(groups)]
    rows.append(_stats("total", everything))
    return rows


def _stats(name: str, results: list[ItemResult]) -> RouteStats:
    row = RouteStats(name, total=len(results))
    latencies: list[float] = []
    for r in results:
        if r.status == "passed":
            row.passed += 1
        elif r.status == "failed_validation":
            row.failed_validation += 1
        elif r.status == "needs_review":
            row.needs_review += 1
        elif r.status == "cancelled":
            row.cancelled += 1
        else:
            row.errors += 1
        if r.latency_s is not None:
            latencies.append(r.latency_s)
        if r.cost_usd:
            row.cost_usd += r.cost_usd
    row.p50_s = percentile(latencies, 50)
    row.p95_s = percentile(latencies, 95)
    return row
