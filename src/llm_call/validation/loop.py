"""The validation retry loop: ask, validate, feed the failures back, escalate, stop on budget.

Each attempt asks the model (through the transient-retry layer) and runs every validator on the
answer (an expensive judge only when the cheap validators passed). On failure the conversation
grows by the failed answer (``assistant``) and a feedback message (``user``) saying which
validators failed and why, that this was attempt n of N, and restating the request; the next
attempt sees all of it.

Attempts and escalation: ``max_attempts`` (default 3) counts attempts in all, across the model
and every ``escalate`` model. They are shared out evenly in order, earlier models taking the
remainder (``max_attempts=3, escalate=[B]`` gives the first model 2 attempts, B 1). Without
``max_attempts`` the total is ``max(3, number of models)``; fewer attempts than models is a
UsageError. An escalated model receives the whole history, feedback included.

Stages:

- tools: from attempt ``tools_after`` (1-based) on, ``tools_mcp_servers`` (names declared under
  ``[claude.mcp_servers]``) are added to the ``mcp_servers`` option, and/or ``tools_mcp_config`` is passed as the
  ``mcp_config`` option (merged with one already given). It applies to the Claude route only:
  if a model from that attempt on is not ``max/*``, the call is a UsageError before any request.
- human: after ``human_after`` failed attempts (or when attempts run out, if ``human_after`` is
  at least the number of attempts) :class:`HumanReviewNeeded` is raised with ``history`` (the
  conversation, ending with the last failed answer), ``errors`` (the feedback of every failed
  attempt) and ``attempts``. :func:`resume_validated` continues from there with the reviewer's
  reply.

Budgets: before every model call (answers and judges) the cost (``budget_usd``, known costs
only; routes that report none count as 0 and a warning is logged), token (``budget_tokens``) and
time (``deadline_s``) budgets are checked; a spent budget raises :class:`BudgetExceeded` with
every attempt so far. Running out of attempts raises :class:`ValidationExhausted`.

Tool calls: an answer that asks for tools (``tool_calls``, for callers that pass ``tools=``) is
a step of the conversation, not the answer, so it is returned at once without running the
validators (``extra["validation"] == "skipped: tool_calls"``, ``parsed`` stays ``None``). The
caller runs the tools and calls again with the same ``validate=``; the final text is validated.

On success the provider's response is returned with ``attempts`` (every answer, judge and failed
provider call), ``usage`` and ``cost_usd`` summed over all of them, ``parsed`` from the
validators and ``extra["passed_attempt"]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .._progress import emit
from .._retry import complete_with_retries, deadline_stop, stream_with_retries
from .._settings import current_settings
from .._streams import closing
from ..errors import (
    BudgetExceeded,
    HumanReviewNeeded,
    UsageError,
    ValidationExhausted,
)
from ..providers.base import message_text
from ..retry import clock_of
from ..types import Attempt, Chunk, Message, Request, Response, Usage
from ._base import Budget, ValidationContext, Validator, Verdict, run_validator
from ._specs import parse_specs

if TYPE_CHECKING:
    from .._request import CallOptions

#: ``extra["validation"]`` of an answer that asked for tools (validators judge the final text)
TOOL_STEP = "skipped: tool_calls"

__all__ = ["DEFAULT_MAX_ATTEMPTS", "resume_validated", "run_validated", "stream_validated"]

DEFAULT_MAX_ATTEMPTS = 3
_log = logging.getLogger("llm_call.validation")


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shares(total: int, n_models: int) -> list[int]:
    base, extra = divmod(total, n_models)
    return [base + (1 if i < extra else 0) for i in range(n_models)]


class _ValidatedCall:
    """The state of one validated call, shared by the complete and the stream loops."""

    __slots__ = (
        "_pending_feedback", "_warned_cost", "budget", "clock", "deadline_at", "errors", "first",
        "last_feedback", "messages", "opts", "original", "plan", "records", "request", "started",
        "started_perf", "total", "validators",
    )

    def __init__(
        self,
        request: Request,
        opts: CallOptions,
        *,
        history: list[Message] | None = None,
        previous: list[Attempt] | None = None,
    ) -> None:
        self.request = request
        self.opts = opts
        self.validators: list[Validator] = parse_specs(opts.validate)
        if opts.response_model is not None:
            from ._builtin import PydanticModel

            self.validators.append(PydanticModel(opts.response_model))
        if not self.validators:
            raise UsageError("validation was asked for but no validators were given")
        models = [request.model, *opts.escalate]
        total = opts.max_attempts if opts.max_attempts is not None else max(DEFAULT_MAX_ATTEMPTS, len(models))
        if total < len(models):
            raise UsageError(
                f"max_attempts={total} is fewer than the {len(models)} models to try "
                f"({request.model} and {len(opts.escalate)} escalation models)"
            )
        self.total = total
        if len(models) == 1:
            self.plan: list[str] = [request.model] * total
        else:
            self.plan = [m for m, k in zip(models, _shares(total, len(models)), strict=True) for _ in range(k)]
        self.original = self._original_prompt(request.messages)
        self.messages: list[Message] = list(history if history is not None else request.messages)
        self.records: list[Attempt] = list(previous or [])
        self.first = 1 + max((a.number for a in self.records), default=0)
        self.errors: list[str] = []
        self.clock = clock_of(opts.retry)
        self.started = self.clock()
        self.started_perf = time.perf_counter()
        deadline_at = self.started + opts.deadline_s if opts.deadline_s is not None else None
        self.budget: Budget | None = None
        if opts.budget_usd is not None or opts.budget_tokens is not None or deadline_at is not None:
            self.budget = Budget(
                max_usd=opts.budget_usd, max_tokens=opts.budget_tokens, deadline_at=deadline_at, clock=self.clock
            )
            for record in self.records:
                self.budget.charge(record)
        self.deadline_at = deadline_at
        self._warned_cost = False
        self._pending_feedback = ""
        self.last_feedback = ""
        self._check_stages()

    @staticmethod
    def _original_prompt(messages: list[Message]) -> str:
        for m in reversed(messages):
            if m.get("role") == "user":
                return message_text(m)
        return ""

    def _check_stages(self) -> None:
        opts = self.opts
        tools = opts.tools_mcp_config is not None or bool(opts.tools_mcp_servers)
        if (opts.tools_after is None) == tools:
            raise UsageError(
                "tools_after and tools_mcp_config (or tools_mcp_servers: names declared under [claude.mcp_servers]) "
                "go together: give both or neither"
            )
        if opts.human_after is not None and opts.human_after < 1:
            raise UsageError(f"human_after must be >= 1, not {opts.human_after}")
        if opts.tools_after is None:
            return
        if opts.tools_after < 1:
            raise UsageError(f"tools_after must be >= 1, not {opts.tools_after}")
        from ..providers.router import resolve

        settings = current_settings()
        for i, model in enumerate(self.plan, start=1):
            if i >= opts.tools_after and resolve(model, settings).kind != "max":
                raise UsageError(
                    f"tools_after={opts.tools_after}: attempt {i} uses {model}, but the tool stage "
                    "(tools_mcp_config) works only on the Claude route (max/*)",
                    hint="escalate to a max/* model before the tool stage, or drop tools_after",
                )

    # -- per attempt ----------------------------------------------------------------------

    def numbers(self) -> range:
        return range(self.first, self.first + self.total)

    def model_for(self, n: int) -> str:
        return self.plan[n - self.first]

    def before_attempt(self, n: int) -> None:
        """Stop for a human or a spent budget; announce escalation."""
        failed = n - self.first
        human_after = self.opts.human_after
        if human_after is not None and failed >= human_after:
            raise self.human_review()
        self.check_budget(f"before attempt {n}")
        if failed and self.model_for(n) != self.model_for(n - 1):
            emit("escalated", from_model=self.model_for(n - 1), to_model=self.model_for(n), attempt=n)

    def check_budget(self, where: str) -> None:
        if self.budget is None:
            return
        reason = self.budget.exhausted()
        if reason is not None:
            raise self.budget_error(f"{reason}; stopped {where}")

    def budget_error(self, reason: str) -> BudgetExceeded:
        last = f"; last failure: {self.errors[-1]}" if self.errors else ""
        return BudgetExceeded(
            f"validation budget exhausted: {reason}{last}",
            hint="raise budget_usd / budget_tokens / deadline_s, or simplify the validators",
            attempts=self.attempt_dicts(),
        )

    def request_for(self, n: int) -> Request:
        opts = self.opts
        if n == 1 and self.budget is None and opts.tools_after is None and self.messages == self.request.messages:
            return self.request  # the first attempt asks exactly what the caller asked
        req = self.request.replace(model=self.model_for(n), messages=list(self.messages))
        if opts.tools_after is not None and n >= opts.tools_after and opts.tools_mcp_servers:
            given_names = list(req.options.get("mcp_servers") or [])
            req.options["mcp_servers"] = given_names + [s for s in opts.tools_mcp_servers if s not in given_names]
        if opts.tools_after is not None and n >= opts.tools_after and opts.tools_mcp_config is not None:
            given = req.options.get("mcp_config")
            if isinstance(given, dict):
                servers = {**(given.get("mcpServers") or {}), **(opts.tools_mcp_config.get("mcpServers") or {})}
                req.options["mcp_config"] = {**given, **opts.tools_mcp_config, "mcpServers": servers}
            else:
                req.options["mcp_config"] = opts.tools_mcp_config
        remaining = self.budget.remaining_time() if self.budget is not None else None
        if remaining is not None and (req.timeout is None or remaining < req.timeout):
            req.timeout = max(remaining, 0.001)
        return req

    def deadline_stop(self, n: int) -> AbstractContextManager[None]:
        """Around attempt ``n``: the caller's ``deadline_s`` running out is a budget stop."""
        reason = f"deadline of {self.opts.deadline_s}s passed during attempt {n}"
        return deadline_stop(self.clock, self.deadline_at, lambda _exc: self.budget_error(reason))

    def charge(self, record: Attempt) -> None:
        if self.budget is None:
            return
        if record.cost_usd is None and self.opts.budget_usd is not None and record.kind != "provider_error" and not self._warned_cost:
            self._warned_cost = True
            _log.warning("model %s reports no cost; budget_usd counts only calls that report one", record.model)
        self.budget.charge(record)

    async def validate(self, text: str, n: int, response: Response | None) -> tuple[list[Verdict], ValidationContext]:
        ctx = ValidationContext(
            original_prompt=self.original,
            request=self.request,
            model=self.model_for(n),
            attempt=n,
            response=response,
            retry=self.opts.retry,
            budget=self.budget,
        )
        verdicts: list[Verdict] = []
        try:
            for validator in self.validators:
                if validator.expensive and any(not v.ok for v in verdicts):
                    continue
                verdicts.append(await run_validator(validator, text, ctx))
        except BudgetExceeded as exc:
            self.records.extend(ctx.judge_attempts)
            raise self.budget_error(exc.message.removeprefix("stopped before a judge call: ")) from None
        except BaseException:
            self.records.extend(ctx.judge_attempts)
            raise
        self.records.extend(ctx.judge_attempts)
        return verdicts, ctx

    def record_answer(self, record: Attempt, text: str, verdicts: list[Verdict]) -> str | None:
        """Complete the answer's record; returns the feedback when it failed."""
        failed = [v for v in verdicts if not v.ok]
        record.text = text
        record.ok = not failed
        record.verdicts = [v.to_dict() for v in verdicts]
        if not failed:
            return None
        record.feedback = "; ".join(f"{v.validator}: {v.feedback}" for v in failed)
        return record.feedback

    def after_failure(self, n: int, text: str, verdicts: list[Verdict], feedback: str) -> str:
        """Grow the conversation by the failed answer and the feedback; return the message."""
        self.errors.append(f"attempt {n} ({self.model_for(n)}): {feedback}")
        emit("validation_failed", attempt=n, feedback=feedback, model=self.model_for(n))
        lines = [f"Your answer (attempt {n} of {self.first + self.total - 1}) did not pass validation:"]
        lines += [f"- {v.validator}: {v.feedback}" for v in verdicts if not v.ok]
        lines.append(f"The request was: {_short(self.original, 500)}")
        lines.append("Answer the request again, fixing these problems. Give only the corrected answer.")
        message = "\n".join(lines)
        self.messages.append({"role": "assistant", "content": text})
        self._pending_feedback = message
        self.last_feedback = feedback
        return message

    def add_feedback_message(self) -> None:
        self.messages.append({"role": "user", "content": self._pending_feedback})

    def success(self, response: Response, ctx: ValidationContext | None, n: int) -> Response:
        if ctx is not None and ctx.has_parsed:
            response.parsed = ctx.parsed
        response.attempts = self.records
        records = self.records
        if len(records) > 1:
            costs = [a.cost_usd for a in records if a.cost_usd is not None]
            response.usage = Usage(
                sum(a.usage.prompt_tokens for a in records), sum(a.usage.completion_tokens for a in records)
            )
            response.cost_usd = sum(costs) if costs else None
        response.latency_s = time.perf_counter() - self.started_perf
        response.extra["passed_attempt"] = n
        return response

    def attempt_dicts(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.records]

    def human_review(self) -> HumanReviewNeeded:
        failed = len(self.errors)
        return HumanReviewNeeded(
            f"validation wants a human review after {failed} failed attempts; last failure: "
            f"{self.errors[-1] if self.errors else '(none)'}",
            hint="answer with resume_validated(request, opts, history=..., reply=...) or a task reply",
            history=list(self.messages),
            errors=list(self.errors),
            attempts=self.attempt_dicts(),
        )

    def exhausted(self) -> Exception:
        if self.opts.human_after is not None and self.opts.human_after >= self.total:
            return self.human_review()
        models = ", ".join(dict.fromkeys(self.plan))
        return ValidationExhausted(
            f"no valid answer after {len(self.errors)} attempts ({models}); last failure: "
            f"{self.errors[-1] if self.errors else '(none)'}",
            hint="see the attempts; raise max_attempts, add escalate=[...], or relax the validators",
            attempts=self.attempt_dicts(),
        )


