"""The layout's rules, checked from the source: platform below areas, no load test in the product,
no import circle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "agents", "loadtest", "schemas")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, module: str) -> set[str]:
    """Every project module ``path`` imports, at any depth of the file (function-level too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


MODULES = _modules()
GRAPH = {
    name: {imp for imp in _imports(path, name) if imp in MODULES and imp != name} for name, path in MODULES.items()
}


@pytest.mark.parametrize(
    ("below", "forbidden"),
    [("streams", "agents"), ("streams", "loadtest"), ("agents", "loadtest"), ("schemas", "streams")],
)
def test_layers_only_import_downwards(below: str, forbidden: str) -> None:
    offenders = sorted(
        f"{name} imports {imp}"
        for name, path in MODULES.items()
        if name.split(".")[0] == below
        for imp in _imports(path, name)
        if imp.split(".")[0] == forbidden
    )
    assert not offenders, offenders


def test_no_import_circle() -> None:
    """Tarjan's strongly connected components over the module graph: every one must be a single module.

    A package's ``__init__`` importing its own submodules is not a circle of responsibilities, so
    edges from a package to its own children are left out.
    """
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert not circles, circles


def test_areas_do_not_import_the_worker_or_the_cli() -> None:
    assembly = {"agents.worker", "agents.cli"}
    offenders = sorted(
        f"{name} imports {imp}"
        for name, deps in GRAPH.items()
        if name not in assembly
        for imp in deps
        if imp in assembly
    )
    assert not offenders, offenders
