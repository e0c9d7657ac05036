"""Bounds for JSON Schemas that may come from anyone (a validation spec is the wire format).

Three things a schema could make the process do, and what stops each:

- **Fetch or read**: jsonschema resolves a ``$ref`` it does not find in the schema by fetching it
  with ``urlopen`` (``http://`` internal services, ``file://`` the disk). References must point
  inside the schema (:func:`check_refs_are_local`, a UsageError naming the first), and the
  validator's registry fetches nothing (:func:`local_registry`).
- **Work without end**: a few hundred bytes of ``$defs`` whose ``allOf`` of two ``$ref`` s to
  the previous one doubles the work per level take 2**40 steps on any answer, and ``anyOf`` over
  ``items`` with a ``$ref`` to the root doubles it per level of the *answer's* nesting. Every
  keyword a check evaluates counts one step against a budget (:func:`counted_class`). A check
  on the event loop gets :data:`LOOP_STEPS` (milliseconds): past that it raises
  :class:`~._base.NeedsWorkerThread` and the check is re-run on a worker thread with
  :data:`THREAD_STEPS` (a second or two), past which the answer fails with feedback saying so.
- **Recursion**: ``{"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}}`` refers to itself
  without consuming the answer, a RecursionError on any answer.

The last two are also tried when the validator is built, on trivial answers (``null``, ``{}``,
``[]``...): a schema too costly or endless even there is a UsageError (HTTP 422) before any
model call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from ..errors import UsageError
from ._base import NeedsWorkerThread

__all__ = [
    "LOOP_STEPS",
    "THREAD_STEPS",
    "TooCostly",
    "check_refs_are_local",
    "counted_class",
    "dry_run",
    "local_registry",
    "step_budget",
]

#: keyword evaluations a check may take on the event loop (about 10 µs each)
LOOP_STEPS = 5_000
#: keyword evaluations a check may take on a worker thread
THREAD_STEPS = 200_000

#: keywords whose values are data, not schemas (a "$ref" key in there is not a reference)
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
#: [steps taken, steps allowed] of the check running in this context
_steps: ContextVar[list[int] | None] = ContextVar("llm_call_schema_steps", default=None)
_TRIVIAL: tuple[Any, ...] = (None, True, 0, "", [], {})


class TooCostly(Exception):
    """A check used up its step budget."""


def _refs_outside(schema: Any) -> Iterator[str]:
    """Every reference in ``schema`` whose target is not the schema itself (a ``$id`` in it)."""
    from urllib.parse import urldefrag, urljoin

    ids: set[str] = {""}
    refs: list[tuple[str, str]] = []

    def walk(node: Any, base: str) -> None:
        if isinstance(node, dict):
            given = node.get("$id")
            if isinstance(given, str):
                base = urljoin(base, given)
                ids.add(urldefrag(base)[0])
            for keyword in _REF_KEYWORDS:
                ref = node.get(keyword)
                if isinstance(ref, str):
                    refs.append((ref, urldefrag(urljoin(base, ref))[0]))
            for key, value in node.items():
                if key not in _DATA_KEYWORDS:
                    walk(value, base)
        elif isinstance(node, list):
            for item in node:
                walk(item, base)

    walk(schema, "")
    for ref, target in refs:
        if target not in ids and not _is_meta_schema(target):
            yield ref


def _is_meta_schema(uri: str) -> bool:
    from jsonschema.validators import SPECIFICATIONS  # the drafts' meta-schemas, bundled

    return bool(uri) and uri in SPECIFICATIONS


def check_refs_are_local(schema: Any) -> None:
    """References resolve only inside the schema: a ``$ref`` to a URL or a file would make the
    process fetch it (an SSRF from a request) or read the disk. UsageError naming the first."""
    for ref in _refs_outside(schema):
        raise UsageError(
            f"JSON Schema reference {ref[:200]!r} points outside the schema; references are resolved only "
            "within the schema itself, never fetched from a URL or read from a file: put the referenced "
            'schema under "$defs" and refer to it as "#/$defs/NAME"'
        )


def _no_retrieval(uri: str) -> Any:
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class


def local_registry() -> Any:
    """jsonschema's registry of bundled meta-schemas, without its default of fetching any other
    URI with ``urlopen`` (http, https and file URLs alike, blocking)."""
    import referencing
    from jsonschema.validators import SPECIFICATIONS

    return SPECIFICATIONS.combine(referencing.Registry(retrieve=_no_retrieval))  # type: ignore[call-arg]


def counted_class(cls: Any) -> Any:
    """A jsonschema validator class like ``cls`` whose every keyword evaluation counts a step
    against the budget of :func:`step_budget` (no budget set: nothing is counted)."""
    from jsonschema import validators

    def counted(keyword: Any) -> Any:
        def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
            box = _steps.get()
            if box is not None:
                box[0] += 1
                if box[0] > box[1]:
                    raise TooCostly
            return keyword(validator, value, instance, schema)

        return run

    return validators.extend(cls, {name: counted(fn) for name, fn in cls.VALIDATORS.items()})


class step_budget:
    """``with step_budget():`` the check inside may take :data:`LOOP_STEPS` steps when it runs on
    an event loop's thread (then :class:`NeedsWorkerThread`), :data:`THREAD_STEPS` elsewhere (then
    :class:`TooCostly`)."""

    def __init__(self, steps: int | None = None) -> None:
        self.on_loop = steps is None and _on_event_loop()
        self.steps = steps if steps is not None else LOOP_STEPS if self.on_loop else THREAD_STEPS

    def __enter__(self) -> step_budget:
        self._token = _steps.set([0, self.steps])
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        _steps.reset(self._token)
        if kind is TooCostly and self.on_loop:
            raise NeedsWorkerThread from None


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def dry_run(validator: Any) -> None:
    """Check trivial answers with the loop's budget: a schema that is too costly or endless even
    on ``null`` or ``{}`` is a UsageError now, before any model call."""
    from referencing.exceptions import Unresolvable

    for instance in _TRIVIAL:
        try:
            with step_budget(LOOP_STEPS):
                for _ in validator.iter_errors(instance):
                    pass
        except TooCostly:
            raise UsageError(
                f"the JSON Schema is too costly to check: more than {LOOP_STEPS} steps on the answer "
                f"{instance!r} alone (allOf/anyOf/oneOf of $refs that multiply the work at every level); "
                "simplify the schema"
            ) from None
        except RecursionError:
            raise UsageError(
                "the JSON Schema refers to itself without end: a $ref cycle through allOf/anyOf/oneOf/not/if "
                "that never moves into the answer (properties, items ...); break the cycle"
            ) from None
        except Unresolvable as exc:
            raise UsageError(f"the JSON Schema has a reference that does not resolve: {exc}") from None
