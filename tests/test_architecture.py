"""The package's shape: its imports point one way, from the commands down to the model library.

Every import of a ``resnet`` module counts, at the top of a file or inside a function."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import resnet

SOURCE = Path(resnet.__file__).parent
# The parts, lowest first: a module may import its own part and the ones below it.
LAYERS = {"util": 0, "errors": 0, "words": 0, "version": 0, "models": 1, "config": 2, "data": 3, "engine": 4,
          "tools": 5, "helptext": 6, "api": 6, "cli": 7, "__init__": 7, "__main__": 8}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports ("from resnet.data import augment" is resnet.data.augment)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "resnet":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return found & modules


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in SOURCE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found by a depth-first search, as the path that closes it."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                found.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, [*path, other])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_the_package_has_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_cycle_search_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_imports_point_down_the_layers(graph):
    upward = [(a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_the_config_is_a_leaf_and_the_model_library_needs_torch_only(graph):
    assert graph["resnet.config"] <= {"resnet.errors", "resnet.models.resnet"}
    assert graph["resnet.models.resnet"] == set()
    tree = ast.parse((SOURCE / "config.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"resnet", "__future__"} <= set(sys.stdlib_module_names)
