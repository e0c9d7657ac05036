"""Request building: check a call's arguments and split them into a Request and CallOptions.

``CallOptions`` carries what llm_call's own layers (retry, validation, pipeline, tasks) read;
every other keyword stays in ``Request.options`` for the provider. An alias may bundle options of
both kinds; the caller's own arguments win.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._settings import current_settings
from .errors import UsageError
from .providers.base import CLAUDE_ONLY_OPTIONS
from .providers.router import resolve
from .types import CALL_OPTION_NAMES, Message, Request

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["CallOptions", "build_messages", "build_request", "default_model"]

_log = logging.getLogger("llm_call")
_default_announced = False

#: the keyword arguments of a call that are llm_call's own (named parameters and CallOptions)
_OWN_NAMES = sorted(CALL_OPTION_NAMES | {"model", "prompt", "messages", "system", "temperature", "max_tokens", "timeout"})
#: names people reach for that no provider takes -> the option they mean
_MISNAMED = {"validation": "validate", "validators": "validate", "escalation": "escalate", "fallback": "fallbacks", "retries": "retry"}
#: numeric options: name -> (must be an int, smallest value, whether the smallest is allowed)
_NUMBERS: dict[str, tuple[bool, float, bool]] = {
    "temperature": (False, 0, True),
    "max_tokens": (True, 1, True),
    "timeout": (False, 0, False),
    "max_attempts": (True, 1, True),
    "tools_after": (True, 1, True),
    "human_after": (True, 1, True),
    "budget_usd": (False, 0, False),
    "budget_tokens": (True, 1, True),
    "deadline_s": (False, 0, False),
    "priority": (True, float("-inf"), True),
}


def check_number(name: str, value: Any) -> None:
    """A numeric argument of a call has the right type and range, or a UsageError says which."""
    if value is None:
        return
    integer, low, inclusive = _NUMBERS[name]
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise UsageError(f"{name} must be {kind}, not {type(value).__name__} {value!r}")
    if value < low or (value == low and not inclusive):
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        raise UsageError(f"{name} must be {bound}, not {value}")


def _check_retry_dict(retry: dict[str, Any]) -> None:
    """``retry={...}`` (the JSON form): known keys with numbers, checked when the call is built
    (a batch --dry-run or a task submit sees it) rather than as a ValueError in the retry layer."""
    known = ("max_retries", "base_delay", "max_delay")
    for key, value in retry.items():
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
            meant = f" (did you mean {near[0]!r}?)" if near else ""
            raise UsageError(f"retry dict has unknown key {key!r}{meant}; known: {', '.join(known)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise UsageError(f"retry dict: {key} must be a number >= 0, not {type(value).__name__} {value!r}")


@functools.lru_cache(maxsize=1024)
def _meant(key: str) -> str | None:
    """The option of llm_call's own that ``key`` misspells, or None. Cached: difflib costs tens of
    microseconds per name, and a server sends the same few provider options (stop, tools, ...)
    with every request. A real option of a route (``max_budget_usd`` of the Claude CLI) is
    never a misspelling."""
    if key in CLAUDE_ONLY_OPTIONS:
        return None
    return _MISNAMED.get(key) or next(iter(difflib.get_close_matches(key, _OWN_NAMES, n=1, cutoff=0.8)), None)


def _check_unknown(options: dict[str, Any]) -> None:
    """A provider option that is a near miss of one of llm_call's own is a typo, not an option:
    sent on, it would be ignored by lenient servers (the call silently without its timeout or
    validation) or refused by strict ones with a message that does not say what was meant."""
    for key in options:
        meant = _meant(key)
        if meant is not None:
            raise UsageError(
                f"unknown option {key!r}: did you mean {meant!r}?",
                hint="options llm_call does not know go to the provider as they are (stop=, seed=, ...)",
            )


@dataclass(slots=True)
class CallOptions:
    """What the layers above the providers need, split from provider options."""

    validate: Any = None
    response_model: Any = None
    max_attempts: int | None = None
    escalate: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    tools_after: int | None = None
    tools_mcp_config: dict[str, Any] | None = None
    tools_mcp_servers: list[str] | None = None
    human_after: int | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    deadline_s: float | None = None
    mode: str = "direct"
    progress: Any = None
    long_running: bool = False
    retry: Any = None
    idempotency_key: str | None = None
    priority: int = 0
    #: what a stream cut after its first chunk does when retries or fallbacks allow another
    #: call: "restart" (the answer starts again, announced by a retry chunk), "continue" (ask
    #: for the rest of the delivered text) or "off" (raise)
    stream_rescue: str = "restart"

    @property
    def validating(self) -> bool:
        return bool(self.validate) or self.response_model is not None

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> CallOptions:
        """Take llm_call's own options out of ``options`` (the rest stays for the provider)."""
        mine = {k: options.pop(k) for k in list(options) if k in CALL_OPTION_NAMES}
        for key in ("escalate", "fallbacks"):
            value = mine.get(key)
            if value is None:
                mine.pop(key, None)
            elif isinstance(value, str):
                mine[key] = [value]
            elif isinstance(value, list | tuple):
                mine[key] = list(value)
            else:
                raise UsageError(f"{key} must be a model name or a list of model names, not {type(value).__name__} {value!r}")
        if mine.get("mode") is None:
            mine.pop("mode", None)
        if mine.get("mode", "direct") not in ("direct", "background", "auto"):
            raise UsageError(f"mode must be 'direct', 'background' or 'auto', not {mine['mode']!r}")
        opts = cls(**mine)
        if mine:
            opts.check()
        return opts

    def check(self) -> None:
        """Reject option combinations that would be silently ignored or make no sense."""
        if self.stream_rescue not in ("restart", "continue", "off"):
            raise UsageError(
                f"stream_rescue must be 'restart', 'continue' or 'off', not {self.stream_rescue!r}",
                hint="'restart' (default) starts a cut stream again after a retry chunk; 'continue' asks for the rest",
            )
        for name in ("max_attempts", "tools_after", "human_after", "budget_usd", "budget_tokens", "deadline_s", "priority"):
            check_number(name, getattr(self, name))
        if self.progress is not None and not callable(self.progress):
            raise UsageError(f"progress must be a callable progress(kind, data), not {type(self.progress).__name__} {self.progress!r}")
        if isinstance(self.retry, dict):
            _check_retry_dict(self.retry)
        if not self.validating:
            needs = [
                name
                for name in ("escalate", "tools_after", "tools_mcp_config", "tools_mcp_servers", "human_after", "budget_usd", "budget_tokens")
                if getattr(self, name)
            ]
            if needs:
                raise UsageError(
                    f"{', '.join(needs)} only appl{'ies' if len(needs) == 1 else 'y'} to validated calls: add validate=[...] or response_model=",
                    hint="for provider failures use fallbacks=[...]; deadline_s works without validation",
                )
        if self.tools_mcp_servers is not None and (
            not isinstance(self.tools_mcp_servers, list | tuple) or not all(isinstance(n, str) and n for n in self.tools_mcp_servers)
        ):
            raise UsageError("tools_mcp_servers must be a list of MCP server names declared under [claude.mcp_servers]")
        for model in (*self.escalate, *self.fallbacks):
            if not isinstance(model, str) or not model.strip():
                raise UsageError(f"escalate/fallbacks entries must be model names, not {model!r}")


