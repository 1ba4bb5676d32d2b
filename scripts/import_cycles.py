"""Report import cycles and upward imports in the `karma` package (stdlib only: `ast`).

Every `import` statement counts, wherever it is: at the top, in a function, or under
`if TYPE_CHECKING:` (a cycle that only type checkers follow is still two modules that must be
read together). `from a import b` is an edge to the module `a.b` when `b` is a submodule, else
to `a`; a package's `__init__` importing its own submodules is not an edge back from them.

Two findings, one rule each:
- cycles: strongly connected components of the module graph with more than one module, or a
  module importing itself;
- upward imports: `karma.server` (the trio shell) imported from outside it, except by the
  entry modules (`karma.cli`, `karma.__main__`) that start it.

    python scripts/import_cycles.py            # a report; exit status 1 when anything is found
    python scripts/import_cycles.py --json     # the same findings as JSON
    python scripts/import_cycles.py --sizes 10 # and the ten largest modules' line counts
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "karma"
#: the shell: nothing below it may import it
SHELL = "karma.server"
#: the modules that start the shell (the command line), allowed to import it
ENTRY_MODULES = frozenset({"karma.cli", "karma.__main__"})

Graph = dict[str, set[str]]


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every module of `package` under `root`."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """`name` or its longest prefix that is a module of ours; None for third-party names."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in (_known(name, modules) for name in targets) if t is not None)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    """Module → the modules of `package` it imports."""
    modules = module_files(root, package)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, and self loops (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def upward_imports(graph: Mapping[str, Iterable[str]], shell: str = SHELL) -> list[list[str]]:
    """[importer, imported] for every import of the shell from below it."""

    def inside(name: str) -> bool:
        return name == shell or name.startswith(shell + ".")

    return sorted(
        [source, target]
        for source, targets in graph.items()
        if not inside(source) and source not in ENTRY_MODULES
        for target in targets
        if inside(target)
    )


def line_counts(root: Path = ROOT, package: str = PACKAGE) -> dict[str, int]:
    return {
        name: len(path.read_text().splitlines())
        for name, path in module_files(root, package).items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the directory holding karma/")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--sizes", type=int, default=0, help="also list the N largest modules")
    args = parser.parse_args(argv)
    graph = import_graph(args.root)
    found, upward = cycles(graph), upward_imports(graph)
    counts = sorted(line_counts(args.root).items(), key=lambda item: (-item[1], item[0]))
    largest = counts[: args.sizes]
    if args.json:
        report = {"modules": len(graph), "cycles": found, "upward_imports": upward}
        if largest:
            report["largest_modules"] = [[name, lines] for name, lines in largest]
        print(json.dumps(report, indent=2))
    else:
        print(f"{len(graph)} modules")
        print(f"cycles: {len(found)}")
        for component in found:
            print("  " + " <-> ".join(component))
        print(f"upward imports: {len(upward)}")
        for source, target in upward:
            print(f"  {source} -> {target}")
        if largest:
            print("largest modules:")
        for name, lines in largest:
            print(f"  {lines:5d}  {name}")
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.exit(main())
