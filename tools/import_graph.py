"""Print the package's import graph by floor: edges, back-edges, lazy imports, cycles.

    python tools/import_graph.py            # summary: floors, floor-to-floor edges, violations
    python tools/import_graph.py --edges    # every module-to-module edge as well

The floors are the README's ("The public API and the package's floors"): a module may import its
own package and any lower floor; an import of a higher floor or of a sibling package on the same
floor is a back-edge. Imports inside functions ("lazy") are listed: the package's own modules may be
imported lazily only where ``LAZY_ALLOWED`` documents why. ``tests/test_layering.py`` runs
``check()`` and fails on any back-edge, undocumented lazy import or cycle.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "spikecompress"
PKG = "spikecompress"

# floor of each top-level part of the package (higher imports lower); the root __init__ is the API
FLOORS = {
    "cli": 9,
    "run": 8,
    "train": 7, "report": 7,
    "compress": 6,
    "measurement": 5, "interop": 5,
    "export": 4,
    "models": 3, "data": 3,
    "snn": 2,
    "atomic": 1, "_version": 1, "errors": 1, "collectives": 1,
}

# (importing module, imported module) pairs allowed inside a function, with the reason
LAZY_ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# parts that belong to another's floor and may import it: ``python -m`` entry, shipped YAML
PART_OF = {"__main__": "cli", "recipes": "run"}


def part_of(module: str) -> str:
    """The top-level part (``compress``, ``measurement``, ...) of a module; '' for the root."""
    parts = module.split(".")
    return PART_OF.get(parts[1], parts[1]) if len(parts) > 1 else ""


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(modules: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported, lazy) for every import of the package's own modules; ``from a import
    b`` names module ``a.b`` when that is a module, else ``a``."""
    edges = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        lazy_nodes = {id(n) for f in ast.walk(tree)
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(f)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                if t == PKG or t.startswith(PKG + "."):
                    while t not in modules and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t != mod:
                        edges.append((mod, t, id(node) in lazy_nodes))
    return sorted(set(edges))


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def floor(module: str) -> int:
    part = part_of(module)
    return 10 if part == "" else FLOORS[part]


def back_edges(edges) -> list[tuple[str, str]]:
    """Edges into a higher floor, into a sibling package of the same floor, or into the root."""
    bad = []
    for a, b, _ in edges:
        pa, pb = part_of(a), part_of(b)
        if pb == "" and pa != "":
            bad.append((a, b))
        elif pa != "" and (floor(b) > floor(a) or (floor(b) == floor(a) and pa != pb)):
            bad.append((a, b))
    return bad


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = defaultdict(set)
    for a, b, _ in edges:
        graph[a].add(b)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def undocumented_lazy(edges) -> list[tuple[str, str]]:
    return [(a, b) for a, b, lazy in edges if lazy and (a, b) not in LAZY_ALLOWED]


def check() -> list[str]:
    """Every layering violation as one line (empty when the package follows the floors)."""
    modules = all_modules()
    unknown = sorted({part_of(m) for m in modules} - set(FLOORS) - {""})
    if unknown:
        return [f"no floor for package part(s) {unknown}: add them to FLOORS"]
    edges = imports(modules)
    return ([f"back-edge {a} -> {b}" for a, b in back_edges(edges)]
            + [f"lazy import {a} -> {b} (not in LAZY_ALLOWED)" for a, b in undocumented_lazy(edges)]
            + [f"cycle {' <-> '.join(c)}" for c in cycles(edges)])


def main(argv: list[str]) -> int:
    modules = all_modules()
    edges = imports(modules)
    by_floor = defaultdict(set)
    for m in modules:
        by_floor[floor(m) if part_of(m) in FLOORS or part_of(m) == "" else -1].add(
            part_of(m) or "(root)")
    print("floors (high to low):")
    for f in sorted(by_floor, reverse=True):
        print(f"  {f:>2}  {' · '.join(sorted(by_floor[f]))}")
    parts = defaultdict(int)
    for a, b, _ in edges:
        if part_of(a) != part_of(b):
            parts[(part_of(a) or "(root)", part_of(b) or "(root)")] += 1
    print("part -> part edges (module imports):")
    for (a, b), n in sorted(parts.items()):
        print(f"  {a:>10} -> {b:<10} {n}")
    lazy = [(a, b) for a, b, lz in edges if lz]
    print(f"modules: {len(modules)}  edges: {len(edges)}  lazy: {len(lazy)}")
    for a, b in lazy:
        why = LAZY_ALLOWED.get((a, b), "UNDOCUMENTED")
        print(f"  lazy {a} -> {b}: {why}")
    be = back_edges(edges)
    print(f"back-edges: {len(be)}")
    for a, b in be:
        print(f"  {a} -> {b}")
    cyc = cycles(edges)
    print(f"cycles: {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
    if "--edges" in argv:
        for a, b, lz in edges:
            print(f"{a} -> {b}{' (lazy)' if lz else ''}")
    return 1 if be or cyc or undocumented_lazy(edges) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
