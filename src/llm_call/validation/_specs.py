"""Validation specs: the string and dict forms used by the CLI, the HTTP server and batch files.

Short strings::

    json                      not_empty                   regex:^\\d+$
    length:min=10,max=200     contains:Paris              contains:text=paris,ignore_case=true
    schema:@answer.json       one_of:yes|no               field_present:result.items.0
    python:defines=solve      agent:Is this polite?       regex:pattern=^a,flags=i

After ``NAME:`` comes either ``key=value`` pairs separated by commas, when every piece names a
parameter of that validator, or else one value for its main parameter (so ``regex:^a{1,3}$``
is a pattern, commas and all). Dict form (as in the original project)::

    {"type": "regex", "params": {"pattern": "^\\\\d+$"}}
    {"type": "agent_task", "params": {"task_prompt_to_claude": "...", "validation_model": "max/opus"}}

Original names are accepted as aliases: ``response_not_empty``, ``json_string``, ``code``,
``schema``, ``agent_task``. An unknown name or a bad parameter is a :class:`UsageError` that
lists the valid ones. Parsed string specs are cached (validators are immutable), so repeating a
spec on every call costs a dict lookup.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import _builtin as b
from ._agent import CRITERIA_KEYS, AgentValidator
from ._base import Validator, as_validator

__all__ = ["FILES_REFUSED", "SPECS", "Param", "Spec", "describe_validators", "parse_spec", "parse_specs"]

#: The one refusal for a spec that would read a file when files are not allowed (HTTP requests).
#: Always the same text, whatever the path: a request must not learn what exists on the server.
FILES_REFUSED = (
    "validation specs sent over HTTP cannot read files on the server ('@path'); "
    "send the JSON Schema inline, e.g. schema:{\"type\": \"object\"}"
)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a validator spec. ``kind``: str, int, bool, json, list, schema, dict."""

    name: str
    kind: str = "str"
    required: bool = False
    default: Any = None
    help: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    description: str
    build: Callable[..., Validator]
    params: tuple[Param, ...] = ()
    main: str | None = None  # the parameter a bare "NAME:value" sets
    aliases: tuple[str, ...] = ()
    example: str = ""
    _by_name: dict[str, Param] = field(default_factory=dict, compare=False, repr=False)

    def param(self, key: str) -> Param | None:
        if not self._by_name:
            for p in self.params:
                for n in (p.name, *p.aliases):
                    self._by_name[n] = p
        return self._by_name.get(key)


def _agent(**kw: Any) -> Validator:
    criteria = {k: kw.pop(k) for k in list(kw) if k in CRITERIA_KEYS}
    extra = kw.pop("criteria", None) or {}
    return AgentValidator(
        kw.pop("prompt"),
        model=kw.pop("model", None),
        criteria={**extra, **criteria},
        mcp_config=kw.pop("mcp_config", None),
        mcp_servers=kw.pop("mcp_servers", None),
    )


def _schema(**kw: Any) -> Validator:
    schema, source = kw["schema"]
    return b.JsonSchema(schema, source=source, linear_regex=True)


