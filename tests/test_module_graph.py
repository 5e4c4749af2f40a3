"""The package's shape: no import cycle, no private name borrowed across packages.

Read from the source with ``ast`` (module-level imports only; ``if TYPE_CHECKING:``
blocks are for type checkers and do not run)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "grpc_balancer"


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        if path.name.endswith("_pb2.py") or path.name.endswith("_pb2_grpc.py"):
            continue
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                out.append(node)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    borrowed: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in _top_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.module is None or not node.module.startswith(PACKAGE):
                    continue
                targets = []
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in modules else node.module)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        home = node.module.rsplit(".", 1)[0]
                        if not name.startswith(home):
                            borrowed.append(f"{name} imports {alias.name} from {node.module}")
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph, borrowed


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # importing a package's submodule runs the package's __init__ first: not a cycle
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read_and_cycles_are_found() -> None:
    graph, _ = _graph()
    assert "grpc_balancer._attempts.plan" in graph["grpc_balancer._aio.calls"]
    assert sum(len(edges) for edges in graph.values()) > 100
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle() -> None:
    graph, _ = _graph()
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_private_name_is_imported_across_packages() -> None:
    _, borrowed = _graph()
    assert borrowed == []
