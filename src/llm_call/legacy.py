"""The original project's request format: ``llm_config`` dicts, mapped key by key to ``acall``.

The original (``make_llm_request(llm_config)``) took one dict per call. :func:`acall_config` and
:func:`call_config` accept that dict, and batch files may contain it; :func:`map_llm_config`
does the translation, which ``docs/migration.md`` tables:

===============================  ==============================================================
original key                     llm_call
===============================  ==============================================================
``model``                        ``model`` (aliases such as ``max/text-general`` come from the
                                 config file's ``[aliases]``)
``messages``                     ``messages``
``temperature``, ``max_tokens``  the same keyword arguments
``timeout``                      ``timeout``
``stream``                       only ``false``: a config call returns one answer (use
                                 ``llm_call.astream`` to stream)
``response_format``              ``{"type": "json_object"}`` adds the ``json`` validator and the
                                 original's JSON instruction to the system prompt; it is sent to
                                 the provider except on ``max/*`` (the CLI has no such option)
``validation: [{type, params}]`` ``validate=[...]``, the original's names and parameters
                                 translated (``field_name`` -> ``path`` ...)
``retry_config.max_attempts``    ``max_attempts`` and ``retry={"max_retries": n - 1}``
``retry_config.initial_delay``,  ``retry={"base_delay": ..., "max_delay": ...}`` (the factor is
``max_delay``, ``backoff_factor`` always 2: another one is logged)
``mcp_config``                   ``mcp_config`` (``max/*`` models)
``max_attempts_before_tool_use`` ``tools_after``
``debug_tool_mcp_config``        ``tools_mcp_config``
``max_attempts_before_human``    ``human_after``
``default_validate``             ``true`` adds ``response_not_empty`` (the original's default
                                 validator); ``false`` adds nothing (ours has no defaults)
===============================  ==============================================================

Any other key is a :class:`~llm_call.errors.UsageError` naming it: nothing is dropped silently.

Example::

    import llm_call

    resp = await llm_call.acall_config({
        "model": "max/json-expert",
        "messages": [{"role": "user", "content": "A person as JSON with name, age, city."}],
        "response_format": {"type": "json_object"},
        "validation": [{"type": "field_present", "params": {"field_name": "city"}}],
        "retry_config": {"max_attempts": 3},
    })
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .types import Response

__all__ = [
    "LEGACY_KEYS",
    "LEGACY_ONLY_KEYS",
    "RETRY_CONFIG_KEYS",
    "acall_config",
    "call_config",
    "map_llm_config",
]

_log = logging.getLogger("llm_call.legacy")

#: every top-level key of the original's ``llm_config`` that has a mapping here
LEGACY_KEYS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "max_tokens",
        "timeout",
        "stream",
        "response_format",
        "validation",
        "retry_config",
        "mcp_config",
        "max_attempts_before_tool_use",
        "max_attempts_before_human",
        "debug_tool_mcp_config",
        "default_validate",
    }
)

#: keys that exist only in the original's format (a batch line with one of them is read as such)
LEGACY_ONLY_KEYS = frozenset(
    {
        "response_format",
        "retry_config",
        "max_attempts_before_tool_use",
        "max_attempts_before_human",
        "debug_tool_mcp_config",
        "default_validate",
        "stream",
    }
)

#: keys of ``retry_config`` with a mapping
RETRY_CONFIG_KEYS = frozenset({"max_attempts", "backoff_factor", "initial_delay", "max_delay"})

#: where an unmapped key of the original probably went, for the error's hint
_MOVED: dict[str, str] = {
    "debug_tool_name": "name the tool in the prompt or in debug_tool_mcp_config's server",
    "original_user_prompt": "the validation loop always has the original request",
    "api_base": "configure an endpoint in llm_call.toml ([endpoints.NAME] base_url=...)",
    "image_directory": "give image paths as absolute paths or data: URLs in messages",
    "max_image_size_kb": "resize images before the call",
    "prompt": "the original format has no 'prompt'; use messages (or our batch line format)",
    "question": "use messages",
    "validation_strategies": "use 'validation'",
}


def _where(where: str | None) -> str:
    return f" ({where})" if where else ""


def _positive_int(value: Any, key: str, where: str | None, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"llm_config key {key!r} must be an integer >= {minimum}, not {value!r}{_where(where)}")
    return value


def _number(value: Any, key: str, where: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise UsageError(f"llm_config key {key!r} must be a number >= 0, not {value!r}{_where(where)}")
    return float(value)


def _mcp(value: Any, key: str, where: str | None) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("mcpServers"), dict):
        raise UsageError(
            f"llm_config key {key!r} must be an MCP config object with an 'mcpServers' object{_where(where)}"
        )
    return value


_RE_FLAGS = ((2, "i"), (8, "m"), (16, "s"), (64, "x"), (256, "a"))

#: the original's validator parameters that are named differently here: type -> {old: new}
_PARAM_RENAMES: dict[str, dict[str, str]] = {
    "length": {"min_length": "min", "max_length": "max"},
    "field_present": {"field_name": "path", "expected_value": "equals"},
    "contains": {"required_text": "text"},
    "agent_task": {"validation_model_alias": "validation_model"},
}

#: the original's validator parameters with no counterpart: type -> {param: hint}
_PARAM_UNSUPPORTED: dict[str, dict[str, str]] = {
    "agent_task": {
        "required_mcp_tools": "give the judge its MCP servers with mcp_config (max/* judges), "
        "or an alias that has mcp_config and allowed_tools",
    },
}


def _regex_flags(value: Any, where: str | None) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    letters = "".join(letter for bit, letter in _RE_FLAGS if value & bit)
    rest = value & ~sum(bit for bit, _ in _RE_FLAGS)
    if rest:
        raise UsageError(f"llm_config regex flags {value} include flags other than I, M, S, X, A{_where(where)}")
    return letters


def _legacy_validator(kind: str, params: dict[str, Any], i: int, where: str | None) -> list[dict[str, Any]]:
    """One original ``{type, params}`` as our dict specs (the names parse_specs accepts)."""
    for key, hint in _PARAM_UNSUPPORTED.get(kind, {}).items():
        if key in params:
            raise UsageError(
                f"llm_config validation[{i}] ({kind}) parameter {key!r} has no equivalent{_where(where)}", hint=hint
            )
    renames = _PARAM_RENAMES.get(kind, {})
    out = {renames.get(k, k): v for k, v in params.items()}
    if kind == "regex" and "flags" in out:
        out["flags"] = _regex_flags(out["flags"], where)
    elif kind == "field_present":
        if out.pop("should_exist", True) is not True:
            raise UsageError(
                f"llm_config validation[{i}] field_present with should_exist=false has no equivalent{_where(where)}",
                hint="use a schema validator with 'not': {'required': [...]}",
            )
    elif kind == "code":
        language = str(out.pop("language", "python")).lower()
        if language != "python":
            raise UsageError(f"llm_config validation[{i}] code: only language 'python' is supported{_where(where)}")
        return [{"type": "python", "params": out}]
    elif kind == "contains":
        case_sensitive = out.pop("case_sensitive", False)  # the original's default: ignore case
        texts = out.pop("text", None)
        if "ignore_case" not in out:
            out["ignore_case"] = not case_sensitive
        if isinstance(texts, list):
            return [{"type": "contains", "params": {**out, "text": t}} for t in texts]
        return [{"type": "contains", "params": {**out, "text": texts}}]
    elif kind == "agent_task":
        criteria = out.pop("success_criteria", None)
        if criteria is not None:
            if not isinstance(criteria, dict):
                raise UsageError(f"llm_config validation[{i}] agent_task success_criteria must be an object{_where(where)}")
            criteria = dict(criteria)
            if "agent_must_report_true" in criteria:
                criteria["must_report_true"] = criteria.pop("agent_must_report_true")
            out["criteria"] = criteria
    return [{"type": kind, "params": out}]


def _validation(value: Any, where: str | None) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(item)
            continue
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise UsageError(
                f"llm_config validation[{i}] must be {{'type': NAME, 'params': {{...}}}}, not {item!r}{_where(where)}"
            )
        unknown = set(item) - {"type", "params"}
        if unknown:
            raise UsageError(
                f"llm_config validation[{i}] has unknown key(s) {sorted(unknown)}; "
                f"known: type, params{_where(where)}"
            )
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise UsageError(f"llm_config validation[{i}].params must be an object{_where(where)}")
        out.extend(_legacy_validator(item["type"], dict(params), i, where))
    return out


def _retry_config(value: Any, kwargs: dict[str, Any], where: str | None) -> None:
    """The original retried up to ``max_attempts`` calls in all, for a validation failure or an
    exception alike, waiting ``initial_delay * backoff_factor**n`` (capped) in between. Here
    ``max_attempts`` bounds the validation attempts and, as ``max_retries = max_attempts - 1``,
    the transient-failure retries of each call; the delays become the retry layer's backoff."""
    if not isinstance(value, dict):
        raise UsageError(f"llm_config key 'retry_config' must be an object{_where(where)}")
    unknown = set(value) - RETRY_CONFIG_KEYS
    if unknown:
        raise UsageError(
            f"llm_config retry_config has unknown key(s) {sorted(unknown)}; "
            f"known: {', '.join(sorted(RETRY_CONFIG_KEYS))}{_where(where)}",
            hint="circuit breakers and jitter are configured in llm_call.toml [retry]",
        )
    retry: dict[str, float | int] = {}
    if "max_attempts" in value:
        attempts = _positive_int(value["max_attempts"], "retry_config.max_attempts", where)
        kwargs["max_attempts"] = attempts
        retry["max_retries"] = attempts - 1
    if "initial_delay" in value:
        retry["base_delay"] = _number(value["initial_delay"], "retry_config.initial_delay", where)
    if "max_delay" in value:
        retry["max_delay"] = _number(value["max_delay"], "retry_config.max_delay", where)
    if "backoff_factor" in value:
        factor = _number(value["backoff_factor"], "retry_config.backoff_factor", where)
        if factor != 2:
            _log.warning(
                "llm_config retry_config.backoff_factor=%g%s: llm_call doubles the delay between "
                "retries (with full jitter); the factor is not configurable",
                factor,
                _where(where),
            )
    if retry:
        kwargs["retry"] = retry


