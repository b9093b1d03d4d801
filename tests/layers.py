"""Check genpipe's import graph: no upward import between layers, no cycle, no oversized file.

    python tests/layers.py          (also: make layers; tests/test_layers.py runs it)

Every import counts, also those inside functions and under TYPE_CHECKING: a lazy import is
still a dependency. Layers, bottom to top (see genpipe/__init__.py): zoo, genpipe.ops,
components, pipelines, genpipe.cli. A module may import its own layer and those below.
A file over MAX_LINES lines must say why within its first 30 lines ("Over 400 lines: ...").
Exit status 1 and one line per finding when something is wrong.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "genpipe", "components", "pipelines")
#: (module prefix, rank); the longest matching prefix decides
LAYERS = (
    ("zoo", 1),
    ("genpipe.ops", 2),
    ("components", 3),
    ("pipelines", 4),
    ("genpipe", 5),  # genpipe.cli, genpipe.__main__
)
MAX_LINES = 400
REASON = "Over 400 lines:"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def rank(module: str) -> int:
    best = max(
        (p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len, default=""
    )
    return dict(LAYERS)[best] if best else 0


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


def imports(path: Path, mod: str, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (a `from pkg import name` of a submodule counts as it)."""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            names = [s for s in subs if s in known] or [base]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import zoo.x.y` of a name in zoo.x
                name = name.rpartition(".")[0]
            if name and name != mod:
                out.add(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def problems() -> list[str]:
    known = modules()
    graph = {m: imports(p, m, known) for m, p in known.items()}
    out = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if rank(d) > rank(m):
                out.append(f"upward import: {m} (layer {rank(m)}) imports {d} (layer {rank(d)})")
    for comp in cycles(graph):
        out.append("import cycle: " + " <-> ".join(comp))
    for p in sorted(known.values()):
        lines = p.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(REASON in x for x in lines[:30]):
            rel = p.relative_to(ROOT)
            out.append(f"{rel}: {len(lines)} lines, over {MAX_LINES} without '{REASON} <why>'")
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    if not found:
        print(f"layers ok: {len(modules())} modules, no upward import, no cycle")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
