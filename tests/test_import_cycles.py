"""No import cycles in the `claude_mailbox` package (issue 19.7). The graph is built from the source
with `ast`: `import x` and `from x import y`, relative and absolute. Module-level imports (the module
body, and if / try / with blocks in it, TYPE_CHECKING included) must form no cycle at all. Imports
inside functions (deferred on purpose, to keep the hook and the CLI cheap) must not close one either,
except for the upward edges named in DEFERRED_UPWARD."""

from __future__ import annotations

import ast
from pathlib import Path

from harness import REPO

PACKAGE = "claude_mailbox"
ROOT = REPO / "daemon" / PACKAGE
# Deferred imports that point up the layers on purpose, each with its reason. The resolver (locate,
# stdlib only, on the hook's path) parses config.toml through config.py, which builds on locate,
# only when no flag, environment variable or daemon.url gave the address.
DEFERRED_UPWARD = {(f"{PACKAGE}.locate", f"{PACKAGE}.config")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: the module body and blocks that run with it
    (if / try / with), not function or class bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for name in ("body", "orelse", "finalbody"):
                pending.extend(getattr(node, name, []))
            pending.extend(stmt for handler in getattr(node, "handlers", []) for stmt in handler.body)
    return found


def targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package's modules that `node` imports (a `from pkg import name` counts `pkg.name` when
    that is a module, else `pkg`)."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        candidates = [f"{source}.{alias.name}" for alias in node.names]
        candidates = [name if name in known else source for name in candidates]
    found = set()
    for name in candidates:
        while name and name not in known:  # `import a.b.c`: the deepest module of ours it names
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def all_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    """module -> the package's modules it imports (`deferred`: also inside functions and classes)."""
    paths = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}
    known = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        graph[module] = set()
        for node in all_imports(tree) if deferred else module_level_imports(tree):
            graph[module] |= targets(module, is_package, node, known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_package() -> None:
    """Otherwise "no cycle" would pass for the wrong reason."""
    graph = import_graph()
    assert f"{PACKAGE}.cli" in graph and f"{PACKAGE}.setup.autostart" in graph
    assert f"{PACKAGE}.client" in graph[f"{PACKAGE}.cli"]
    assert f"{PACKAGE}.setup.detached" in graph[f"{PACKAGE}.setup.autostart"]


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_imports_resolve() -> None:
    known = {"p", "p.a", "p.sub", "p.sub.b"}
    node = ast.parse("from ..a import x\nfrom . import b").body
    assert targets("p.sub.b", False, node[0], known) == {"p.a"}  # type: ignore[arg-type]
    assert targets("p.sub", True, node[1], known) == {"p.sub.b"}  # type: ignore[arg-type]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_through_deferred_imports() -> None:
    graph = import_graph(deferred=True)
    for importer, imported in DEFERRED_UPWARD:
        assert imported in graph[importer], f"{importer} no longer imports {imported}: drop it from DEFERRED_UPWARD"
        graph[importer].discard(imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (counting imports inside functions): " + " -> ".join(cycle or [])
