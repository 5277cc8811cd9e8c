"""The package's import graph, read from the source (every import, at module level or inside a function): no cycle,
and the layers of docs/architecture.md hold (the runtime in dfudet.inference imports nothing of the batch commands,
the training engine, the exports or the server)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# package -> the dfudet packages it must never import (directly or inside a function)
FORBIDDEN = {
    "dfudet.inference": ("dfudet.commands", "dfudet.engine", "dfudet.export", "dfudet.serve", "dfudet.cli",
                         "dfudet.api"),
    "dfudet.commands": ("dfudet.engine", "dfudet.serve", "dfudet.cli", "dfudet.api"),
    "dfudet.serve": ("dfudet.commands", "dfudet.engine", "dfudet.cli"),
    "dfudet.export": ("dfudet.commands", "dfudet.engine", "dfudet.serve", "dfudet.cli"),
    "dfudet.checkpoint": ("dfudet.inference", "dfudet.commands", "dfudet.engine", "dfudet.serve", "dfudet.export"),
    "dfudet.models": ("dfudet.inference", "dfudet.commands", "dfudet.engine", "dfudet.serve", "dfudet.export",
                      "dfudet.checkpoint"),
    "dfudet.data": ("dfudet.models", "dfudet.inference", "dfudet.commands", "dfudet.engine", "dfudet.serve",
                    "dfudet.export", "dfudet.checkpoint", "dfudet.metrics"),
    "dfudet.metrics": ("dfudet.models", "dfudet.inference", "dfudet.commands", "dfudet.engine", "dfudet.serve",
                       "dfudet.export", "dfudet.checkpoint", "dfudet.data"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every dfudet module `path` imports, anywhere in it ('from dfudet.x import y' counts y when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dfudet"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "dfudet":
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.joinpath("dfudet").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        # keep only real modules; a parent package's import is not an edge to every module of it
        graph[name] = {m for m in _imports(path, name) if m in files and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path: Path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom dfudet.a import b\n\ndef g():\n    from dfudet.c.d import e\n    import dfudet.f\n")
    assert _imports(f, "dfudet.x.m") == {"dfudet.a", "dfudet.a.b", "dfudet.c.d", "dfudet.c.d.e", "dfudet.f"}


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    graph["c"] = set()
    assert _cycles(graph) == []


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert len(graph) > 50  # the whole package was read
    assert _cycles(graph) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_from_the_layers_above_it(package: str):
    graph = _graph()
    members = [m for m in graph if m == package or m.startswith(package + ".")]
    assert members, f"{package} holds no module"
    bad = sorted(f"{m} -> {t}" for m in members for t in graph[m]
                 if any(t == f or t.startswith(f + ".") for f in FORBIDDEN[package]))
    assert bad == []
