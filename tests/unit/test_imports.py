"""The package's import graph: dependencies point one way and nothing imports in a circle.

Rooms, lowest first: the shared core (errors, config, session, request, phases, notify,
connect/ ...), then the scheduler, the node agent, the login side, Open OnDemand and the
laptop, then the commands, then the command line. A module may import its own room and the
rooms its room is allowed; lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "hpcdesk"

CORE = "core"
# room -> the rooms it may import (besides itself and the core)
ALLOWED: dict[str, set[str]] = {
    CORE: set(),
    "scheduler": set(),
    "node": set(),
    "login": {"scheduler"},
    "ood": {"scheduler", "login"},
    "laptop": set(),
    "commands": {"scheduler", "login", "ood", "node", "laptop"},
    "cli": {"commands", "laptop"},
}
# The laptop runs on a laptop: of the core, only what `hpcdesk tunnel` needs.
LAPTOP_CORE = {"hpcdesk", "hpcdesk.errors", "hpcdesk.quoting", "hpcdesk.states",
               "hpcdesk.connection", "hpcdesk.files"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ALLOWED:
        return parts[1]
    if module in ("hpcdesk.cli", "hpcdesk.arguments", "hpcdesk.__main__"):
        return "cli"
    return CORE


def imports() -> dict[str, set[str]]:
    """Every hpcdesk module -> the hpcdesk modules it imports (at any depth of its code)."""
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_upward_import() -> None:
    wrong = []
    for module, targets in imports().items():
        mine = room(module)
        for target in targets:
            theirs = room(target)
            if theirs == mine or (theirs == CORE and mine != "laptop"):
                continue
            if mine == "laptop" and target in LAPTOP_CORE:
                continue
            if theirs not in ALLOWED[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_cycle() -> None:
    graph = imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["hpcdesk.node.agent", "hpcdesk.login.waiting"])
def test_the_graph_sees_the_imports(module: str) -> None:
    """The checks above are only as good as the graph: it finds known imports."""
    graph = imports()
    assert "hpcdesk.phases" in graph[module]
