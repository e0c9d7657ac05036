"""The import structure the layer contract cannot see on its own.

``lint-imports`` (``make lint``, configured in pyproject.toml) checks that no top-level module
imports a layer above it. These checks read the source with ``ast`` (no import, so they are fast)
and cover what it does not: no import cycle anywhere, inside packages too, counting imports made
inside functions; and no private name (``_x``) imported from another module, because a private
name is the owning module's to change.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "llm_call"


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(source: str) -> list[tuple[str, list[str], ast.stmt]]:
    """(module, imported names, node) of every import, at any depth, outside TYPE_CHECKING."""
    tree = ast.parse(source)
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for n in ast.walk(node))
    out: list[tuple[str, list[str], ast.stmt]] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            out.append((f"{'.' * node.level}{node.module or ''}", [a.name for a in node.names], node))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node) for a in node.names)
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for module, (path, is_package) in modules.items():
        for target, names, node in _imports(path.read_text(encoding="utf-8")):
            level = len(target) - len(target.lstrip("."))
            base = _absolute(module, is_package, level, target.lstrip(".") or None)
            if not base.startswith("llm_call"):
                continue
            hits = [base] if not names else []
            for name in names:
                if f"{base}.{name}" in modules:
                    hits.append(f"{base}.{name}")
                    continue
                hits.append(base)
                if name.startswith("_") and not name.startswith("__"):
                    private.append(f"{module} line {node.lineno}: {name} from {base}")
            for hit in hits:
                while hit not in modules and "." in hit:
                    hit = hit.rsplit(".", 1)[0]
                if hit != module:
                    edges[module].add(hit)
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_private_name_is_imported_from_another_module() -> None:
    _, private = _graph()
    assert private == [], "give these names a public spelling (or keep them in their module):\n" + "\n".join(private)


def test_the_checks_see_a_cycle_and_a_private_import() -> None:
    """The graph code itself finds what it is meant to find (on synthetic input)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    found = _imports("def f():\n    from .x import _y, z\n")
    assert found[0][0] == ".x" and found[0][1] == ["_y", "z"]


def test_every_module_stays_under_600_lines() -> None:
    """The house rule (DESIGN.md): a module past 600 lines is split by what it does."""
    too_long = {name: n for name, (path, _) in _modules().items() if (n := len(path.read_text().splitlines())) >= 600}
    assert not too_long, f"split these modules (lines): {too_long}"