async def _loop(run: _ValidatedCall) -> Response:
    for n in run.numbers():
        run.before_attempt(n)
        if n > run.first:
            run.add_feedback_message()
        with run.deadline_stop(n):
            response = await complete_with_retries(
                run.request_for(n), run.opts, attempt=n, deadline_at=run.deadline_at
            )
        for record in response.attempts:
            run.records.append(record)
            run.charge(record)
        if response.tool_calls:
            run.record_answer(response.attempts[-1], response.text, [])
            response.extra["validation"] = TOOL_STEP
            return run.success(response, None, n)
        verdicts, ctx = await run.validate(response.text, n, response)
        feedback = run.record_answer(response.attempts[-1], response.text, verdicts)
        if feedback is None:
            return run.success(response, ctx, n)
        run.after_failure(n, response.text, verdicts, feedback)
    raise run.exhausted()


async def run_validated(request: Request, opts: CallOptions) -> Response:
    """Ask until an answer passes every validator (or a budget runs out); see the module doc.

    Example::

        resp = await llm_call.acall("openai/gpt-4o-mini", "Give {a: 1} as JSON", validate=["json"],
                                    max_attempts=3, escalate=["openai/gpt-4o"])
        resp.parsed, resp.extra["passed_attempt"], [a.ok for a in resp.attempts]
    """
    return await _loop(_ValidatedCall(request, opts))


