"""Imports flow one way: experiments -> data_pipelines -> dmx_jax (bench and tests above them all), read from the
source with `ast` (module- and function-level imports), and the module import graph has no cycle."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dmx_jax", "data_pipelines", "experiments")
FORBIDDEN = {"dmx_jax": ("data_pipelines", "experiments", "bench"), "data_pipelines": ("experiments", "bench")}


@functools.cache
def modules() -> dict[str, Path]:
    """Dotted name -> file of every module under PACKAGES (a package is its __init__.py)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


class _Imports(ast.NodeVisitor):
    """(line, absolute dotted name) of every import, relative ones resolved; `from a import b` gives a.b.
    module_level: skip function bodies (what runs at import time)."""

    def __init__(self, name: str, is_package: bool, module_level: bool):
        self.package = name.split(".") if is_package else name.split(".")[:-1]
        self.module_level = module_level
        self.found: list[tuple[int, str]] = []

    def visit_FunctionDef(self, node):
        if not self.module_level:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        self.found += [(node.lineno, a.name) for a in node.names]

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            base = ".".join(self.package[: len(self.package) - node.level + 1] + ([base] if base else []))
        self.found += [(node.lineno, base if a.name == "*" else f"{base}.{a.name}") for a in node.names]


def imports(name: str, module_level: bool) -> list[tuple[int, str]]:
    path = modules()[name]
    visitor = _Imports(name, path.name == "__init__.py", module_level)
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def resolve(dotted: str) -> str | None:
    """The module an imported name loads: itself when a module, else the longest module prefix (the package or
    module that defines the name); None outside PACKAGES."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in modules():
            return ".".join(parts[:k])
    return None


def graph(module_level: bool = True) -> dict[str, set[str]]:
    """Module -> the modules its imports load (module_level: at import time only)."""
    return {m: {r for _, d in imports(m, module_level) if (r := resolve(d)) and r != m} for m in modules()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_library_imports_nothing_above_it():
    bad = [
        f"{modules()[m].relative_to(ROOT)}:{line} imports {dotted}"
        for m in modules()
        for line, dotted in imports(m, module_level=False)
        if dotted.split(".")[0] in FORBIDDEN.get(m.split(".")[0], ())
    ]
    assert not bad, "\n".join(bad)


def test_module_import_graph_has_no_cycle():
    edges = graph()
    assert "data_pipelines.pipeline.encode" in edges["data_pipelines.pipeline.dataset"]  # the walk sees imports
    assert not (found := cycles(edges)), found


def test_no_cycle_through_function_level_imports_either():
    """A lazy import that closes a loop still ties the two modules together."""
    assert not (found := cycles(graph(module_level=False))), found
