"""The house rules that keep data flowing one way: no import cycle between top-level units of ``transferlab``.

Every import counts — module level, inside functions and under ``TYPE_CHECKING`` — because a lazy import that
closes a cycle is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transferlab"

# Units every stage builds on: they must never import a stage, the orchestrator or the commands above them.
FOUNDATION = (
    "errors",
    "fileio",
    "distributed",
    "data",
    "metrics",
    "heads",
    "backbones",
    "model",
    "features",
    "config",
    "prepare",
    "record",
)
ABOVE_FOUNDATION = ("probe", "rank", "search", "finetune", "advice", "report", "pipeline", "history", "api", "commands")


def _module_name(path: Path, root: Path) -> tuple[str, str]:
    """(module, package) dotted names of a source file under ``root`` (the directory holding the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def import_edges(package: Path) -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) → where, for every import between two top-level units of ``package``."""
    root, name = package.parent, package.name
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        module, parent = _module_name(path, root)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parent.split(".")[: len(parent.split(".")) - node.level + 1]
                    targets = [".".join([*base, node.module] if node.module else base)]
                else:
                    targets = [node.module or ""]
                # ``from transferlab import x`` imports the unit x when x is a submodule
                targets += [f"{targets[0]}.{alias.name}" for alias in node.names if targets[0] == name]
            else:
                continue
            source = module.split(".")[1] if "." in module else name
            for target in targets:
                parts = target.split(".")
                if parts[0] != name or len(parts) < 2 or not _is_unit(package, parts[1]):
                    continue
                if parts[1] != source:
                    edges[(source, parts[1])].append(f"{module}:{node.lineno}")
    return dict(edges)


def _is_unit(package: Path, unit: str) -> bool:
    return (package / unit).is_dir() or (package / f"{unit}.py").is_file()


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(set(graph) | {t for _, t in edges}):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_top_level_units() -> None:
    edges = import_edges(PACKAGE)
    assert len({unit for edge in edges for unit in edge}) > 15  # the parser really sees the package
    found = cycles(edges)
    where = {
        tuple(cycle): [f"{a} -> {b} at {edges[(a, b)][0]}" for a in cycle for b in cycle if (a, b) in edges]
        for cycle in found
    }
    assert not found, f"import cycles: {where}"


def test_foundation_never_imports_the_stages_above_it() -> None:
    edges = import_edges(PACKAGE)
    upward = [
        f"{a} -> {b} at {where[0]}" for (a, b), where in edges.items() if a in FOUNDATION and b in ABOVE_FOUNDATION
    ]
    assert not upward, upward


@pytest.mark.parametrize("kind", ["module level", "inside a function", "under TYPE_CHECKING"])
def test_a_reintroduced_cycle_is_caught(tmp_path: Path, kind: str) -> None:
    package = tmp_path / "transferlab"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "high.py").write_text("from transferlab.low import thing\n")
    back = {
        "module level": "from transferlab.high import x\n",
        "inside a function": "def f():\n    from transferlab import high\n",
        "under TYPE_CHECKING": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high import x\n",
    }[kind]
    (package / "low" / "thing.py").write_text(back)
    assert cycles(import_edges(package)) == [["high", "low"]]
