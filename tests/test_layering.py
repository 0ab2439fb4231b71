"""The package layering of DESIGN.md ("Packages"), checked on the source (AST), not by grep.

profiles/ < costmodels/ < launch/ < planner/: a package imports only the ones below it.
torch only in launch/runtime/ and launch/profiler/ (the emitters and the launcher
write and start jobs without it); typer and rich only in planner/cli/; ortools never in costmodels/.
Every import counts, also one inside a function (a lazy import is still a dependency),
and no two files import each other, directly or around a longer loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("profiles", "costmodels", "launch", "planner")
ALLOWED: dict[str, set[str]] = {pkg: set(LAYERS[: i + 1]) for i, pkg in enumerate(LAYERS)}
# third-party packages a file may import only where named (prefix of its path)
RESTRICTED_THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "torch": ("launch/runtime/", "launch/profiler/"),
    "typer": ("planner/cli/",),
    "rich": ("planner/cli/",),
    "click": ("planner/cli/",),
    "ortools": ("planner/",),
    "matplotlib": ("planner/",),
}


def source_files() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py"))


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, absolute names, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path.relative_to(ROOT)}: relative import; use absolute package paths")
            base = node.module or ""
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def module_file(name: str) -> Path | None:
    """The file of our module ``name`` (a package's __init__), or None for a name that is not a module."""
    parts = name.split(".")
    as_file = ROOT.joinpath(*parts).with_suffix(".py")
    if as_file.is_file():
        return as_file
    as_package = ROOT.joinpath(*parts, "__init__.py")
    return as_package if as_package.is_file() else None


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", source_files(), ids=rel)
def test_imports_point_down_the_layers(path: Path) -> None:
    own = rel(path).split("/")[0]
    for name in imported_modules(path):
        top = name.split(".")[0]
        if top in LAYERS:
            assert top in ALLOWED[own], f"{rel(path)} imports {name}: {own}/ may import only {sorted(ALLOWED[own])}"
        if top in RESTRICTED_THIRD_PARTY:
            places = RESTRICTED_THIRD_PARTY[top]
            assert rel(path).startswith(places), f"{rel(path)} imports {top}, which belongs in {', '.join(places)} only"


def test_no_file_level_import_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in source_files():
        targets = {module_file(name) for name in imported_modules(path) if name.split(".")[0] in LAYERS}
        graph[rel(path)] = {rel(t) for t in targets if t is not None and t != path}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            loop = visiting[visiting.index(node):] + [node]
            raise AssertionError("import cycle: " + " -> ".join(loop))
        visiting.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The AST walk finds lazy imports too (a check that cannot fail proves nothing)."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import torch\n    from planner.cli.app import app\n")
    assert {"torch", "planner.cli.app", "planner.cli.app.app"} <= set(imported_modules(sample))
