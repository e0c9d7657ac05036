"""Plain data types shared by every layer. No I/O, no heavy imports.

Dataclasses rather than pydantic models: they are created on every call and every stream chunk,
and ``import llm_call`` must stay fast.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "Attempt",
    "Chunk",
    "EmbeddingRequest",
    "Embeddings",
    "Message",
    "Request",
    "Response",
    "TaskEvent",
    "TaskRecord",
    "TaskStatus",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "assemble_tool_calls",
]

#: keyword options of a call consumed by llm_call's own layers; every other keyword goes to the
#: provider (an alias's bundled options are split the same way)
CALL_OPTION_NAMES = frozenset(
    {
        "validate",
        "response_model",
        "max_attempts",
        "escalate",
        "fallbacks",
        "tools_after",
        "tools_mcp_config",
        "tools_mcp_servers",
        "human_after",
        "budget_usd",
        "budget_tokens",
        "deadline_s",
        "mode",
        "progress",
        "long_running",
        "retry",
        "idempotency_key",
        "priority",
        "stream_rescue",
    }
)

#: An OpenAI-shaped chat message: ``{"role": "user", "content": "hi"}``; content may be a list of
#: parts (``{"type": "text", ...}``, ``{"type": "image_url", ...}``).
Message = dict[str, Any]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        return cls(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A function call the model asked for (the answer ends with ``finish_reason="tool_calls"``).

    ``arguments`` is the JSON text exactly as the model produced it (it may be invalid JSON: parse
    it yourself, or use :meth:`parsed_arguments`). Send the result back as a ``{"role": "tool",
    "tool_call_id": call.id, "content": ...}`` message after the assistant message
    ``{"role": "assistant", "content": None, "tool_calls": [call.to_openai()]}``.

    Example::

        resp = await llm_call.acall("openai/gpt-4o-mini", "Weather in Oslo?", tools=[WEATHER_TOOL])
        for call in resp.tool_calls:
            print(call.name, call.parsed_arguments())
    """

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """``json.loads(arguments)``; raises ``ValueError`` when the model wrote invalid JSON."""
        import json

        return json.loads(self.arguments or "{}")

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI chat ``tool_calls`` entry."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolCall:
        """From :meth:`to_dict` or from an OpenAI ``tool_calls`` entry (``{"function": {...}}``)."""
        fn = data.get("function")
        if isinstance(fn, dict):
            name, args = fn.get("name"), fn.get("arguments")
        else:
            name, args = data.get("name"), data.get("arguments")
        if args is None:
            args = "{}"
        elif not isinstance(args, str):
            import json

            args = json.dumps(args, ensure_ascii=False)
        return cls(id=str(data.get("id") or ""), name=str(name or ""), arguments=args)


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call (as in OpenAI's ``delta.tool_calls``).

    ``index`` tells the calls of one answer apart; the first fragment of a call has its ``id``
    and ``name``, later ones append to ``arguments``. :func:`assemble_tool_calls` joins them.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``delta.tool_calls`` entry."""
        d: dict[str, Any] = {"index": self.index}
        fn: dict[str, Any] = {"arguments": self.arguments}
        if self.id is not None:
            d["id"] = self.id
            d["type"] = "function"
        if self.name is not None:
            fn["name"] = self.name
        d["function"] = fn
        return d


def assemble_tool_calls(deltas: Iterable[ToolCallDelta]) -> list[ToolCall]:
    """Join streamed fragments into complete calls, ordered by index.

    Example::

        deltas = []
        async for chunk in llm_call.astream(model, prompt, tools=[...]):
            deltas.extend(chunk.tool_calls)
        calls = llm_call.assemble_tool_calls(deltas)
    """
    parts: dict[int, list[Any]] = {}
    for d in deltas:
        entry = parts.get(d.index)
        if entry is None:
            entry = parts[d.index] = [None, None, []]
        if d.id:
            entry[0] = d.id
        if d.name:
            entry[1] = d.name if entry[1] is None else entry[1] + d.name
        if d.arguments:
            entry[2].append(d.arguments)
    return [
        ToolCall(id=e[0] or f"call_{i}", name=e[1] or "", arguments="".join(e[2]) or "{}")
        for i, e in sorted(parts.items())
    ]


@dataclass(slots=True)
class Attempt:
    """One model call made on the way to an answer (answer attempts and judge calls)."""

    number: int
    model: str
    kind: str = "answer"  # "answer" | "judge" | "provider_error" (a failed call, retried)
    ok: bool = False
    text: str | None = None
    feedback: str | None = None
    error: dict[str, Any] | None = None  # errors.error_to_dict of a provider failure
    latency_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # Verdict.to_dict() per validator

    def to_dict(self) -> dict[str, Any]:
        # as asdict() (containers deep-copied) without its cost: every task result stores these
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in d.items():
            if isinstance(value, dict | list) and value:
                d[key] = copy.deepcopy(value)
            elif isinstance(value, dict | list):
                d[key] = type(value)()
        d["usage"] = self.usage.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        d = dict(data)
        d["usage"] = Usage.from_dict(d.get("usage"))
        return cls(**d)


@dataclass(slots=True)
class Response:
    """The answer to a call.

    ``model`` is the model that answered (after aliases, fallbacks and escalation), ``raw`` the
    provider's payload, ``attempts`` the record of every model call made for this answer.
    ``tool_calls`` holds the functions the model asked to call (``finish_reason="tool_calls"``;
    ``text`` is then often empty). ``finish_reason`` is ``"stop"``, ``"length"``,
    ``"tool_calls"``, ``"content_filter"`` or what the provider said.
    """

    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    latency_s: float = 0.0
    raw: Any = None
    attempts: list[Attempt] = field(default_factory=list)
    parsed: Any = None
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. session_id, num_turns

    def to_dict(self) -> dict[str, Any]:
        parsed = self.parsed
        dump = getattr(parsed, "model_dump", None)
        if callable(dump):
            parsed = dump(mode="json")
        return {
            "text": self.text,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "raw": self.raw,
            "attempts": [a.to_dict() for a in self.attempts],
            "parsed": parsed,
            "finish_reason": self.finish_reason,
            "tool_calls": [c.to_dict() for c in self.tool_calls],
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Response:
        return cls(
            text=data["text"],
            model=data["model"],
            usage=Usage.from_dict(data.get("usage")),
            cost_usd=data.get("cost_usd"),
            latency_s=float(data.get("latency_s") or 0.0),
            raw=data.get("raw"),
            attempts=[Attempt.from_dict(a) for a in data.get("attempts") or []],
            parsed=data.get("parsed"),
            finish_reason=data.get("finish_reason"),
            tool_calls=[ToolCall.from_dict(c) for c in data.get("tool_calls") or []],
            extra=dict(data.get("extra") or {}),
        )


@dataclass(slots=True)
class Chunk:
    """A piece of a streamed answer.

    ``text`` is the delta; ``tool_calls`` the tool-call fragments it carries (join them with
    :func:`assemble_tool_calls`). ``attempt`` numbers the attempt the chunk belongs to (a validation
    retry starts a new attempt, announced by a chunk with ``event="retry"``; a stream cut and
    rescued by a transient retry or fallback is announced by a ``retry`` chunk whose ``data`` has
    ``rescue="restart"``: drop the text and tool-call fragments so far, the answer starts again;
    or ``rescue="continue"``: keep the text so far, the next chunks continue it). The last chunk of a
    stream has ``finish_reason`` (``"tool_calls"`` when the model asked for tools) and, when
    known, ``usage``; its ``data`` may name the ``stop_sequence`` that ended the answer and hold
    the model's ``refusal`` (OpenAI-compatible routes). ``event`` marks non-text progress
    (``"retry"``, ``"tool_started"``, ``"tool_finished"``) with details in ``data``.
    """

    text: str = ""
    model: str = ""
    attempt: int = 1
    finish_reason: str | None = None
    usage: Usage | None = None
    event: str | None = None
    data: dict[str, Any] | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass(slots=True)
class Request:
    """A fully resolved request as it reaches a provider.

    ``model`` is the route string (``openai/gpt-4o``, ``max/sonnet``); providers read the part
    they need. ``options`` holds provider options (``stop``, ``seed``, ``mcp_config``, and the
    OpenAI tool options ``tools``, ``tool_choice``, ``parallel_tool_calls``, ...). Messages may
    carry assistant ``tool_calls`` and ``{"role": "tool", "tool_call_id": ...}`` results.
    """

    model: str
    messages: list[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "options": self.options,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        return cls(
            model=data["model"],
            messages=list(data["messages"]),
            temperature=data.get("temperature"),
            max_tokens=data.get("max_tokens"),
            timeout=data.get("timeout"),
            options=dict(data.get("options") or {}),
        )

    def replace(self, **changes: Any) -> Request:
        d: dict[str, Any] = {
            "model": self.model,
            "messages": list(self.messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "options": dict(self.options),
        }
        d.update(changes)
        return Request(**d)


@dataclass(slots=True)
class EmbeddingRequest:
    """An embeddings request as it reaches a provider: ``input`` is one text per vector wanted;
    ``options`` holds provider options (``dimensions``, ``encoding_format``, ``user`` ...)."""

    model: str
    input: list[str]
    timeout: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> EmbeddingRequest:
        return dataclasses.replace(self, **{"options": dict(self.options), **changes})


@dataclass(slots=True)
class Embeddings:
    """The answer to :func:`llm_call.aembed`: one vector per input text, in input order.

    ``model`` is the model that answered (after aliases and fallbacks); ``usage.prompt_tokens``
    the tokens of the input as the provider counted them; ``attempts`` records the failed calls
    retried on the way (``kind="provider_error"``) and the answering call.
    """

    vectors: list[list[float]]
    model: str
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NEEDS_REVIEW = "needs_review"
    INTERRUPTED = "interrupted"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    def __str__(self) -> str:
        return self.value


_FINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.INTERRUPTED}
)


@dataclass(slots=True)
class TaskEvent:
    """One progress event of a task. ``seq`` increases per task from 1."""

    task_id: str
    seq: int
    kind: str  # queued, started, attempt, chunk, tool_started, tool_finished, validation_failed,
    #            escalated, retry_wait, needs_review, finished, cancelled, failed
    data: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "seq": self.seq,
            "kind": self.kind,
            "data": self.data,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskEvent:
        return cls(
            task_id=data["task_id"],
            seq=int(data["seq"]),
            kind=data["kind"],
            data=dict(data.get("data") or {}),
            at=float(data.get("at") or 0.0),
        )


@dataclass(slots=True)
class TaskRecord:
    """What a task store knows about one task."""

    id: str
    status: TaskStatus
    request: dict[str, Any]  # call arguments (see tasks docs), enough to re-run the task
    route: str = ""
    priority: int = 0
    idempotency_key: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0  # executions started (recovery counts these)
    progress: dict[str, Any] = field(default_factory=dict)  # last event summary
    result: dict[str, Any] | None = None  # Response.to_dict()
    error: dict[str, Any] | None = None  # errors.error_to_dict()
    worker: str | None = None  # the worker running it (status running)
    owner: str | None = None  # the manager reserved to run it; None: any worker
    cancel_requested: bool = False
    #: who submitted it through the server: the API key's tenant id (a hash, never the key);
    #: None for tasks of a server without keys and of library/CLI callers
    tenant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        d = dict(data)
        d["status"] = TaskStatus(d["status"])
        return cls(**d)
