"""The package's shape: imports point one way (no cycle), and inference runs without the
training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tora

PACKAGE = Path(tora.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The ``tora`` modules ``path`` imports anywhere in its body (``from a import b``
    counts as ``a.b`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 50 and "tora.inference.pipeline" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_lower_layers_do_not_import_upper_ones():
    """motion and utils at the bottom; models and diffusion know nothing of training,
    inference or the entry points; inference knows nothing of training."""
    graph = import_graph()
    upper = ("tora.training", "tora.inference", "tora.data", "tora.train", "tora.sample")
    for name, targets in graph.items():
        if name.startswith(("tora.motion", "tora.models", "tora.diffusion", "tora.checkpoints")):
            assert not {t for t in targets if t.startswith(upper)}, name
        if name.startswith("tora.inference"):
            assert not {t for t in targets if t.startswith("tora.training")}, name


def test_inference_imports_neither_lightning_nor_hydra():
    code = (
        "import sys, tora.inference\n"
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'hydra') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]", result.stdout
