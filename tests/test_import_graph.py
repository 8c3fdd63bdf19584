"""The package's import graph: no cycle anywhere, and ``import sb3_nigt`` loads no optional backend.

The graph is built from the source (every ``import`` statement, function-level ones included, relative imports
resolved), so the check follows the package as it grows instead of a fixed list of modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import sb3_nigt

ROOT = Path(sb3_nigt.__file__).resolve().parent


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__``)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_nodes(tree: ast.AST, at_import: bool) -> list[ast.AST]:
    """Every import statement of the tree; with ``at_import``, only those run when the module is imported (not the
    ones inside a function)."""
    if not at_import:
        return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    found: list[ast.AST] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            found.extend(import_nodes(node, True))
    return found


def imported_names(name: str, path: Path, at_import: bool = False) -> set[str]:
    """The dotted names a module imports (``from a import b`` gives ``a.b`` and ``a``), relative ones resolved;
    function-level imports too, unless ``at_import``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path)), at_import):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (an imported name that is not a module points to its module)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(name, path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported.startswith("sb3_nigt") and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as the list of its modules (first repeated at the end), or [] if there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_graph_sees_relative_and_function_level_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "sb3_nigt.algorithms.afedpg" in graph["sb3_nigt"]
    path = module_files()["sb3_nigt.backends.ray_actors"]
    assert "ray" in imported_names("sb3_nigt.backends.ray_actors", path)  # inside functions only
    assert "ray" not in imported_names("sb3_nigt.backends.ray_actors", path, at_import=True)
    assert any(targets for name, targets in graph.items() if name.startswith("sb3_nigt.clock."))


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def imports(names: set[str], root: str) -> bool:
    return any(name == root or name.startswith(root + ".") for name in names)


def optional_modules() -> set[str]:
    """The package's optional backends: the modules that import ray (anywhere: ray is an optional dependency) or
    that import torch.distributed when they are imported."""
    return {
        name for name, path in module_files().items()
        if imports(imported_names(name, path), "ray") or imports(imported_names(name, path, at_import=True), "torch.distributed")
    }


def test_importing_the_package_loads_no_optional_backend():
    optional = optional_modules()
    assert optional, "expected the Ray and torch.distributed backends to be found by their imports"
    code = (
        "import json, sys\nimport sb3_nigt\nimport sb3_nigt.backends.registry\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m.startswith('sb3_nigt'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "ray" not in loaded
    assert not loaded & optional, f"import sb3_nigt loaded {sorted(loaded & optional)}"