SPECS: tuple[Spec, ...] = (
    Spec("not_empty", "The answer has non-whitespace text.", lambda: b.NotEmpty(), aliases=("response_not_empty",), example="not_empty"),
    Spec("json", "The answer is JSON (bare or fenced in ```json); Response.parsed holds the value.", lambda: b.JsonValid(), aliases=("json_string",), example="json"),
    Spec(
        "json_schema",
        "The answer's JSON matches a JSON Schema (inline JSON or @file.json).",
        _schema,
        (Param("schema", "schema", True, help="inline JSON schema or @path/to/schema.json"),),
        "schema",
        ("schema",),
        "schema:@answer.schema.json",
    ),
    Spec(
        "regex",
        "The answer matches a regular expression (RE2: linear time).",
        lambda pattern, flags="", mode="search": b.Regex(pattern, flags=flags, mode=mode, engine="re2"),
        (
            Param("pattern", required=True, help="regular expression (RE2 syntax: linear time; no backreferences or lookaround)"),
            Param("flags", default="", help="letters: i (ignore case), m (multi-line), s (dot matches newline)"),
            Param("mode", default="search", help="search (anywhere), full (whole answer) or match (at start)"),
        ),
        "pattern",
        example="regex:^\\d+$",
    ),
    Spec(
        "contains",
        "The answer contains a text.",
        lambda text, ignore_case=False: b.Contains(text, ignore_case=ignore_case),
        (Param("text", required=True, help="text that must appear", aliases=("substring",)), Param("ignore_case", "bool", default=False)),
        "text",
        example="contains:Paris",
    ),
    Spec(
        "not_contains",
        "The answer does not contain a text.",
        lambda text, ignore_case=False: b.NotContains(text, ignore_case=ignore_case),
        (Param("text", required=True, help="text that must not appear"), Param("ignore_case", "bool", default=False)),
        "text",
        example="not_contains:As an AI",
    ),
    Spec(
        "length",
        "The answer's length is within bounds.",
        lambda min=None, max=None, unit="chars": b.Length(min=min, max=max, unit=unit),
        (
            Param("min", "int", help="minimum length", aliases=("min_length",)),
            Param("max", "int", help="maximum length", aliases=("max_length",)),
            Param("unit", default="chars", help="chars, words or lines"),
        ),
        example="length:min=10,max=200",
    ),
    Spec(
        "python",
        "The answer's code (first fenced block or whole text) parses as Python.",
        lambda defines=None: b.PythonCode(defines=defines),
        (Param("defines", help="name of a function the code must define", aliases=("function",)),),
        "defines",
        ("code",),
        "python:defines=solve",
    ),
    Spec(
        "field_present",
        "The answer's JSON has a field at a dot path, optionally with a given value.",
        lambda path, equals=b._MISSING: b.FieldPresent(path, equals=equals),
        (
            Param("path", required=True, help="dot path, e.g. result.items.0.name", aliases=("field_name", "field")),
            Param("equals", "json", default=None, help="expected value (JSON, else a string)"),
        ),
        "path",
        example="field_present:result.status",
    ),
    Spec(
        "one_of",
        "The answer (stripped) is one of a set of values.",
        lambda values, ignore_case=False: b.OneOf(values, ignore_case=ignore_case),
        (Param("values", "list", True, help="allowed answers, separated by |"), Param("ignore_case", "bool", default=False)),
        "values",
        example="one_of:yes|no|maybe",
    ),
    Spec(
        "agent",
        "An LLM judge: a prompt template with {TEXT_TO_VALIDATE}, {CODE_TO_VALIDATE}, {ORIGINAL_PROMPT}.",
        _agent,
        (
            Param("prompt", required=True, help="the judge's prompt template", aliases=("task_prompt", "task_prompt_to_claude", "prompt_template")),
            Param("model", help="judge model (default: the model being validated)", aliases=("validation_model", "validation_model_alias")),
            Param("must_report_true", help="verdict key that must be true (default validation_passed)"),
            Param("all_true_in_details_keys", "list", help="details keys that must all be true"),
            Param("must_contain_in_details", "json", help="details keys (list), {key: expected}, or a substring"),
            Param("must_not_contain_string_in_reasoning", help="text the judge's explanation must not contain"),
            Param("criteria", "dict", help="the criteria above as one dict", aliases=("success_criteria",)),
            Param("mcp_config", "dict", help="MCP servers for a max/* judge (not over HTTP: use mcp_servers)"),
            Param("mcp_servers", "list", help="names declared under [claude.mcp_servers] for a max/* judge"),
        ),
        "prompt",
        ("agent_task",),
        "agent:Is {TEXT_TO_VALIDATE} a polite refusal?",
    ),
)

_BY_NAME: dict[str, Spec] = {}
for _spec in SPECS:
    for _n in (_spec.name, *_spec.aliases):
        _BY_NAME[_n] = _spec
