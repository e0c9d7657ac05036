"""The validator protocol, verdicts, the per-attempt context, and wrapping of custom callables.

A validator is anything with a ``name`` and ``validate(text, context)`` returning a
:class:`Verdict` (or an awaitable of one). Plain callables are accepted too and interpreted by
:class:`FunctionValidator`:

==============================  =========================================================
the callable returns / raises   meaning
==============================  =========================================================
``True`` or ``None``            pass
``False``                       fail, generic feedback naming the validator
a string                        fail; the string is the feedback sent back to the model
a :class:`Verdict`              used as is
raises ``ValidationFailed``     fail; its ``feedback`` (or message) goes to the model
==============================  =========================================================

A string always means failure (an empty string gets the generic feedback): there is no "pass
with a comment". Any other exception a validator raises is a bug in the validator and propagates
unchanged; it is never counted as a pass or a failure.

Example::

    def mentions_paris(text: str) -> bool | str:
        return "Paris" in text or "The answer must name the city (Paris)."

    resp = await llm_call.acall("openai/gpt-4o-mini", "Capital of France?", validate=[mentions_paris])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._jsontree import nested_deeper_than
from ..errors import BudgetExceeded, UsageError, ValidationFailed
from ..types import Attempt, Request

if TYPE_CHECKING:
    from ..types import Response

__all__ = [
    "FunctionValidator",
    "NeedsWorkerThread",
    "ValidationContext",
    "Validator",
    "Verdict",
    "as_validator",
    "extract_json",
    "interpret_result",
    "run_validator",
]

_UNSET: Any = object()
CODE_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)


@dataclass(slots=True)
class Verdict:
    """The outcome of one validator on one answer.

    ``feedback`` says what is wrong (it is sent back to the model); ``details`` holds
    machine-readable specifics (failing JSON paths, the judge's details, ...).
    """

    ok: bool
    feedback: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    validator: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "validator": self.validator,
            "ok": self.ok,
            "feedback": self.feedback,
            "details": self.details,
        }


@runtime_checkable
class Validator(Protocol):
    """Checks one answer. ``validate`` may be sync or async.

    ``expensive`` validators (LLM judges) run only when every cheap validator before them
    passed, so a judge is never paid to look at an answer already known to be wrong.
    """

    name: str
    expensive: bool

    def validate(self, text: str, context: ValidationContext) -> Verdict | Awaitable[Verdict]: ...


class Budget:
    """What one validated call may still spend: cost, tokens, time (checked before each call)."""

    __slots__ = ("clock", "deadline_at", "max_tokens", "max_usd", "spent_tokens", "spent_usd")

    def __init__(
        self,
        *,
        max_usd: float | None,
        max_tokens: int | None,
        deadline_at: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.max_usd = max_usd
        self.max_tokens = max_tokens
        self.deadline_at = deadline_at
        self.clock = clock
        self.spent_usd = 0.0
        self.spent_tokens = 0

    def charge(self, attempt: Attempt) -> None:
        if attempt.cost_usd is not None:
            self.spent_usd += attempt.cost_usd
        self.spent_tokens += attempt.usage.total_tokens

    def exhausted(self) -> str | None:
        """Why no further call may be made, or None."""
        if self.max_usd is not None and self.spent_usd >= self.max_usd:
            return f"cost budget of ${self.max_usd:g} used up (spent ${self.spent_usd:.6g})"
        if self.max_tokens is not None and self.spent_tokens >= self.max_tokens:
            return f"token budget of {self.max_tokens} used up (spent {self.spent_tokens})"
        if self.deadline_at is not None and self.clock() >= self.deadline_at:
            return "deadline passed"
        return None

    def remaining_time(self) -> float | None:
        if self.deadline_at is None:
            return None
        return max(0.0, self.deadline_at - self.clock())


@dataclass(slots=True)
class ValidationContext:
    """What a validator may know besides the text: the request, the model, the attempt.

    ``parsed`` is set by validators that parse the answer (``json``, ``pydantic``) and becomes
    ``Response.parsed``. Judges record their calls with :meth:`add_judge_attempt` and check the
    budget with :meth:`check_budget` before calling.
    """

    original_prompt: str = ""
    request: Request | None = None
    model: str = ""
    attempt: int = 1
    response: Response | None = None
    parsed: Any = _UNSET
    retry: Any = None
    budget: Budget | None = None
    judge_attempts: list[Attempt] = field(default_factory=list)
    _json: Any = field(default=_UNSET, repr=False)
    _json_error: str | None = field(default=None, repr=False)

    @property
    def has_parsed(self) -> bool:
        return self.parsed is not _UNSET

    def json_value(self, text: str) -> Any:
        """The answer's JSON value (bare or fenced), cached; raises ValueError with the reason."""
        if self._json is _UNSET and self._json_error is None:
            try:
                value = extract_json(text)
            except ValueError as exc:
                self._json_error = str(exc)
            except RecursionError:  # json.loads on thousands of nested brackets
                self._json_error = _TOO_DEEP
            else:
                if _deeper_than(value, MAX_JSON_DEPTH, text):
                    self._json_error = _TOO_DEEP
                else:
                    self._json = value
        if self._json_error is not None:
            raise ValueError(self._json_error)
        return self._json

    def check_budget(self) -> None:
        """Raise BudgetExceeded when no further model call may be made."""
        if self.budget is None:
            return
        reason = self.budget.exhausted()
        if reason is not None:
            raise BudgetExceeded(f"stopped before a judge call: {reason}", attempts=None)

    def add_judge_attempt(self, attempt: Attempt) -> None:
        self.judge_attempts.append(attempt)
        if self.budget is not None:
            self.budget.charge(attempt)


#: the deepest JSON answer validators accept: a value nested near Python's recursion limit parses,
#: but then fails every later copy or serialisation (the task record, the HTTP answer)
MAX_JSON_DEPTH = 200
_TOO_DEEP = f"the JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels); give a flatter answer"


def _deeper_than(value: Any, limit: int, text: str) -> bool:
    """Whether ``value`` (parsed from ``text``) nests lists and objects more than ``limit`` deep."""
    if text.count("[") + text.count("{") <= limit:
        return False  # fewer brackets than levels: cannot be that deep
    return nested_deeper_than(value, limit)


def extract_json(text: str) -> Any:
    """Parse a bare JSON value, or the first ```json (or unlabelled) fenced block that parses."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("the answer is empty, expected JSON")
    try:
        return json.loads(stripped)
    except ValueError as exc:
        first_error = exc
    for match in CODE_FENCE.finditer(text):
        lang = match.group(1).lower()
        if lang not in ("", "json", "json5", "jsonc"):
            continue
        try:
            return json.loads(match.group(2))
        except ValueError as exc:
            raise ValueError(f"the fenced JSON block is not valid JSON: {exc}") from None
    raise ValueError(
        f"the answer is not valid JSON ({first_error}); answer with a bare JSON value "
        "or one fenced in ```json"
    )


class FunctionValidator:
    """Wraps a plain callable (sync or async) as a validator; see the module docstring."""

    expensive = False

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        positional = [
            p
            for p in params.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
        self._takes_context = len(positional) >= 2 or any(
            p.kind == p.VAR_POSITIONAL for p in positional
        )

    async def validate(self, text: str, context: ValidationContext) -> Verdict:
        try:
            result = self.fn(text, context) if self._takes_context else self.fn(text)
            if inspect.isawaitable(result):
                result = await result
        except ValidationFailed as exc:
            feedback = exc.feedback or exc.message or f"rejected by {self.name}"
            return Verdict(False, feedback, dict(exc.details or {}), self.name)
        return interpret_result(result, self.name)


def interpret_result(result: Any, name: str) -> Verdict:
    """Turn what a custom validator returned into a Verdict (see the module docstring)."""
    if isinstance(result, Verdict):
        if not result.validator:
            result.validator = name
        return result
    if result is None or result is True:
        return Verdict(True, validator=name)
    if result is False:
        return Verdict(False, f"the answer was rejected by validator {name}", validator=name)
    if isinstance(result, str):
        return Verdict(False, result or f"the answer was rejected by validator {name}", validator=name)
    raise UsageError(
        f"validator {name} returned {type(result).__name__}; "
        "return True/None (pass), False or a feedback string (fail), or a Verdict"
    )


def as_validator(obj: Any) -> Validator:
    """``obj`` as a :class:`Validator`: validator objects pass through, callables are wrapped."""
    if isinstance(obj, Validator):
        return obj
    validate = getattr(obj, "validate", None)
    if callable(validate) and hasattr(obj, "name"):
        if not hasattr(obj, "expensive"):
            return FunctionValidator(lambda t, c: validate(t, c), name=str(obj.name))
        return obj  # type: ignore[no-any-return]
    if callable(obj):
        return FunctionValidator(obj)
    raise UsageError(f"{obj!r} is not a validator (expected a spec string, dict, Validator or callable)")


#: answers at least this long are checked by ``cpu_bound`` validators on a worker thread
OFF_LOOP_CHARS = 20_000
#: how long a validator on a worker thread may take before the answer fails with feedback saying so
OFF_LOOP_TIMEOUT_S = 10.0
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _validator_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:  # its own threads: a slow check never starves the loop's default executor
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="llm_call-validate")
    return _pool


class NeedsWorkerThread(Exception):
    """Raised by a ``cpu_bound`` validator running on the event loop whose check turned out to
    need more than a few milliseconds: :func:`run_validator` runs it again on a worker thread."""


async def run_validator(validator: Validator, text: str, context: ValidationContext) -> Verdict:
    """Run one validator (sync or async) and name its verdict.

    A ``cpu_bound`` validator (regex, JSON Schema, Python parse) given a long answer runs on a
    worker thread, bounded by :data:`OFF_LOOP_TIMEOUT_S`, so the event loop keeps serving other
    requests; one that overruns is a failed verdict saying so (typed, never a silent pass).
    """
    if len(text) >= OFF_LOOP_CHARS and getattr(validator, "cpu_bound", False):
        return await _run_off_loop(validator, text, context)
    try:
        result = validator.validate(text, context)
    except NeedsWorkerThread:
        return await _run_off_loop(validator, text, context)
    if result.__class__ is Verdict and result.validator:  # the built-ins' fast path
        return result  # type: ignore[return-value]
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Verdict) or not result.validator:
        result = interpret_result(result, validator.name)
    return result


async def _run_off_loop(validator: Validator, text: str, context: ValidationContext) -> Verdict:
    future = asyncio.get_running_loop().run_in_executor(_validator_pool(), validator.validate, text, context)
    try:
        async with asyncio.timeout(OFF_LOOP_TIMEOUT_S):
            result = await future
    except TimeoutError:
        return Verdict(
            False,
            f"the {validator.name} check did not finish within {OFF_LOOP_TIMEOUT_S:g} s on this answer "
            f"({len(text)} characters); give a shorter answer",
            {"timeout_s": OFF_LOOP_TIMEOUT_S},
            validator.name,
        )
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Verdict) or not result.validator:
        result = interpret_result(result, validator.name)
    return result
