"""Built-in validators. Each is a small class with a ``name`` and a sync ``validate``.

They are cheap (the hot path of a validated call runs them on every attempt): patterns compile
once at construction, JSON is parsed once per attempt and shared through the context, and the
heavy libraries (jsonschema, pydantic) load only when a validator that needs them is built.

Example::

    from llm_call.validation import Length, Regex, JsonSchema

    validate = [Regex(r"^\\d+$", mode="full"), Length(max=10)]
    resp = await llm_call.acall("openai/gpt-4o-mini", "2+2? digits only", validate=validate)
"""

from __future__ import annotations

import ast
import re
from typing import Any

from ..errors import UsageError
from ._base import CODE_FENCE, ValidationContext, Verdict

__all__ = [
    "Contains",
    "FieldPresent",
    "JsonSchema",
    "JsonValid",
    "Length",
    "NotContains",
    "NotEmpty",
    "OneOf",
    "PydanticModel",
    "PythonCode",
    "Regex",
    "json_path",
]

_MISSING: Any = object()
_FLAG_LETTERS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "a": re.ASCII}


def _short(text: str, limit: int = 80) -> str:
    text = text.strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class NotEmpty:
    """The answer has some non-whitespace text."""

    name = "not_empty"
    expensive = False

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        if text.strip():
            return Verdict(True, validator=self.name)
        return Verdict(False, "the answer is empty; give a non-empty answer", validator=self.name)


class JsonValid:
    """The answer is a JSON value, bare or fenced in ```json; it becomes ``Response.parsed``."""

    name = "json"
    expensive = False

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        try:
            value = context.json_value(text)
        except ValueError as exc:
            return Verdict(False, str(exc), validator=self.name)
        context.parsed = value
        return Verdict(True, validator=self.name)


