"""Claude CLI messages -> chunks, a :class:`Response`, or a typed error (the ``max/*`` route).

:class:`RunState` follows one run: text deltas of top-level turns become :class:`Chunk` s, tool
use becomes ``tool_started``/``tool_finished`` progress events (and chunks), the CLI's own
API retries ``retry_wait`` events (``source="claude_cli"``), the ``init``
message gives the session id and working directory, the ``result`` message the answer, and ``rate_limit_event`` the subscription's quota
(:func:`~.claude_quota.record_rate_limit_event`).
:func:`result_error` is the one place where a CLI result becomes an error:

==========================================  ==============================================
result                                      error
==========================================  ==============================================
``error_max_turns``, ``error_max_budget_usd``,  ProviderFailed(subtype=...)
``error_during_execution``, other ``error*``
"Not logged in" / authentication_failed     AuthError (hint: ``claude /login``)
API status 401/403, 404, 429                AuthError, ModelNotFound, RateLimited
429 with the subscription's window rejected QuotaExhausted(window, retry_after until the reset)
other API status (500, 529 ...)             ProviderHTTPError(status) (5xx/529 transient)
anything else with ``is_error``             ProviderFailed
==========================================  ==============================================

Imported only when a ``max/*`` call runs (it imports ``claude_agent_sdk``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    CLIConnectionError,
    CLIJSONDecodeError,
    CLINotFoundError,
    ProcessError,
    RateLimitEvent,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

from .._progress import emit
from ..errors import (
    AuthError,
    ConfigError,
    LLMCallError,
    MalformedResponse,
    ModelNotFound,
    ProviderError,
    ProviderFailed,
    ProviderHTTPError,
    RateLimited,
)
from ..types import Chunk, Response, Usage
from ._claude_plan import LOGIN_HINT, NAME
from .claude_quota import QUOTA, block_of, exhausted_error, record_rate_limit_event

__all__ = ["RunState", "result_error"]

_log = logging.getLogger("llm_call.providers.claude_cli")

_API_STATUS = re.compile(r"API Error: (?:[^0-9]*\()?(\d{3})\b")


def result_error(
    result: Any, assistant_error: str | None, model: str, *, use_api_key: bool = False
) -> ProviderError | None:
    """The typed error for a CLI result message, or None when it is a real answer."""
    subtype = str(getattr(result, "subtype", "") or "")
    is_error = bool(getattr(result, "is_error", False))
    if subtype == "success" and not is_error:
        return None
    text = str(getattr(result, "result", None) or "").strip()
    errors = getattr(result, "errors", None) or []
    detail = text or "; ".join(str(e) for e in errors) or f"error result ({subtype})"
    msg = f"Claude CLI error: {detail}"
    where = {"provider": NAME, "model": model}
    if subtype == "error_max_turns":
        return ProviderFailed(msg, hint="raise max_turns=", subtype=subtype, **where)
    if subtype == "error_max_budget_usd":
        return ProviderFailed(msg, hint="raise max_budget_usd=", subtype=subtype, **where)
    if subtype.startswith("error"):
        return ProviderFailed(msg, subtype=subtype, **where)
    status = getattr(result, "api_error_status", None)
    if status is None and (m := _API_STATUS.search(text)):
        status = int(m.group(1))
    if "not logged in" in text.lower() or "/login" in text.lower():
        return AuthError(msg, hint=LOGIN_HINT, **where)
    if assistant_error == "authentication_failed" or status in (401, 403):
        hint = "check ANTHROPIC_API_KEY" if use_api_key else LOGIN_HINT
        return AuthError(msg, hint=hint, **where)
    if status == 404:
        return ModelNotFound(msg, hint="check the model name after max/", **where)
    if status == 429 or assistant_error == "rate_limit":
        return RateLimited(msg, hint="the subscription's usage limit may be reached", retry_after=None, **where)
    if status is not None:
        return ProviderHTTPError(msg, status=int(status), body=text[:2000], **where)
    return ProviderFailed(msg, subtype=assistant_error or "error_result", **where)


_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


class RunState:
    """What one CLI run has said so far; turns SDK messages into chunks and the Response."""

    def __init__(self, model: str, use_api_key: bool, stderr: deque[str], account: str = "default") -> None:
        self.model = model
        self.account = account
        self.shown_model = f"{NAME}/{model}"
        self.use_api_key = use_api_key
        self.stderr = stderr
        self.result: Any = None
        self.assistant_error: str | None = None
        self.info: dict[str, Any] = {}
        self.tools: dict[str, str] = {}
        self.tool_log: list[dict[str, Any]] = []
        self.turn_text: list[str] = []  # text streamed in the current top-level turn

    def handle(self, msg: Any) -> Iterator[Chunk]:
        if isinstance(msg, StreamEvent):
            if msg.parent_tool_use_id is not None:
                return
            event = msg.event
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    self.turn_text.append(delta["text"])
                    emit("chunk", text=delta["text"])  # task progress (the manager throttles it)
                    yield Chunk(text=delta["text"], model=self.shown_model)
            elif kind == "message_start":
                self.turn_text = []
        elif isinstance(msg, AssistantMessage):
            if msg.error:
                self.assistant_error = msg.error
            if msg.parent_tool_use_id is None:
                self.info["resolved_model"] = msg.model
            for block in msg.content:
                if isinstance(block, ToolUseBlock) and block.id not in self.tools:
                    self.tools[block.id] = block.name
                    started: dict[str, Any] = {"tool": block.name, "id": block.id}
                    emit("tool_started", **started)
                    yield Chunk(model=self.shown_model, event="tool_started", data=started)
        elif isinstance(msg, UserMessage):
            if isinstance(msg.content, list):
                for block in msg.content:
                    if isinstance(block, ToolResultBlock) and block.tool_use_id in self.tools:
                        data: dict[str, Any] = {
                            "tool": self.tools[block.tool_use_id],
                            "id": block.tool_use_id,
                            "is_error": bool(block.is_error),
                        }
                        self.tool_log.append(data)
                        emit("tool_finished", **data)
                        yield Chunk(model=self.shown_model, event="tool_finished", data=data)
        elif isinstance(msg, SystemMessage):
            if msg.subtype == "init":
                self._init(msg.data)
            elif msg.subtype == "api_retry":  # the CLI retries API errors itself
                data = msg.data
                delay = data.get("retry_delay_ms")
                emit(
                    "retry_wait",
                    source="claude_cli",
                    attempt=data.get("attempt"),
                    max_retries=data.get("max_retries"),
                    status=data.get("error_status"),
                    delay_s=None if delay is None else delay / 1000,
                )
        elif isinstance(msg, RateLimitEvent):
            record_rate_limit_event(msg.rate_limit_info.raw, self.account)
        elif isinstance(msg, ResultMessage):
            self.result = msg

    def _init(self, data: dict[str, Any]) -> None:
        self.info["session_id"] = data.get("session_id")
        self.info["cwd"] = data.get("cwd")
        self.info["resolved_model"] = data.get("model")
        failed = [s.get("name") for s in data.get("mcp_servers") or [] if s.get("status") == "failed"]
        if failed:
            raise ProviderFailed(
                f"Claude CLI could not start MCP server(s) {failed}",
                hint="check their command and args in mcp_config (stdio servers start in the call's working directory)",
                provider=NAME,
                model=self.model,
                subtype="mcp_server_failed",
            )

    def error(self) -> ProviderError | None:
        if self.result is None:
            return None
        error = result_error(self.result, self.assistant_error, self.model, use_api_key=self.use_api_key)
        if isinstance(error, RateLimited):
            # the subscription refused: name the window and the time it resets
            block = block_of(QUOTA.get(self.account), allow_overage=False, model=self.model)
            if block is not None:
                quota = exhausted_error(block, self.account, self.model)
                return type(quota)(
                    f"{quota.message} ({error.message})", hint=quota.hint, **quota.field_values()
                )
        return error

    def translate(self, exc: Exception) -> LLMCallError:
        """A typed error for an exception of the SDK (or the process)."""
        mapped = self.error()
        if mapped is not None:
            return mapped  # the CLI reported why it failed; its exit code follows from that
        tail = " | ".join(list(self.stderr)[-5:])
        where = {"provider": NAME, "model": self.model}
        if isinstance(exc, CLINotFoundError):
            _log.warning("Claude Code CLI not found: %s", exc)  # the SDK's text names paths: for the log
            return ConfigError(
                "Claude Code CLI not found (the log says where it was looked for)",
                hint="pip install claude-agent-sdk (it bundles the CLI) or set LLM_CALL_CLAUDE_CLI",
            )
        if isinstance(exc, CLIJSONDecodeError):
            return MalformedResponse(f"Claude CLI wrote corrupt JSON on stdout: {exc}", **where)
        if isinstance(exc, ProcessError):
            after = " after its result" if self.result is not None else " without a result"
            return ProviderFailed(
                f"Claude CLI exited with code {exc.exit_code}{after}" + (f": {tail}" if tail else ""),
                subtype="exit_code",
                **where,
            )
        if isinstance(exc, CLIConnectionError):
            return ProviderFailed(f"cannot run the Claude CLI: {exc}", subtype="cli_start", **where)
        return ProviderFailed(f"Claude CLI call failed: {type(exc).__name__}: {exc}", subtype=type(exc).__name__, **where)

    def response(self) -> Response:
        r = self.result
        if r is None:
            tail = " | ".join(list(self.stderr)[-5:])
            raise MalformedResponse(
                "Claude CLI ended without a result message" + (f": {tail}" if tail else ""),
                provider=NAME,
                model=self.model,
            )
        usage = r.usage or {}
        prompt_tokens = sum(
            int(usage.get(k) or 0)
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        extra = {
            **self.info,
            "num_turns": r.num_turns,
            "session_id": r.session_id,
            "duration_ms": r.duration_ms,
            "duration_api_ms": r.duration_api_ms,
            "tools": self.tool_log,
        }
        if r.permission_denials:
            extra["permission_denials"] = r.permission_denials
        return Response(
            text=r.result or "",
            model=self.shown_model,
            usage=Usage(prompt_tokens, int(usage.get("output_tokens") or 0)),
            cost_usd=r.total_cost_usd,
            raw=dataclasses.asdict(r),
            finish_reason=_FINISH.get(r.stop_reason or "end_turn", r.stop_reason),
            extra=extra,
        )
