"""Request bodies as pydantic models: one definition gives the validation and the OpenAPI schema.

The chat completion body is validated with ``model_validate_json`` straight from the raw bytes
(pydantic-core parses and validates in one pass); messages are TypedDicts, so they come out as
the plain dicts the providers take, without a ``model_dump`` per message.

The llm_call extras (``validation``, ``max_attempts``, ``escalate``, ``fallbacks``,
``mcp_servers``, ``tool_profile``, ``allowed_tools``, and the validation loop's ``human_after``,
``tools_after``, ``tools_mcp_servers``, ``budget_usd``, ``budget_tokens``, ``deadline_s``) are shared by chat completions, responses and tasks and map to
:func:`llm_call.acall` options in :func:`call_options`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from .._jsontree import nested_deeper_than
from ..errors import UsageError
from ._errors import HTTPFailure, pydantic_failure
from ._request_policy import check_judge, check_models, tool_options

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "MAX_MESSAGES",
    "MAX_SCHEMA_OBJECTS",
    "MAX_TOOLS",
    "ChatCompletionRequest",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "LLMCallExtras",
    "ResponsesRequest",
    "ReviewRequest",
    "TaskRequest",
    "call_options",
    "check_specs",
    "parse_json_body",
]

Role = Literal["system", "user", "assistant", "tool", "developer"]
#: task priorities a request may give: -1000..1000 (the store keeps a 64-bit integer, and the Redis
#: backend a queue per priority and route)
PRIORITY_RANGE = 1000
#: messages (or Responses input items) and tools one request may carry. A body of
#: ``server.max_body_bytes`` (10 MB) holds 300,000 empty messages, and every item costs parsing,
#: conversion and storing on the event loop: such a body held it for seconds (3.9 s on
#: /v1/responses) while every other key waited. 10,000 is far beyond a real conversation
#: (OpenAI allows 128 tools).
MAX_MESSAGES = 10_000
MAX_TOOLS = 1_000
#: JSON objects (subschemas) in all of a request's validation specs: see :func:`check_specs`
MAX_SCHEMA_OBJECTS = 1_000


@with_config(ConfigDict(extra="allow"))
class ChatMessage(TypedDict):
    """An OpenAI chat message; content is a string, a list of parts, or null (tool calls)."""

    role: Role
    content: NotRequired[str | list[dict[str, Any]] | None]
    name: NotRequired[str]
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]


ValidationSpec = str | dict[str, Any]


class LLMCallExtras(BaseModel):
    """llm_call's own options, accepted as extra body fields.

    Numbers are finite (``allow_inf_nan=False``): both JSON parsers accept ``Infinity`` and ``NaN``,
    and an infinite timeout or deadline overflowed deep in the call (a 500, or a task failed with
    OverflowError) instead of being a 400 naming the field. Lists that multiply model calls are
    bounded (a judge in ``validation`` is a call per attempt, each fallback or escalation one more):
    one request cannot turn into thousands of calls billed to the operator.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    validation: list[ValidationSpec] | None = Field(
        default=None,
        max_length=32,
        description="Validation specs the answer must pass, e.g. [\"json\", \"length:max=200\"]; "
        "failures are fed back to the model and retried",
    )
    max_attempts: int | None = Field(default=None, ge=1, le=100, description="Validation attempts in all")
    escalate: list[str] | None = Field(default=None, max_length=16, description="Models to escalate to after failed attempts")
    fallbacks: list[str] | None = Field(default=None, max_length=16, description="Models to try when the provider fails")
    mcp_config: dict[str, Any] | None = Field(
        default=None, description="Refused over HTTP (400): declare servers under [claude.mcp_servers] and use mcp_servers"
    )
    mcp_servers: list[str] | None = Field(
        default=None, max_length=32, description="MCP servers for max/* models, by name: declared under [claude.mcp_servers.NAME]"
    )
    tool_profile: str | None = Field(
        default=None, description="A tool profile for max/* models: declared under [claude.tool_profiles.NAME]"
    )
    allowed_tools: list[str] | None = Field(
        default=None, max_length=256, description="MCP tools the model may use (mcp__SERVER or mcp__SERVER__TOOL of selected servers)"
    )
    human_after: int | None = Field(
        default=None, ge=1, description="Stop for a human review after this many failed attempts (tasks: needs_review)"
    )
    tools_after: int | None = Field(default=None, ge=1, description="From this attempt on, give the model tools_mcp_config")
    tools_mcp_config: dict[str, Any] | None = Field(
        default=None, description="Refused over HTTP (400): use tools_mcp_servers"
    )
    tools_mcp_servers: list[str] | None = Field(
        default=None, max_length=32, description="MCP servers (declared under [claude.mcp_servers]) added from attempt tools_after on"
    )
    budget_usd: float | None = Field(default=None, gt=0, description="Stop when known cost passes this")
    budget_tokens: int | None = Field(default=None, ge=1, description="Stop when tokens used pass this")
    deadline_s: float | None = Field(default=None, gt=0, description="Stop validation retries after this many seconds")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(LLMCallExtras):
    """``POST /v1/chat/completions``: the OpenAI request plus the llm_call extras."""

    model: str | None = Field(default=None, min_length=1, description="Model or alias; default: the configured default_model")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=1, description="Only 1 is supported")
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    stream_rescue: Literal["off", "continue"] | None = Field(
        default=None,
        description="Streams only. \"continue\": a stream cut after its first chunk is continued by the next "
        "retry or fallback (only the continuation is sent, after an llm_call retry event); default \"off\": "
        "an error event ends the stream, without [DONE]",
    )