def json_path(path: Any) -> str:
    """``$.a[0].b`` for a path given as a sequence of keys and indexes."""
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class JsonSchema:
    """The answer's JSON matches a JSON Schema; each error is reported with its failing path.

    ``$ref`` resolves only inside the schema (``#/$defs/...``, or a ``$id`` in it), and a check
    is bounded in steps (:mod:`._schema_guard`): a schema may come from a request.
    """

    name = "json_schema"
    expensive = False
    cpu_bound = True
    max_errors = 5

    def __init__(self, schema: dict[str, Any] | bool, *, source: str | None = None, linear_regex: bool = False) -> None:
        """``linear_regex=True`` (schemas from validation specs): ``pattern`` and
        ``patternProperties`` run on RE2, as regex specs do."""
        from jsonschema import exceptions, validators

        if not isinstance(schema, dict | bool):
            raise UsageError(f"json_schema needs a JSON object schema, not {type(schema).__name__}")
        cls = validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except exceptions.SchemaError as exc:
            where = f" in {source}" if source else ""
            raise UsageError(f"invalid JSON Schema{where}: {exc.message}") from None
        from ._schema_guard import check_refs_are_local, counted_class, dry_run, local_registry

        check_refs_are_local(schema)
        if linear_regex:
            from ._re2 import re2_schema_class

            cls = re2_schema_class(cls, schema)
        self.schema = schema
        self._validator = counted_class(cls)(schema, registry=local_registry())
        dry_run(self._validator)

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        try:
            value = context.json_value(text)
        except ValueError as exc:
            return Verdict(False, str(exc), validator=self.name)
        from referencing.exceptions import Unresolvable

        from ._schema_guard import THREAD_STEPS, TooCostly, step_budget

        try:
            with step_budget():  # on the event loop: NeedsWorkerThread past a few milliseconds
                errors = sorted(self._validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
        except Unresolvable as exc:  # "#/$defs/missing": the schema's fault, not the answer's
            raise UsageError(f"the JSON Schema has a reference that does not resolve: {exc}") from None
        except TooCostly:
            return Verdict(
                False,
                f"checking this answer against the JSON Schema is too costly (more than {THREAD_STEPS} steps: the "
                "schema's anyOf/allOf/$ref multiply the work with the answer's nesting); give a smaller, less "
                "nested answer",
                {"steps": THREAD_STEPS},
                self.name,
            )
        except RecursionError:
            return Verdict(False, "the answer is nested too deeply to check against the JSON Schema; give a "
                           "flatter answer", validator=self.name)
        if not errors:
            context.parsed = value
            return Verdict(True, validator=self.name)
        listed = [{"path": json_path(e.absolute_path), "message": e.message} for e in errors]
        lines = [f"at {e['path']}: {e['message']}" for e in listed[: self.max_errors]]
        if len(listed) > self.max_errors:
            lines.append(f"... and {len(listed) - self.max_errors} more errors")
        feedback = "the JSON does not match the schema: " + "; ".join(lines)
        return Verdict(False, feedback, {"errors": listed}, self.name)


class PydanticModel:
    """The answer's JSON validates as a pydantic model; the instance becomes ``Response.parsed``."""

    name = "pydantic"
    expensive = False

    def __init__(self, model: Any) -> None:
        from pydantic import BaseModel

        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise UsageError(f"response_model must be a pydantic BaseModel subclass, not {model!r}")
        self.model = model

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        from pydantic import ValidationError

        try:
            value = context.json_value(text)
        except ValueError as exc:
            return Verdict(False, str(exc), validator=self.name)
        try:
            instance = self.model.model_validate(value)
        except ValidationError as exc:
            listed = [
                {"path": json_path(err["loc"]), "message": err["msg"]} for err in exc.errors()
            ]
            lines = "; ".join(f"at {e['path']}: {e['message']}" for e in listed[:5])
            feedback = f"the JSON does not match {self.model.__name__}: {lines}"
            return Verdict(False, feedback, {"errors": listed}, self.name)
        context.parsed = instance
        return Verdict(True, validator=self.name)


def _flags(flags: str | int) -> int:
    if isinstance(flags, int):
        return flags
    value = 0
    for letter in flags.lower().replace(",", "").replace(" ", ""):
        if letter not in _FLAG_LETTERS:
            raise UsageError(f"regex flag {letter!r} is unknown; use letters from {''.join(_FLAG_LETTERS)}")
        value |= _FLAG_LETTERS[letter]
    return value


class Regex:
    """The answer matches ``pattern``: ``mode`` is ``search`` (anywhere), ``full`` or ``match``.

    ``engine="re"`` (the default for Python callers) is Python's ``re``; ``engine="re2"`` is the
    linear-time RE2 engine that validation specs use (no backreferences or lookaround; flags
    i, m, s), so a pattern from a request cannot freeze the server.
    """

    name = "regex"
    expensive = False
    cpu_bound = True

    def __init__(self, pattern: str, *, flags: str | int = "", mode: str = "search", engine: str = "re") -> None:
        if mode not in ("search", "full", "match"):
            raise UsageError(f"regex mode must be search, full or match, not {mode!r}")
        if engine == "re2":
            from ._re2 import compile_linear

            if not isinstance(flags, str):
                raise UsageError("regex flags for the re2 engine are letters (i, m, s), not an int")
            self.regex: Any = compile_linear(pattern, flags)
        elif engine == "re":
            try:
                self.regex = re.compile(pattern, _flags(flags))
            except re.error as exc:
                raise UsageError(f"invalid regex {pattern!r}: {exc}") from None
        else:
            raise UsageError(f"regex engine must be re or re2, not {engine!r}")
        self.pattern = pattern
        self.mode = mode
        self.engine = engine
        self._match = {"search": self.regex.search, "full": self.regex.fullmatch, "match": self.regex.match}[mode]

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        subject = text.strip() if self.mode != "search" else text
        if self._match(subject) is not None:
            return Verdict(True, validator=self.name)
        how = {"search": "does not contain a match for", "full": "does not entirely match", "match": "does not start with a match for"}
        return Verdict(False, f"the answer {how[self.mode]} the regular expression /{self.pattern}/", validator=self.name)


class Contains:
    """The answer contains ``text`` (``ignore_case`` optional)."""

    name = "contains"
    expensive = False

    def __init__(self, text: str, *, ignore_case: bool = False) -> None:
        if not text:
            raise UsageError("contains needs a non-empty text")
        self.text = text
        self.ignore_case = ignore_case
        self._needle = text.casefold() if ignore_case else text

    def _found(self, answer: str) -> bool:
        return self._needle in (answer.casefold() if self.ignore_case else answer)

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        if self._found(text):
            return Verdict(True, validator=self.name)
        return Verdict(False, f"the answer must contain {self.text!r}", validator=self.name)


class NotContains(Contains):
    """The answer does not contain ``text``."""

    name = "not_contains"

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        if not self._found(text):
            return Verdict(True, validator=self.name)
        return Verdict(False, f"the answer must not contain {self.text!r}", validator=self.name)


class Length:
    """The answer's length (stripped) is within ``min``..``max`` ``unit``s (chars, words, lines)."""

    name = "length"
    expensive = False

    def __init__(self, *, min: int | None = None, max: int | None = None, unit: str = "chars") -> None:
        if unit not in ("chars", "words", "lines"):
            raise UsageError(f"length unit must be chars, words or lines, not {unit!r}")
        if min is None and max is None:
            raise UsageError("length needs min and/or max")
        if min is not None and max is not None and min > max:
            raise UsageError(f"length min ({min}) is greater than max ({max})")
        self.min = min
        self.max = max
        self.unit = unit

    def measure(self, text: str) -> int:
        if self.unit == "chars":
            return len(text.strip())
        if self.unit == "words":
            return len(text.split())
        return len(text.strip().splitlines())

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        n = self.measure(text)
        if self.min is not None and n < self.min:
            return Verdict(False, f"the answer has {n} {self.unit}, fewer than the minimum of {self.min}", {"length": n}, self.name)
        if self.max is not None and n > self.max:
            return Verdict(False, f"the answer has {n} {self.unit}, more than the maximum of {self.max}", {"length": n}, self.name)
        return Verdict(True, validator=self.name)


def code_block(text: str) -> str:
    """The first fenced code block (any language), or the whole text."""
    match = CODE_FENCE.search(text)
    return match.group(2) if match else text


class PythonCode:
    """The answer's code (first fenced block, or the whole text) parses as Python.

    ``defines`` optionally names a function the code must define.
    """

    name = "python"
    expensive = False
    cpu_bound = True

    def __init__(self, *, defines: str | None = None) -> None:
        if defines is not None and not defines.isidentifier():
            raise UsageError(f"python defines={defines!r} is not a valid function name")
        self.defines = defines

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        code = code_block(text)
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            return Verdict(False, f"the code does not parse as Python: line {exc.lineno}: {exc.msg}", {"line": exc.lineno}, self.name)
        except (RecursionError, MemoryError):  # the parser's own limits, on deeply nested code
            return Verdict(False, "the code is nested too deeply for Python's parser; write it flatter", validator=self.name)
        if self.defines is not None:
            names = {
                node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            if self.defines not in names:
                return Verdict(False, f"the code must define a function named {self.defines}", {"functions": sorted(names)}, self.name)
        return Verdict(True, validator=self.name)


class FieldPresent:
    """The answer's JSON has a value at dot path ``path`` (``a.b.0.c``), optionally ``equals``."""

    name = "field_present"
    expensive = False

    def __init__(self, path: str, *, equals: Any = _MISSING) -> None:
        if not path:
            raise UsageError("field_present needs a path such as 'result.items.0.name'")
        self.path = path
        self.parts = path.split(".")
        self.equals = equals

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        try:
            value = context.json_value(text)
        except ValueError as exc:
            return Verdict(False, str(exc), validator=self.name)
        for i, part in enumerate(self.parts):
            where = ".".join(self.parts[:i]) or "the top level"
            if isinstance(value, dict):
                if part not in value:
                    return Verdict(False, f"the JSON has no field {part!r} at {where} (path {self.path})", validator=self.name)
                value = value[part]
            elif isinstance(value, list) and part.lstrip("-").isdigit():
                index = int(part)
                if not -len(value) <= index < len(value):
                    return Verdict(False, f"the JSON list at {where} has no item {index} (path {self.path})", validator=self.name)
                value = value[index]
            else:
                return Verdict(False, f"the JSON at {where} is not an object, so it has no field {part!r}", validator=self.name)
        if self.equals is not _MISSING and value != self.equals:
            return Verdict(False, f"the JSON field {self.path} is {_short(repr(value))}, expected {self.equals!r}", {"value": value}, self.name)
        return Verdict(True, validator=self.name)


class OneOf:
    """The answer (stripped) is one of ``values`` (``ignore_case`` optional)."""

    name = "one_of"
    expensive = False

    def __init__(self, values: list[str] | tuple[str, ...], *, ignore_case: bool = False) -> None:
        values = [str(v) for v in values]
        if not values:
            raise UsageError("one_of needs at least one value")
        self.values = values
        self.ignore_case = ignore_case
        self._set = {v.casefold() for v in values} if ignore_case else set(values)

    def validate(self, text: str, context: ValidationContext) -> Verdict:
        answer = text.strip()
        if (answer.casefold() if self.ignore_case else answer) in self._set:
            return Verdict(True, validator=self.name)
        return Verdict(False, f"the answer must be exactly one of {', '.join(self.values)} (got {_short(answer, 40)!r})", validator=self.name)