_cache: dict[str, Validator] = {}
_cache_no_files: dict[str, Validator] = {}
_list_cache: dict[tuple[str, ...], tuple[Validator, ...]] = {}
#: longer specs are parsed every time, not cached: the caches keep 1,024 entries for the life of
#: the process, and HTTP clients choose the specs (1,024 distinct 9 MB schema specs kept ~27 GB)
CACHED_SPEC_CHARS = 16_384


def _valid_names() -> str:
    names = ", ".join(s.name for s in SPECS)
    aliases = ", ".join(f"{a} (= {s.name})" for s in SPECS for a in s.aliases)
    return f"valid: {names}; aliases: {aliases}"


def _lookup(name: str) -> Spec:
    spec = _BY_NAME.get(name.strip())
    if spec is None:
        raise UsageError(f"unknown validator {name!r}; {_valid_names()}", hint="`llm-call validators` lists them")
    return spec


def _param_names(spec: Spec) -> str:
    return ", ".join(p.name for p in spec.params) or "(none)"


def _bool(value: str, spec: Spec, p: Param) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"validator {spec.name}: {p.name}={value!r} is not a boolean (true or false)")


def _load_schema(value: Any, spec: Spec, allow_files: bool) -> tuple[Any, str | None]:
    if isinstance(value, dict | bool):
        return value, None
    text = str(value).strip()
    if text.startswith("@"):
        if not allow_files:
            raise UsageError(FILES_REFUSED)
        path = Path(text[1:]).expanduser()
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"validator {spec.name}: cannot read schema file {path}: {exc.strerror}") from None
        try:
            return json.loads(raw), str(path)
        except ValueError as exc:
            raise UsageError(f"validator {spec.name}: schema file {path} is not valid JSON: {exc}") from None
    try:
        return json.loads(text), None
    except ValueError:
        raise UsageError(
            f"validator {spec.name}: schema must be inline JSON or @file.json, not {text[:60]!r}"
        ) from None


def _coerce(spec: Spec, p: Param, value: Any, allow_files: bool) -> Any:
    kind = p.kind
    if kind == "schema":
        return _load_schema(value, spec, allow_files)
    if kind == "dict":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise UsageError(f"validator {spec.name}: {p.name} must be a JSON object") from None
        if not isinstance(value, dict):
            raise UsageError(f"validator {spec.name}: {p.name} must be a dict")
        return value
    if not isinstance(value, str):
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise UsageError(f"validator {spec.name}: {p.name} must be an integer, not {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise UsageError(f"validator {spec.name}: {p.name} must be true or false, not {value!r}")
        if kind == "list" and not isinstance(value, list | tuple):
            raise UsageError(f"validator {spec.name}: {p.name} must be a list, not {value!r}")
        if kind == "str" and value is not None and not isinstance(value, str):
            raise UsageError(f"validator {spec.name}: {p.name} must be a string, not {value!r}")
        return list(value) if kind == "list" else value
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"validator {spec.name}: {p.name}={value!r} is not an integer") from None
    if kind == "bool":
        return _bool(value, spec, p)
    if kind == "list":
        return [v for v in value.split("|") if v != ""]
    if kind == "json":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _build(spec: Spec, params: dict[str, Any], allow_files: bool) -> Validator:
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        p = spec.param(str(key))
        if p is None:
            raise UsageError(f"validator {spec.name} has no parameter {key!r}; its parameters: {_param_names(spec)}")
        if p.name in kwargs:
            raise UsageError(f"validator {spec.name}: parameter {p.name} given twice")
        if value is None:
            continue
        kwargs[p.name] = _coerce(spec, p, value, allow_files)
    missing = [p.name for p in spec.params if p.required and p.name not in kwargs]
    if missing:
        raise UsageError(
            f"validator {spec.name} needs {', '.join(missing)}; its parameters: {_param_names(spec)}",
            hint=f"e.g. {spec.example}" if spec.example else None,
        )
    try:
        return spec.build(**kwargs)
    except TypeError as exc:  # a parameter combination the constructor does not take
        raise UsageError(f"validator {spec.name}: {exc}") from None


