"""The project's import graph, read from its sources with ast (a test helper; the logic of the structure check the
project is held to): cycles among its modules — imports inside functions count, a package importing its own
submodules (the registry's discovery) does not — and setting names written as string literals outside the settings'
own rooms (backend/settings/, pages/, ui/shell.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SKIP = {"tests", ".venv", "cache", "benchmarks", "scripts", ".git"}
OWN_ROOMS = ("backend.settings", "pages", "ui.shell")


def modules(root: Path) -> dict[str, Path]:
    """Every project module (dotted name → file), outside tests, benchmarks, scripts and the caches."""
    files = [p for p in root.rglob("*.py") if not (set(p.relative_to(root).parts) & SKIP)]

    def name(p: Path) -> str:
        parts = list(p.relative_to(root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    return {name(p): p for p in files}


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its source (the longest dotted prefix that is one)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if pkg else []
                    base = ".".join([*up, base] if base else up)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for nm in names:
                parts = nm.split(".")
                for k in range(len(parts), 0, -1):
                    cand = ".".join(parts[:k])
                    if cand in mods and cand != m:
                        graph[m].add(cand)
                        break
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), less a package with its own submodule."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return [c for c in found
            if not (len(c) == 2 and (c[1].startswith(c[0] + ".") or c[0].startswith(c[1] + ".")))]


def setting_literals(mods: dict[str, Path], names: set[str], root: Path) -> list[str]:
    """``path:line:name`` for every string literal equal to a setting's name outside the settings' own rooms."""
    out = []
    for m, p in mods.items():
        if m.startswith(OWN_ROOMS):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                out.append(f"{p.relative_to(root)}:{node.lineno}:{node.value}")
    return out