JSON_INSTRUCTION = "You must respond with a valid JSON object."


def _route_kind(model: str | None) -> str | None:
    """The route kind of ``model`` (None when it does not resolve: the call reports that)."""
    from ._request import default_model
    from ._settings import current_settings
    from .errors import LLMCallError
    from .providers.router import resolve

    try:
        settings = current_settings()
        return resolve(model or default_model(settings), settings).kind
    except LLMCallError:
        return None


def _with_json_instruction(messages: Any) -> Any:
    """Messages with the JSON instruction in the system prompt, as the original's JSON mode did."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return messages  # malformed: the call reports it
    for i, m in enumerate(messages):
        if m.get("role") == "system":
            content = m.get("content")
            if isinstance(content, str) and "json" not in content.lower():
                return [*messages[:i], {**m, "content": f"{JSON_INSTRUCTION} {content}".strip()}, *messages[i + 1 :]]
            return messages
    return [{"role": "system", "content": JSON_INSTRUCTION}, *messages]


def map_llm_config(config: Mapping[str, Any], *, where: str | None = None) -> dict[str, Any]:
    """Translate an original ``llm_config`` dict into ``acall`` keyword arguments.

    ``where`` (e.g. ``"line 3"``) is added to error messages. Raises :class:`UsageError` for an
    unknown key or a bad value, naming the key.

    >>> map_llm_config({"model": "max/text-general", "messages": [{"role": "user", "content": "hi"}],
    ...                 "max_attempts_before_tool_use": 2})["tools_after"]
    2
    """
    if not isinstance(config, Mapping):
        raise UsageError(f"llm_config must be an object, not {type(config).__name__}{_where(where)}")
    unknown = [k for k in config if k not in LEGACY_KEYS]
    if unknown:
        key = unknown[0]
        moved = _MOVED.get(key)
        raise UsageError(
            f"unknown llm_config key {key!r}{_where(where)}"
            + (f" (and {len(unknown) - 1} more: {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else ""),
            hint=moved or f"known keys: {', '.join(sorted(LEGACY_KEYS))}; see docs/migration.md",
        )
    if "messages" not in config:
        raise UsageError(f"llm_config has no 'messages'{_where(where)}")
    kwargs: dict[str, Any] = {"model": config.get("model"), "messages": config["messages"]}
    if kwargs["model"] is not None and not isinstance(kwargs["model"], str):
        raise UsageError(f"llm_config key 'model' must be a string{_where(where)}")
    for key in ("temperature", "timeout"):
        if config.get(key) is not None:
            kwargs[key] = _number(config[key], key, where)
    if config.get("max_tokens") is not None:
        kwargs["max_tokens"] = _positive_int(config["max_tokens"], "max_tokens", where)
    if config.get("stream"):
        raise UsageError(
            f"llm_config 'stream': true is not supported by a config call{_where(where)}",
            hint="use llm_call.astream(model, messages=...) to stream",
        )
    validate: list[Any] = []
    if config.get("default_validate") is True:
        validate.append({"type": "response_not_empty", "params": {}})
    elif config.get("default_validate") not in (None, False):
        raise UsageError(f"llm_config key 'default_validate' must be true or false{_where(where)}")
    fmt = config.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
            raise UsageError(
                f"llm_config key 'response_format' must be an object like {{'type': 'json_object'}}{_where(where)}"
            )
        if _route_kind(kwargs["model"]) != "max":
            kwargs["response_format"] = dict(fmt)  # the Claude CLI has no such option
        if fmt["type"] in ("json_object", "json_schema"):
            validate.append({"type": "json_string", "params": {}})
            kwargs["messages"] = _with_json_instruction(kwargs["messages"])
    if config.get("validation") is not None:
        validate.extend(_validation(config["validation"], where))
    if validate:
        unique: list[Any] = []
        for spec in validate:  # response_format and an explicit json_string ask for the same check
            if spec not in unique:
                unique.append(spec)
        kwargs["validate"] = unique
    if config.get("retry_config") is not None:
        _retry_config(config["retry_config"], kwargs, where)
    if config.get("mcp_config") is not None:
        kwargs["mcp_config"] = _mcp(config["mcp_config"], "mcp_config", where)
    if config.get("max_attempts_before_tool_use") is not None:
        kwargs["tools_after"] = _positive_int(
            config["max_attempts_before_tool_use"], "max_attempts_before_tool_use", where
        )
    if config.get("debug_tool_mcp_config") is not None:
        kwargs["tools_mcp_config"] = _mcp(config["debug_tool_mcp_config"], "debug_tool_mcp_config", where)
    if config.get("max_attempts_before_human") is not None:
        kwargs["human_after"] = _positive_int(config["max_attempts_before_human"], "max_attempts_before_human", where)
    return kwargs


async def acall_config(config: Mapping[str, Any], **overrides: Any) -> Response:
    """Run one original-format ``llm_config`` dict through :func:`llm_call.acall`.

    ``overrides`` are ``acall`` keyword arguments applied after the mapping (e.g. ``mode="auto"``).

    Example::

        resp = await llm_call.acall_config({"model": "openai/gpt-4o-mini",
                                            "messages": [{"role": "user", "content": "2+2?"}]})
    """
    from .client import acall

    kwargs = map_llm_config(config)
    kwargs.update(overrides)
    response: Response = await acall(**kwargs)
    return response


def call_config(config: Mapping[str, Any], **overrides: Any) -> Response:
    """Synchronous :func:`acall_config` (for scripts and threads)."""
    from ._portal import portal

    return portal.run(acall_config(config, **overrides), "call_config")