async def resume_validated(
    request: Request,
    opts: CallOptions,
    *,
    history: list[Message],
    reply: str,
    attempts: list[dict[str, Any]] | list[Attempt] | None = None,
) -> Response:
    """Continue after :class:`HumanReviewNeeded` with the reviewer's ``reply``.

    ``history`` and ``attempts`` are the error's fields. The reply is sent as a user message
    after the last failed answer, and the loop starts a fresh round: ``max_attempts`` more
    attempts (numbered after the previous ones) from the first model, with the human stage
    re-armed. The returned response's ``attempts`` include the earlier ones.
    """
    if not reply or not reply.strip():
        raise UsageError("the reviewer's reply is empty")
    if not history:
        raise UsageError("resume_validated needs the history from HumanReviewNeeded")
    previous = [a if isinstance(a, Attempt) else Attempt.from_dict(a) for a in attempts or []]
    run = _ValidatedCall(request, opts, history=[*history, {"role": "user", "content": reply}], previous=previous)
    return await _loop(run)


async def stream_validated(request: Request, opts: CallOptions) -> AsyncIterator[Chunk]:
    """Stream each attempt, validate it at its end; a failure yields a ``retry`` event chunk.

    Text chunks carry ``attempt`` (the attempt they belong to). After a failed attempt comes
    ``Chunk(event="retry", attempt=n+1, data={"feedback": ..., "failed_attempt": n})`` and the
    next attempt's chunks. The last chunk (``finish_reason`` set) comes only after an attempt
    passed; its ``data`` has ``passed_attempt`` and ``attempts``. Exhaustion raises as in
    :func:`run_validated`, after the failed attempt's text.
    """
    run = _ValidatedCall(request, opts)
    for n in run.numbers():
        run.before_attempt(n)
        if n > run.first:
            run.add_feedback_message()
            yield Chunk(
                model=run.model_for(n),
                attempt=n,
                event="retry",
                data={"feedback": run.last_feedback, "failed_attempt": n - 1, "model": run.model_for(n)},
            )
        request_n = run.request_for(n)
        parts: list[str] = []
        final: Chunk | None = None
        tool_step = False
        started = time.perf_counter()
        with run.deadline_stop(n):
            inner = stream_with_retries(
                request_n, opts, attempt=n, deadline_at=run.deadline_at, records=run.records
            )
            async with closing(inner) as chunks:
                async for chunk in chunks:
                    chunk.attempt = n
                    if chunk.event == "retry" and (chunk.data or {}).get("rescue") == "restart":
                        parts.clear()  # the cut answer starts again: validate only the new one
                        tool_step = False
                    if chunk.finish_reason is not None:
                        final = chunk
                        continue
                    if chunk.text:
                        parts.append(chunk.text)
                    if chunk.tool_calls:
                        tool_step = True
                    yield chunk
        text = "".join(parts)
        final = final or Chunk(model=run.model_for(n), attempt=n, finish_reason="stop")
        record = Attempt(
            number=n,
            model=run.model_for(n),
            latency_s=time.perf_counter() - started,
            usage=final.usage or Usage(),
        )
        run.records.append(record)
        run.charge(record)
        if tool_step:
            run.record_answer(record, text, [])
            final.data = {**(final.data or {}), "passed_attempt": n, "attempts": run.attempt_dicts(), "validation": TOOL_STEP}
            yield final
            return
        verdicts, ctx = await run.validate(text, n, None)
        feedback = run.record_answer(record, text, verdicts)
        if feedback is None:
            data = dict(final.data or {})
            data.update(passed_attempt=n, attempts=run.attempt_dicts())
            if ctx.has_parsed and not hasattr(ctx.parsed, "model_dump"):
                data["parsed"] = ctx.parsed
            final.data = data
            yield final
            return
        run.after_failure(n, text, verdicts, feedback)
    raise run.exhausted()
