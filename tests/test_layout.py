"""The package's shape: module-level imports form no circle (a circle holds only by import order),
and the command line declares no work of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import monosemantic

SRC = Path(monosemantic.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    """module -> the package modules it imports (at module level, or anywhere)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # imports for type checkers only are not imports
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by depth-first search (one per back edge)."""
    found, state = [], dict.fromkeys(graph, 0)

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif state[nxt] == 0:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node, [node])
    return found


def test_no_import_circle_at_module_level():
    assert cycles(import_graph(top_level_only=True)) == []


def test_no_import_circle_through_deferred_imports_either():
    """An import inside a function still makes two modules depend on each other."""
    assert cycles(import_graph(top_level_only=False)) == []


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_cli_modules_declare_only():
    """The CLI modules hold commands and nothing they compute: no `run_*` stage functions, and only
    the stages, options and terminal modules (plus config and errors) among their package imports."""
    allowed = {"monosemantic", "monosemantic.config", "monosemantic.errors", "monosemantic.options"}
    allowed |= {"monosemantic.bounds"}  # range checks of options that are no config field
    allowed |= {
        m for m in import_graph(False) if m.startswith(("monosemantic.stages", "monosemantic.terminal"))
    }
    for module in ("monosemantic.cli", "monosemantic.features.cli", "monosemantic.steer_cli"):
        path = SRC.parent / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert not [d for d in defined if d.startswith("run_")], module
        imports = import_graph(top_level_only=False)[module] - {
            "monosemantic.features.cli",
            "monosemantic.steer_cli",
        }
        assert imports <= allowed, (module, imports - allowed)
