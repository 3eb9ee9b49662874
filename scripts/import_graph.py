"""Print the project's import graph by layer and check it: no cycle, no arrow from a lower layer to a higher one.

The graph comes from ``ruff analyze graph`` (a static tool: it follows ``qmapinr.*`` imports through the real
``src/qmapinr`` package whose subpackages are the top-level folders), so a passing check also shows that static
tools see the package. Usage::

    python scripts/import_graph.py            # layers, arrows between packages, verdict (exit 1 on a violation)
    python scripts/import_graph.py --modules  # every module -> module arrow as well
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, ...]] = [
    ("recon.config", "recon.kspace", "recon.mrdheader"),
    ("recon.physics",),
    ("recon.optim", "recon.losses", "recon.inr"),
    ("recon.calibration", "recon.qsm", "recon.sim"),
    ("recon.methods",),
    ("recon.evaluation",),
    ("gadgets.stages", "gadgets.images", "gadgets.properties", "gadgets.chains", "gadgets.threads"),
    ("gadgets.transport",),
    ("gadgets.app",),
]
"""Lowest first. A module may import its own layer's packages (cycles are checked separately) and lower layers."""


def module_name(path: str) -> str | None:
    """``gadgets/app/cli.py`` or ``src/qmapinr/gadgets/app/cli.py`` -> ``gadgets.app.cli`` (None outside)."""
    p = Path(path)
    parts = p.parts[2:] if p.parts[:2] == ("src", "qmapinr") else p.parts
    if not parts or parts[0] not in ("gadgets", "recon") or p.suffix != ".py":
        return None
    mod = ".".join(parts)[:-3]
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


def package_of(mod: str) -> tuple[str, int]:
    """The layer package of ``mod`` and its layer index."""
    for rank, layer in enumerate(LAYERS):
        for pkg in layer:
            if mod == pkg or mod.startswith(pkg + "."):
                return pkg, rank
    return mod.split(".")[0], len(LAYERS)  # e.g. the bare 'recon' / 'gadgets' package __init__


def load_graph() -> dict[str, set[str]]:
    """Module -> imported project modules, from ``ruff analyze graph`` run in the repository root."""
    out = subprocess.run([sys.executable, "-m", "ruff", "analyze", "graph", "gadgets", "recon"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    graph: dict[str, set[str]] = {}
    for src, dsts in json.loads(out).items():
        m = module_name(src)
        if m is not None:
            graph.setdefault(m, set()).update(d for d in map(module_name, dsts) if d is not None and d != m)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Module-level import cycles (each once), by depth-first search."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where the imported module sits in a higher layer."""
    return [(a, b) for a, dsts in sorted(graph.items()) for b in sorted(dsts) if package_of(b)[1] > package_of(a)[1]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", action="store_true", help="also print every module -> module arrow")
    args = ap.parse_args(argv)
    graph = load_graph()
    n_edges = sum(len(v) for v in graph.values())
    if n_edges == 0:
        print("no project imports seen: the static tool cannot follow the package", file=sys.stderr)
        return 1
    arrows: dict[tuple[str, str], int] = {}
    for a, dsts in graph.items():
        for b in dsts:
            pa, pb = package_of(a)[0], package_of(b)[0]
            if pa != pb:
                arrows[(pa, pb)] = arrows.get((pa, pb), 0) + 1
    print(f"{len(graph)} modules, {n_edges} imports between them")
    for rank, layer in enumerate(LAYERS):
        print(f"layer {rank}: {', '.join(layer)}")
        for pkg in layer:
            for (pa, pb), n in sorted(arrows.items()):
                if pa == pkg:
                    print(f"    {pa} -> {pb} ({n})")
    if args.modules:
        for a in sorted(graph):
            for b in sorted(graph[a]):
                print(f"  {a} -> {b}")
    cycles, up = find_cycles(graph), upward_arrows(graph)
    for c in cycles:
        print("CYCLE: " + " -> ".join(c))
    for a, b in up:
        print(f"UPWARD: {a} ({package_of(a)[0]}) -> {b} ({package_of(b)[0]})")
    print("OK: no cycle, no upward arrow" if not cycles and not up else f"{len(cycles)} cycles, {len(up)} upward")
    return 0 if not cycles and not up else 1


if __name__ == "__main__":
    sys.exit(main())
