"""The layering rules of ../shared/DESIGN.md, checked on the source itself:
no import cycles between modules, layers point one way, the training island
stays an island, and the API process does not import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(p): p for p in (SRC / "openft").rglob("*.py") if "migrations" not in p.parts
}


def _imports(module: str) -> set[str]:
    """openft modules imported at module level, ``if TYPE_CHECKING:`` blocks
    included (a type-only import is still a dependency between the two)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)

    visit(tree.body)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _reaches(start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        current = todo.pop()
        if current == goal:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(GRAPH[current])
    return False


def test_no_module_imports_one_that_imports_it_back() -> None:
    cycles = sorted(
        f"{a} -> {b} -> ... -> {a}" for a, targets in GRAPH.items() for b in targets if _reaches(b, a)
    )
    assert cycles == []


LAYER_RULES = {
    # importer prefix: prefixes it must never import
    "openft.store": ("openft.services", "openft.scheduler", "openft.api", "openft.cli"),
    "openft.scheduler": ("openft.services", "openft.api", "openft.cli"),
    "openft.services": ("openft.api", "openft.cli"),
    "openft.training": ("openft.services", "openft.scheduler", "openft.api", "openft.cli"),
    "openft.schemas": ("openft.store", "openft.services", "openft.api"),
    "openft.serving": ("openft.services", "openft.api", "openft.store", "openft.scheduler"),
    "openft.evals": ("openft.services", "openft.api", "openft.scheduler", "openft.cli"),
    "openft.graders": ("openft.services", "openft.api", "openft.store", "openft.scheduler", "openft.training"),
    "openft.gateway": ("openft.services", "openft.api", "openft.scheduler", "openft.cli", "openft.training",
                       "openft.serving"),
    "openft.sandbox": ("openft.services", "openft.api", "openft.store", "openft.scheduler", "openft.training",
                       "openft.graders", "openft.serving"),
}


@pytest.mark.parametrize("layer", sorted(LAYER_RULES))
def test_layers_point_one_way(layer: str) -> None:
    broken = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items() if module == layer or module.startswith(f"{layer}.")
        for target in targets if target.startswith(LAYER_RULES[layer])
    )
    assert broken == []


def test_importing_the_api_app_does_not_import_torch() -> None:
    code = (
        "import sys, openft.api.app, openft.cli; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
