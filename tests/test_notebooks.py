"""Every notebook in notebooks/ runs top to bottom without an error and is committed stripped."""

from __future__ import annotations

import sys
from pathlib import Path

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
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
