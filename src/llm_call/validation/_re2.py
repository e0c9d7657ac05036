"""Linear-time regular expressions (RE2) for patterns that come from validation specs.

Specs are the wire format (HTTP requests, task records, batch files, CLI flags), so a pattern in
a spec may come from anyone. Python's ``re`` backtracks: ``^((.)*)*!$`` on a few dozen
characters runs for hours while holding the GIL, which freezes every thread of the server.
RE2 (``google-re2``) matches in time linear in the input, always. It has no backreferences and
no lookaround; a spec pattern that uses them is a :class:`UsageError` naming the fix. Python code
that trusts its own pattern can still pass :class:`~llm_call.validation.Regex` (Python ``re``).

The same applies to the ``pattern`` and ``patternProperties`` keywords of a JSON Schema given in
a spec: :func:`re2_schema_class` swaps jsonschema's ``re.search`` for RE2 in those keywords.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from .._jsontree import iter_dicts
from ..errors import UsageError

__all__ = ["LinearPattern", "compile_linear", "re2_schema_class"]

#: spec flag letters RE2 understands, as inline flags
_INLINE = {"i": "i", "m": "m", "s": "s"}


class LinearPattern(Protocol):
    def search(self, text: str) -> Any: ...
    def match(self, text: str) -> Any: ...
    def fullmatch(self, text: str) -> Any: ...


_cache: dict[tuple[str, str], LinearPattern] = {}


def compile_linear(pattern: str, flags: str = "") -> LinearPattern:
    """``pattern`` compiled with RE2; flags are letters i, m, s. Raises UsageError on syntax RE2 lacks."""
    key = (pattern, flags)
    found = _cache.get(key)
    if found is not None:
        return found
    try:
        import re2
    except ImportError as exc:  # a dependency of llm_call: only a broken install lacks it
        raise UsageError(f"regex specs need the google-re2 package ({exc}); pip install google-re2") from None
    letters = "".join(sorted(set(flags.lower().replace(",", "").replace(" ", ""))))
    for letter in letters:
        if letter not in _INLINE:
            raise UsageError(
                f"regex flag {letter!r} is not available for regex specs (the linear-time RE2 engine); "
                "use letters from ims"
            )
    options = re2.Options()
    options.log_errors = False
    source = f"(?{letters}){pattern}" if letters else pattern
    try:
        compiled: LinearPattern = re2.compile(source, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise UsageError(
            f"invalid regex {pattern!r} for the linear-time engine RE2: {detail}. Regex specs run on RE2 "
            "so that no pattern can freeze the server: backreferences (\\1) and lookaround "
            "((?=...), (?!...), (?<=...), (?<!...)) are not supported; rewrite the pattern without them "
            "(from Python code you may pass llm_call.validation.Regex(pattern), which uses Python's re)"
        ) from None
    if len(_cache) < 1024:
        _cache[key] = compiled
    return compiled


def _schema_patterns(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from (k for k in value if isinstance(k, str))
            yield from _schema_patterns(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _schema_patterns(item)


def re2_schema_class(cls: Any, schema: Any) -> Any:
    """A jsonschema validator class like ``cls`` whose regex keywords run on RE2.

    Every pattern in ``schema`` is compiled now, so one RE2 lacks is a UsageError before any call.
    ``unevaluatedProperties`` next to ``patternProperties`` is refused (jsonschema matches those
    with Python's ``re`` internally).
    """
    from jsonschema import ValidationError, validators

    for found in _schema_patterns(schema):
        compile_linear(found)
    if _has_unevaluated_with_patterns(schema):
        raise UsageError(
            "a JSON Schema in a validation spec cannot combine unevaluatedProperties with patternProperties; "
            "use additionalProperties"
        )

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
        if validator.is_type(instance, "string") and compile_linear(patrn).search(instance) is None:
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    def pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in patterns.items():
            compiled = compile_linear(patrn)
            for key, value in instance.items():
                if compiled.search(key) is not None:
                    yield from validator.descend(value, subschema, path=key, schema_path=patrn)

    def additional_properties(validator: Any, aP: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if not validator.is_type(instance, "object"):
            return
        properties = schema.get("properties", {})
        compiled = [compile_linear(p) for p in schema.get("patternProperties", {})]
        extras = [k for k in instance if k not in properties and not any(c.search(k) is not None for c in compiled)]
        if validator.is_type(aP, "object"):
            for extra in extras:
                yield from validator.descend(instance[extra], aP, path=extra)
        elif not aP and extras:
            if "patternProperties" in schema:
                verb = "does" if len(extras) == 1 else "do"
                joined = ", ".join(repr(each) for each in sorted(extras))
                patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
                yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
            else:
                joined = ", ".join(repr(each) for each in extras)
                yield ValidationError(f"Additional properties are not allowed ({joined} {'was' if len(extras) == 1 else 'were'} unexpected)")

    keywords = {"pattern": pattern, "patternProperties": pattern_properties, "additionalProperties": additional_properties}
    present = {k: v for k, v in keywords.items() if k in cls.VALIDATORS}
    return validators.extend(cls, present)


def _has_unevaluated_with_patterns(schema: Any) -> bool:
    keys = {k for node in iter_dicts(schema) for k in node if isinstance(k, str)}
    return "unevaluatedProperties" in keys and "patternProperties" in keys