#: OpenAI fields forwarded to the provider as options when given
PASSTHROUGH = (
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "user",
)


#: the deepest nesting a body parsed by the framework may have (the chat fast path's parser stops
#: at 200): a task stores its request, and a value nested near Python's recursion limit made every
#: later read of it (the task, any task list holding it) a RecursionError
MAX_BODY_DEPTH = 128


class _BoundedNesting(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _not_too_deep(cls, data: Any) -> Any:
        if nested_deeper_than(data, MAX_BODY_DEPTH):
            raise ValueError(f"the request body is nested more than {MAX_BODY_DEPTH} levels deep; flatten it")
        return data


class InputMessage(BaseModel):
    """A Responses API input item of type message (``{"role", "content"}``)."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]]
    type: Literal["message"] | None = None


class FunctionCallItem(BaseModel):
    """A Responses input item: a function call the model made earlier (``type: function_call``)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = ""
    id: str | None = None


class FunctionCallOutputItem(BaseModel):
    """A Responses input item: the result of a function call (``type: function_call_output``)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem


class ResponsesRequest(_BoundedNesting, LLMCallExtras):
    """``POST /v1/responses``: the OpenAI Responses request (the subset llm_call serves)."""

    model: str | None = Field(default=None, min_length=1)
    input: str | list[InputItem] = Field(
        description="A prompt, or a list of items: messages, function_call and function_call_output"
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None, max_length=MAX_TOOLS, description='Function tools, {"type": "function", "name", "parameters", ...}'
    )
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    instructions: str | None = Field(default=None, description="A system message placed before the input")
    background: bool = Field(default=False, description="Run as a background task and return at once")
    metadata: dict[str, str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    stream: bool = Field(default=False, description="Answer as Server-Sent Events (response.* events)")
    store: bool | None = None
    user: str | None = None
    # accepted for client compatibility; they do not change what llm_call does
    include: list[str] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    stream_options: dict[str, Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    priority: int = Field(default=0, ge=-PRIORITY_RANGE, le=PRIORITY_RANGE, description="Background task priority (higher runs first)")
    stream_rescue: Literal["off", "continue"] | None = Field(
        default=None,
        description="Direct streams only. \"continue\": a stream cut after its first chunk is continued by the "
        "next retry or fallback in the same output item; default \"off\": response.failed ends the stream",
    )

    @field_validator("input", mode="before")
    @classmethod
    def _bounded_input(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > MAX_MESSAGES:
            raise ValueError(f"List should have at most {MAX_MESSAGES} items, not {len(value)}")
        return value


class TaskRequest(_BoundedNesting, LLMCallExtras):
    """``POST /v1/tasks``: a call to run in the background, as llm_call arguments."""

    model: str | None = Field(default=None, min_length=1)
    prompt: str | None = Field(default=None, description="The prompt (or give messages)")
    messages: list[ChatMessage] | None = Field(default=None, max_length=MAX_MESSAGES)
    system: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    priority: int = Field(default=0, ge=-PRIORITY_RANGE, le=PRIORITY_RANGE, description="Higher runs first")
    idempotency_key: str | None = Field(default=None, max_length=200)
    metadata: dict[str, str] | None = None


class ReviewRequest(BaseModel):
    """``POST /v1/tasks/{id}/review``: approve the last answer, or reply and let it retry."""

    model_config = ConfigDict(extra="forbid")

    approve: bool | None = None
    reply: str | None = None


def parse_json_body(model: type[BaseModel], raw: bytes) -> Any:
    """Validate a raw JSON body against ``model``; a failure is a 400 naming the field."""
    if not raw:
        raise HTTPFailure(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise pydantic_failure(exc.errors(include_url=False), model=model) from None


def _schema_objects(spec: Any) -> int:
    """An upper bound on the JSON objects (subschemas) in a spec: its ``{`` characters."""
    text = spec if isinstance(spec, str) else json.dumps(spec, default=str)
    return text.count("{")


def check_specs(specs: list[Any] | None, settings: Settings | None = None) -> None:
    """Parse validation specs now, so a bad one is a 422 naming it before any model call.

    Parsed with file reads refused: a spec that would read a server file (``schema:@path`` in
    any spelling, string or dict form) gets the same message whatever the path, so a client can
    neither read files nor learn which exist. A spec that parses here reads no file later either.

    The specs' JSON Schemas hold at most :data:`MAX_SCHEMA_OBJECTS` objects in all: jsonschema
    checks a schema against its metaschema at about half a millisecond per subschema, on the event
    loop, so a 6 MB schema of 60,000 properties held the loop for 50 s.
    """
    if not specs:
        return
    objects = sum(_schema_objects(spec) for spec in specs)
    if objects > MAX_SCHEMA_OBJECTS:
        raise HTTPFailure(
            422,
            f"validation: the specs hold {objects} JSON objects (subschemas); at most {MAX_SCHEMA_OBJECTS} "
            "in all: checking a schema costs the server time per subschema",
            param="validation",
            code="invalid_validation_spec",
        )
    try:
        from ..validation import FILES_REFUSED, parse_spec
    except ImportError as exc:
        raise HTTPFailure(400, f"validation is not available in this build: {exc}", param="validation") from None
    for i, spec in enumerate(specs):
        try:
            validator = parse_spec(spec, allow_files=False)
        except UsageError as exc:
            if exc.message == FILES_REFUSED:
                message = f"validation[{i}]: {FILES_REFUSED}"
            else:
                message = f"validation[{i}] {spec!r} is not a valid validation spec: {exc}"
            raise HTTPFailure(422, message, param=f"validation.{i}", code="invalid_validation_spec") from None
        if settings is not None:
            check_judge(validator, i, settings)


def call_options(extras: LLMCallExtras, settings: Settings) -> dict[str, Any]:
    """The acall keyword options for the llm_call extras that were given.

    Tools and MCP servers only by the names the operator declared (:mod:`._request_policy`).
    """
    opts: dict[str, Any] = {}
    check_models(extras, settings)
    if extras.validation:
        check_specs(extras.validation, settings)
        opts["validate"] = list(extras.validation)
    if extras.max_attempts is not None:
        opts["max_attempts"] = extras.max_attempts
    if extras.escalate:
        opts["escalate"] = list(extras.escalate)
    if extras.fallbacks:
        opts["fallbacks"] = list(extras.fallbacks)
    opts.update(tool_options(extras, settings.claude))
    for name in _MORE_OPTIONS:
        value = getattr(extras, name)
        if value is not None:
            opts[name] = value
    return opts


_MORE_OPTIONS = ("human_after", "tools_after", "budget_usd", "budget_tokens", "deadline_s")
