"""Walks over JSON values (dicts, lists, scalars) that may come from anyone, without recursion:
the values worth checking are the ones nested too deep for Python's recursion limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["iter_dicts", "nested_deeper_than"]


def iter_dicts(value: Any) -> Iterator[dict[Any, Any]]:
    """Every dict in ``value`` (itself included), parents before their children, in document
    order."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(reversed([v for v in node.values() if isinstance(v, dict | list)]))
        elif isinstance(node, list):
            stack.extend(reversed([v for v in node if isinstance(v, dict | list)]))


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts more than ``limit`` deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return False
