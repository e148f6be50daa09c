"""The house rules, checked on the source: files short enough to read whole, imports only down or
across a floor (model_defs < handlers < scripts), and no import cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

FLOORS = {"model_defs": 0, "handlers": 1, "scripts": 2}
MAX_LINES = 360


def _modules() -> dict[str, Path]:
    found = {}
    for package in FLOORS:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports, at any depth, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", None) == "TYPE_CHECKING"
               for node in ast.walk(block)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", [n for n in MODULES if n.split(".")[0] in ("handlers", "scripts")])
def test_every_file_reads_whole(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines; split it by concern"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down_or_across(name):
    floor = FLOORS[name.split(".")[0]]
    upward = sorted(i for i in GRAPH[name] if FLOORS[i.split(".")[0]] > floor)
    assert not upward, f"{name} imports {upward} from a floor above it"


def test_no_import_cycle():
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for imported in sorted(GRAPH[name]):
            visit(imported, path + [name])
        done.add(name)

    for module in sorted(GRAPH):
        visit(module, [])
