"""The package's layout holds: kfp only at the edges, no import circle, each step a module.

Read from the source with ``ast``, so these checks cost milliseconds and see every module,
including those no other test imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nasflow"
#: Only the command line may import kfp or the pipeline definitions.
EDGE = PACKAGE / "cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules ``path`` imports (``top_level_only``: at import time, not inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", [name for name, path in MODULES.items() if EDGE not in path.parents])
def test_the_core_imports_no_kfp_and_no_pipeline(module):
    imported = _imports(MODULES[module], top_level_only=False)
    offending = sorted(name for name in imported if name.split(".")[0] in ("kfp", "pipelines", "components"))
    assert not offending, f"{module} imports {offending}: only nasflow.cli may"


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = set()
        for name in _imports(path, top_level_only=True):
            # "from nasflow.search import x" may name a module or a name in one.
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            # A package imports its submodules for its public face; that is not a circle.
            if node.startswith(target + "."):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_between_nasflow_modules():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_circle_check_sees_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_component_has_its_own_step_module():
    components = {path.stem for path in (ROOT / "components").glob("*.py") if not path.stem.startswith("_")}
    steps = {path.stem for path in (PACKAGE / "steps").glob("*.py") if not path.stem.startswith("_")}
    assert components == steps
    for name in components:
        calls = _imports(ROOT / "components" / f"{name}.py", top_level_only=False)
        step_imports = {module for module in calls if module.startswith("nasflow.steps.")}
        assert step_imports and all(module.startswith(f"nasflow.steps.{name}") for module in step_imports), name
