"""Validation of answers and the feedback retry loop.

- :class:`Validator` protocol, :class:`Verdict`, :class:`ValidationContext` (``_base``);
- built-ins (``_builtin``): :class:`NotEmpty`, :class:`JsonValid`, :class:`JsonSchema`,
  :class:`PydanticModel`, :class:`Regex`, :class:`Contains`, :class:`NotContains`,
  :class:`Length`, :class:`PythonCode`, :class:`FieldPresent`, :class:`OneOf`;
- the LLM judge :func:`agent` (``_agent``);
- spec strings and dicts (``_specs``): :func:`parse_specs`, :func:`describe_validators`;
- the feedback loop (``loop``, run by every validated call); :func:`resume_validated` continues
  a call after :class:`~llm_call.errors.HumanReviewNeeded`.

Example::

    import llm_call
    from llm_call.validation import agent

    resp = await llm_call.acall(
        "openai/gpt-4o-mini",
        "List three primes as a JSON array.",
        validate=["json", "length:max=200", agent("Are all of {TEXT_TO_VALIDATE} primes?")],
        max_attempts=3,
    )
    print(resp.parsed, resp.extra["passed_attempt"])
"""

from ._agent import AgentValidator, agent
from ._base import (
    FunctionValidator,
    ValidationContext,
    Validator,
    Verdict,
    as_validator,
    extract_json,
)
from ._builtin import (
    Contains,
    FieldPresent,
    JsonSchema,
    JsonValid,
    Length,
    NotContains,
    NotEmpty,
    OneOf,
    PydanticModel,
    PythonCode,
    Regex,
)
from ._specs import FILES_REFUSED, describe_validators, parse_spec, parse_specs
from .loop import resume_validated

__all__ = [
    "FILES_REFUSED",
    "AgentValidator",
    "Contains",
    "FieldPresent",
    "FunctionValidator",
    "JsonSchema",
    "JsonValid",
    "Length",
    "NotContains",
    "NotEmpty",
    "OneOf",
    "PydanticModel",
    "PythonCode",
    "Regex",
    "ValidationContext",
    "Validator",
    "Verdict",
    "agent",
    "as_validator",
    "describe_validators",
    "extract_json",
    "parse_spec",
    "parse_specs",
    "resume_validated",
]
