"""Every notebook in notebooks/ runs top to bottom without an error and is committed stripped.

A notebook with a cell tagged "parameters" gets test values injected after that cell,
papermill-style, so they override its defaults (e.g. a checkpoint from the ``chain``
fixture and few sampling steps)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Appended to the executed copy: the kernel must run in the environment running pytest.
KERNEL_PREFIX_PROBE = "import sys\nprint(sys.prefix, end='')"

# Parameter values per notebook, from the test's ``request``: a fixture is requested only
# for the notebook that needs it (``chain`` trains every stage, a minute or two).
NOTEBOOK_PARAMETERS: dict[str, Callable[[pytest.FixtureRequest], dict[str, Any]]] = {
    "02_trajectory_control.ipynb": lambda request: {
        "CHECKPOINT": str(request.getfixturevalue("chain") / "stage2_traj.ckpt"),
        "STEPS": 2,
    },
}


class ThisInterpreterKernelManager(AsyncKernelManager):
    """Starts ipykernel under the interpreter running pytest (the project's .venv).

    With no kernel directories to search, jupyter_client falls back to ipykernel's
    built-in "python3" spec, whose command is ``sys.executable -m ipykernel_launcher``;
    a user-level or ``$JUPYTER_PATH`` kernelspec pointing at another Python cannot
    take over, and nothing needs installing.
    """

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return KernelSpecManager(parent=self, kernel_dirs=[])


def inject_parameters(notebook: nbformat.NotebookNode, parameters: dict[str, Any]) -> None:
    """Insert ``NAME = value`` lines as a code cell right after the one cell tagged
    "parameters", so they override its defaults (papermill's convention)."""
    tagged = [
        index
        for index, cell in enumerate(notebook.cells)
        if "parameters" in cell.metadata.get("tags", [])
    ]
    assert len(tagged) == 1, (
        f"one cell tagged 'parameters' expected to inject {sorted(parameters)}, "
        f"got {len(tagged)} (cells {tagged})"
    )
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, injected)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(path: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    notebook = nbformat.read(path, as_version=4)
    if path.name in NOTEBOOK_PARAMETERS:
        inject_parameters(notebook, NOTEBOOK_PARAMETERS[path.name](request))
    notebook.cells.append(nbformat.v4.new_code_cell(KERNEL_PREFIX_PROBE))
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        kernel_manager_class=ThisInterpreterKernelManager,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the cell and traceback

    errors = [
        f"cell {index}: {output.ename}: {output.evalue}"
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors, f"{path.name}: cells raised errors: {errors}"
    probe_output = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    assert probe_output == sys.prefix, (
        f"{path.name}: kernel ran in {probe_output!r}, expected the test environment {sys.prefix!r}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stripped(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    unstripped = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not unstripped, (
        f"{path.name}: code cells {unstripped} have outputs or execution counts; "
        "commit notebooks with outputs cleared"
    )
