"""What a task stores: the call's arguments as a JSON dict, and back.

The stored dict is a set of :func:`llm_call.acall` keyword arguments, so ``acall(**spec)`` runs
the same call::

    {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
     "max_tokens": 50, "validate": ["json"], "max_attempts": 3, "stop": ["\\n"]}

``messages`` always holds the whole conversation (a ``system`` argument is already merged into
it). Only JSON survives a restart, so callables (a validator function, a pydantic
``response_model``, a ``RetryPolicy`` object) are refused with a :class:`UsageError` that says
what to use instead; ``progress`` callbacks are kept in memory by the submitting process only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._settings import current_settings
from ..errors import UsageError

if TYPE_CHECKING:
    from .._request import CallOptions
    from ..types import Attempt, Request, Response

__all__ = ["StoredSpec", "call_spec", "is_long_running", "jsonable", "rebuild", "response_dict", "spec_from_kwargs"]

#: CallOptions that describe the task rather than the call; stored in their own columns or kept in memory
_NOT_STORED = frozenset({"mode", "progress", "idempotency_key", "priority", "long_running"})
_AGENT_NAMES = frozenset({"agent", "agent_task", "judge"})
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _std_encode(spec: dict[str, Any]) -> str:
    return _ENCODER.encode(spec)


try:
    import orjson
except ImportError:  # pragma: no cover - orjson is optional
    _encode = _std_encode
else:

    def _encode(spec: dict[str, Any]) -> str:
        """orjson (~10x faster), strict: what it refuses (a non-JSON value, a non-string key, an
        integer beyond 64 bits) goes to the standard library, which encodes it or raises."""
        try:
            return orjson.dumps(spec).decode()
        except TypeError:
            return _std_encode(spec)


def _check_json(value: Any, path: str) -> None:
    if value is None or isinstance(value, str | bool | int | float):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(f"{path} has a non-string key {key!r}: a task stores its arguments as JSON")
            _check_json(item, f"{path}.{key}")
        return
    what = "a callable" if callable(value) else f"a {type(value).__name__}"
    raise UsageError(
        f"{path} is {what}; a background task stores its arguments as JSON so it can run after a restart",
        hint="use spec strings or dicts (validate=['json', 'regex:...', {'type': 'agent', ...}]) "
        "or run the call directly with mode='direct'",
    )


class StoredSpec(dict[str, Any]):
    """A spec dict that also carries its JSON text (encoded once, when it was checked) and the
    Request and CallOptions it was made from, so that a task started in the process that
    submitted it skips rebuilding them (:func:`rebuild` takes them once)."""

    json: str = ""
    built: tuple[Request, CallOptions, Any] | None = None


_OPTION_DEFAULTS: list[tuple[str, Any]] | None = None


def _option_defaults(opts: CallOptions) -> list[tuple[str, Any]]:
    global _OPTION_DEFAULTS
    if _OPTION_DEFAULTS is None:
        _OPTION_DEFAULTS = [
            (f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(opts)
            if f.name not in _NOT_STORED
        ]
    return _OPTION_DEFAULTS


def call_spec(request: Request, opts: CallOptions) -> StoredSpec:
    """The JSON dict of acall arguments for a checked request. Raises UsageError if not JSON."""
    spec = StoredSpec(model=request.model, messages=request.messages)
    if request.temperature is not None:
        spec["temperature"] = request.temperature
    if request.max_tokens is not None:
        spec["max_tokens"] = request.max_tokens
    if request.timeout is not None:
        spec["timeout"] = request.timeout
    for name, default in _option_defaults(opts):
        value = getattr(opts, name)
        if value == default:
            continue
        if name == "response_model":
            raise UsageError(
                "response_model is a Python class and cannot be stored with a background task",
                hint="use validate=['schema:@file.json'] or a schema dict, and parse the text yourself",
            )
        spec[name] = value
    for key, value in request.options.items():
        if value is not None:
            spec[key] = value
    try:
        spec.json = _encode(spec)
    except (TypeError, ValueError):  # find what, to say so
        for key, value in spec.items():
            _check_json(value, key)
        raise UsageError("the call's arguments are not JSON (a value is too deep or circular)") from None
    # what rebuild(spec) would make, kept for a start in this process: the same call (a None
    # provider option or _meta is not stored, so such a request is rebuilt instead)
    if "_meta" not in request.options and None not in request.options.values():
        spec.built = (request, opts, current_settings())
    return spec


def spec_from_kwargs(kwargs: Mapping[str, Any]) -> tuple[StoredSpec, CallOptions]:
    """Check acall keyword arguments (``model``, ``prompt`` or ``messages``, ...) and store them."""
    from .._request import build_request

    args = dict(kwargs)
    model = args.pop("model", None)
    prompt = args.pop("prompt", None)
    request, opts = build_request(model, prompt, **args)
    return call_spec(request, opts), opts


def rebuild(spec: Mapping[str, Any]) -> tuple[Request, CallOptions]:
    """The Request and CallOptions a stored spec describes (direct mode): those it was made from
    if it carries them (once, under the same settings), else built again from the dict. The
    options a spec does not store (mode, progress, priority ...) are read by nothing a task runs."""
    built = getattr(spec, "built", None)
    if built is not None:
        spec.built = None  # type: ignore[attr-defined]
        if built[2] is current_settings():
            return built[0], built[1]
    from .._request import build_request

    args = dict(spec)
    model = args.pop("model", None)
    messages = args.pop("messages", None)
    args.pop("mode", None)
    args.pop("_meta", None)  # the submitter's notes (the server's Responses fields), not a call argument
    args.pop("_quota", None)  # quota decisions carried across a wait in the queue (tasks/_quota.py)
    return build_request(model, messages=messages, **args)


def is_long_running(request: Request, opts: CallOptions) -> bool:
    """Long-running by nature: ``long_running=True``, a ``max/*`` model, an MCP config, an agent
    validator (judge calls), or escalation to tools."""
    if opts.long_running or opts.tools_mcp_config or opts.tools_after is not None:
        return True
    if request.options.get("mcp_config") or request.options.get("mcp_servers") or request.options.get("tool_profile"):
        return True
    specs = opts.validate
    if specs is not None and not isinstance(specs, list | tuple):
        specs = [specs]
    for spec in specs or ():
        if isinstance(spec, str) and spec.split(":", 1)[0].strip() in _AGENT_NAMES:
            return True
        if isinstance(spec, dict) and str(spec.get("type") or spec.get("name") or "") in _AGENT_NAMES:
            return True
        if "agent" in type(spec).__name__.lower():
            return True
    from ..errors import ConfigError
    from ..providers.router import resolve

    try:
        route = resolve(request.model, current_settings())
    except ConfigError:
        return False  # the direct call reports it
    return route.kind == "max" or bool(route.alias_options().get("mcp_config"))


_PLAIN = frozenset({str, int, float, bool})


def jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold replaced by its ``repr``."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        if all(type(k) is str and (v is None or type(v) in _PLAIN) for k, v in value.items()):
            return dict(value)  # the common case: a flat event dict
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return jsonable(dump(mode="json"))
    return repr(value)


_ATTEMPT_FIELDS: tuple[str, ...] = ()


def _attempt_dict(attempt: Attempt) -> dict[str, Any]:
    # Attempt.to_dict() without its deep copies: the stored dict is encoded at once and the
    # Response it came from is dropped, so a shallow copy of each container is enough
    d = {name: getattr(attempt, name) for name in _ATTEMPT_FIELDS}
    for key, value in d.items():
        if isinstance(value, dict | list):
            d[key] = value.copy()
    d["usage"] = attempt.usage.to_dict()
    return d


def response_dict(response: Response) -> dict[str, Any]:
    """``response.to_dict()`` (the same keys and values) for a Response that is not used again.
    Stores write values JSON cannot hold as their ``repr``."""
    global _ATTEMPT_FIELDS
    if not _ATTEMPT_FIELDS:
        from ..types import Attempt

        _ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(Attempt))
    attempts, response.attempts = response.attempts, []
    try:
        d = response.to_dict()
    finally:
        response.attempts = attempts
    d["attempts"] = [_attempt_dict(a) for a in attempts]
    return d
