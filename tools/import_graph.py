"""The import graph of the `come` package, function-level imports included: its cycles and module sizes.

    python tools/import_graph.py            # cycles (strongly connected components) and the largest modules
    python tools/import_graph.py --edges    # every edge, "a -> b"
    python tools/import_graph.py --src /tmp/old/src   # another tree, e.g. `git archive REV src | tar -x -C /tmp/old`

Exit status 1 when there is a cycle (tests/test_architecture.py runs the same check).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in sorted((src / "come").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file (top level, functions, TYPE_CHECKING excluded)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    skip = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks never run
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            # the deepest project module the import names (importing a package runs its __init__ too)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
                parent = t.rpartition(".")[0]
                while parent:  # importing come.a.b runs come.a's __init__
                    if parent in known and parent != name and not name.startswith(parent + "."):
                        found.add(parent)
                    parent = parent.rpartition(".")[0]
    return found


def graph(src: Path = SRC) -> dict[str, set[str]]:
    mods = modules(src)
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", action="store_true", help="print every edge")
    ap.add_argument("--src", type=Path, default=SRC, help="the folder holding the come package (default: ours)")
    args = ap.parse_args()
    g = graph(args.src)
    if args.edges:
        for a in sorted(g):
            for b in sorted(g[a]):
                print(f"{a} -> {b}")
        return 0
    comps = cycles(g)
    print(f"{len(g)} modules, {sum(len(v) for v in g.values())} import edges")
    for comp in comps:
        print(f"cycle of {len(comp)} modules: {', '.join(comp)}")
    if not comps:
        print("no import cycle")
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in modules(args.src).items()), reverse=True)[:8]
    print("largest modules: " + ", ".join(f"{m} {n}" for n, m in sizes))
    return 1 if comps else 0


if __name__ == "__main__":
    sys.exit(main())
