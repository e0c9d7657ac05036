"""Validation specs run client patterns in linear time and slow validators off the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from llm_call.errors import UsageError
from llm_call.validation import Regex, Verdict, _base, parse_spec, parse_specs
from llm_call.validation._base import ValidationContext, run_validator

pytestmark = pytest.mark.timeout(30)

CATASTROPHIC = "^((.)*)*!$"


def _ctx() -> ValidationContext:
    return ValidationContext(original_prompt="p", request=None, model="m", attempt=1)  # type: ignore[arg-type]


def test_spec_regex_is_linear_on_a_catastrophic_pattern() -> None:
    validator = parse_spec(f"regex:{CATASTROPHIC}")
    verdict = validator.validate("a" * 100_000, _ctx())
    assert isinstance(verdict, Verdict) and not verdict.ok
    assert parse_spec(f"regex:{CATASTROPHIC}").validate("ab!", _ctx()).ok  # type: ignore[union-attr]


def test_spec_regex_flags_work_on_re2() -> None:
    assert parse_spec("regex:pattern=^paris$,flags=im").validate("x\nParis\n", _ctx()).ok  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="not available for regex specs"):
        parse_spec("regex:pattern=a,flags=x")


def test_schema_spec_patterns_are_linear() -> None:
    schema = {"type": "object", "patternProperties": {CATASTROPHIC: {"type": "integer"}}, "additionalProperties": False,
              "properties": {"s": {"type": "string", "pattern": CATASTROPHIC}}}
    validator = parse_specs([{"type": "schema", "params": {"schema": schema}}])[0]
    verdict = validator.validate('{"s": "' + "a" * 50_000 + '", "' + "b" * 50_000 + '": 1}', _ctx())
    assert isinstance(verdict, Verdict) and not verdict.ok
    assert "does not match" in verdict.feedback


def test_python_callers_keep_pythons_re() -> None:
    assert Regex(r"(a)\1").validate("aa", _ctx()).ok


def test_slow_validator_on_a_long_answer_runs_off_the_loop_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_base, "OFF_LOOP_TIMEOUT_S", 0.2)
    release = threading.Event()

    class Stuck:
        name = "stuck"
        expensive = False
        cpu_bound = True

        def validate(self, text: str, context: Any) -> Verdict:
            release.wait(20)
            return Verdict(True, validator=self.name)

    async def main() -> tuple[Verdict, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        verdict = await run_validator(Stuck(), "x" * _base.OFF_LOOP_CHARS, _ctx())
        task.cancel()
        return verdict, ticks

    try:
        verdict, ticks = asyncio.run(main())
    finally:
        release.set()
    assert not verdict.ok and "did not finish" in verdict.feedback
    assert ticks > 0  # the loop kept running while the validator was stuck