def _split_params(spec: Spec, rest: str) -> dict[str, Any]:
    pieces = rest.split(",")
    pairs: dict[str, Any] = {}
    for piece in pieces:
        key, sep, value = piece.partition("=")
        if not sep or spec.param(key.strip()) is None:
            break
        pairs[key.strip()] = value
    else:
        return pairs
    if spec.main is None:
        for piece in pieces:
            key, sep, _ = piece.partition("=")
            if sep and spec.param(key.strip()) is None:
                raise UsageError(
                    f"validator {spec.name} has no parameter {key.strip()!r}; its parameters: {_param_names(spec)}"
                )
        raise UsageError(
            f"validator {spec.name}: cannot read {rest!r}; use key=value pairs from: {_param_names(spec)}",
            hint=f"e.g. {spec.example}" if spec.example else None,
        )
    return {spec.main: rest}


def parse_spec(spec: Any, *, allow_files: bool = True) -> Validator:
    """One validator from a short string, a dict spec, a Validator or a callable.

    ``allow_files=False`` (specs from HTTP requests) refuses any spec that would read a file
    (``schema:@path`` in every spelling) with the same :data:`FILES_REFUSED` text whatever the path.
    """
    if isinstance(spec, str):
        cache = _cache if allow_files else _cache_no_files  # one parsed from a file is not reused without
        cached = cache.get(spec)
        if cached is not None:
            return cached
        name, sep, rest = spec.partition(":")
        found = _lookup(name)
        validator = _build(found, _split_params(found, rest) if sep and rest else {}, allow_files)
        if len(cache) < 1024 and len(spec) <= CACHED_SPEC_CHARS:
            cache[spec] = validator
        return validator
    if isinstance(spec, dict):
        unknown = set(spec) - {"type", "params"}
        if "type" not in spec or unknown:
            raise UsageError(
                f"a validator dict needs 'type' and optional 'params', got keys {sorted(spec)}; {_valid_names()}"
            )
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise UsageError(f"validator {spec['type']!r}: params must be a dict")
        return _build(_lookup(str(spec["type"])), params, allow_files)
    return as_validator(spec)


def parse_specs(specs: Any, *, allow_files: bool = True) -> list[Validator]:
    """Validators from one spec or a list of specs (strings, dicts, Validators, callables).

    Raises :class:`UsageError` naming the valid validators or parameters. ``allow_files=False``:
    see :func:`parse_spec`.
    """
    if specs is None:
        return []
    if not allow_files:
        return [parse_spec(s, allow_files=False) for s in (specs if isinstance(specs, list | tuple) else [specs])]
    if isinstance(specs, str | dict) or not isinstance(specs, list | tuple):
        return [parse_spec(specs)]
    key = tuple(specs)
    cached = _list_cache.get(key) if all(type(s) is str for s in key) else None
    if cached is not None:
        return list(cached)
    validators = [parse_spec(s) for s in specs]
    if (len(key) == len(validators) and all(type(s) is str and len(s) <= CACHED_SPEC_CHARS for s in key)
            and len(_list_cache) < 1024):
        _list_cache[key] = tuple(validators)
    return validators


def describe_validators() -> list[dict[str, Any]]:
    """Every built-in validator with its aliases, parameters and an example (for listings)."""
    return [
        {
            "name": s.name,
            "aliases": list(s.aliases),
            "description": s.description,
            "params": [
                {"name": p.name, "type": "json" if p.kind == "schema" else p.kind, "required": p.required,
                 "default": p.default, "help": p.help, "aliases": list(p.aliases)}
                for p in s.params
            ],
            "main_param": s.main,
            "example": s.example,
        }
        for s in SPECS
    ]
