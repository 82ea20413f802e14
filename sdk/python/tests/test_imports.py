"""The package imports no module cycle: each module's imports, those made
for the type checker alone (`if TYPE_CHECKING:`) included, point one way.
A cycle has one module run before another it needs is whole, and ties
modules that should read apart."""

from __future__ import annotations

import ast
from pathlib import Path

import policyhub

PACKAGE = Path(policyhub.__file__).parent
"""The package as installed (the sources, with the stubs generated at build
time in `v1`, which are left out: protoc writes them)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: path for name, path in found.items() if not name.startswith("policyhub.v1")}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that the module `name` imports: `from .x import
    y` imports `x`, or `x.y` alone when that is a module (as `from .. import
    bundle` imports `policyhub.bundle`; a package's `__init__` that every
    import of one of its modules runs is no edge of its own)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in known else source)
    return {target for target in targets if target in known and target != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import that closes a cycle, as the path of the cycle."""
    found: list[list[str]] = []
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_package_imports_no_cycle() -> None:
    known = modules()
    graph = {name: imported(name, path, set(known)) for name, path in known.items()}
    assert "policyhub._session.history" in graph["policyhub._session"], "the walk sees imports"
    assert cycles(graph) == []


def test_the_walk_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