def default_model(settings: Settings) -> str:
    """The configured default model, or the embedded local model (announced once)."""
    global _default_announced
    if settings.default_model:
        return settings.default_model
    from .config import DEFAULT_MODEL

    if not _default_announced:
        _default_announced = True
        _log.info("no model given and no default_model configured: using %s", DEFAULT_MODEL)
    return DEFAULT_MODEL


def _check_default_model(name: str, settings: Settings) -> None:
    """A configured default model that names no route fails naming ``default_model``: the
    caller gave no model, so an error about model 'x' alone would not say where 'x' came from."""
    from .errors import ConfigError

    try:
        resolve(name, settings)
    except ConfigError as exc:
        raise ConfigError(  # no file path: the server sends this message to its clients
            f"the default model {name!r} (default_model in the configuration, or $LLM_CALL_DEFAULT_MODEL): {exc.message}",
            hint=exc.hint,
        ) from None


def build_messages(
    prompt: str | None, messages: Sequence[Message] | None, system: str | None
) -> list[Message]:
    """The conversation to send. Exactly one of ``prompt`` and ``messages``."""
    if prompt is not None and messages is not None:
        raise UsageError("give either prompt or messages, not both")
    if prompt is None and messages is None:
        raise UsageError("no prompt and no messages: give prompt='...' or messages=[...]")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise UsageError(f"prompt must be a string, not {type(prompt).__name__}")
        if not prompt.strip():
            raise UsageError("the prompt is empty")
        out: list[Message] = [{"role": "user", "content": prompt}]
    else:
        assert messages is not None
        if isinstance(messages, str | bytes) or not messages:
            raise UsageError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                raise UsageError(f"messages[{i}] must be a dict with 'role' and 'content'")
            if m["role"] not in ("system", "user", "assistant", "tool", "developer"):
                raise UsageError(
                    f"messages[{i}].role {m['role']!r} is not one of system, user, assistant, tool, developer"
                )
            out.append(m)
    if system is not None:
        out = [{"role": "system", "content": system}, *(m for m in out if m["role"] != "system")]
    return out


def build_request(
    model: str | None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> tuple[Request, CallOptions]:
    """Check the arguments of a call and split them into a Request and the layer options."""
    msgs = build_messages(prompt, messages, system)
    if "stream" in options:
        raise UsageError("stream= is not an option of a call", hint="use llm_call.astream() or llm_call.stream() to stream")
    if model is not None and not isinstance(model, str):
        raise UsageError(f"model must be a string such as 'openai/gpt-4o-mini', not {type(model).__name__} {model!r}")
    for key, value in (("temperature", temperature), ("max_tokens", max_tokens), ("timeout", timeout)):
        check_number(key, value)
    if system is not None and not isinstance(system, str):
        raise UsageError(f"system must be a string, not {type(system).__name__}")
    settings = current_settings()
    name = model or default_model(settings)
    if not model and settings.default_model:
        _check_default_model(name, settings)
    if settings.aliases and settings.alias_name(name) is not None:
        # an alias may bundle llm_call's own options (validate=, fallbacks= ...): the caller's win
        for key, value in resolve(name, settings).alias_options().items():
            if key in CALL_OPTION_NAMES and key not in options:
                options[key] = value
    opts = CallOptions.pop_from(options)
    _check_unknown(options)
    request = Request(
        model=name, messages=msgs, temperature=temperature, max_tokens=max_tokens, timeout=timeout, options=options
    )
    return request, opts
