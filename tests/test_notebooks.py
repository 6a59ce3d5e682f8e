"""The notebooks run headless from top to bottom, and are committed without outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

pytestmark = pytest.mark.notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STRIP = ROOT / "tools" / "strip_notebooks.py"
# Files each notebook must leave in $IMGFRAME_NOTEBOOK_OUTPUT.
WRITES = {
    "fleet_audit.ipynb": ["images.csv", "findings.csv", "report.html"],
    "quickstart.ipynb": ["images.csv"],
}
# Where Jupyter and IPython write when nothing points them elsewhere.
HOME_FOLDERS = [".jupyter", ".ipython", ".local/share/jupyter", ".config/matplotlib"]


def ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def test_notebooks_folder_has_the_documented_notebooks():
    assert {"fleet_audit.ipynb", "quickstart.ipynb"} <= set(ids(NOTEBOOKS))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_is_valid_nbformat_4_with_the_python3_kernel(path):
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    unstripped = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not unstripped, f"cells {unstripped} have outputs: run {STRIP.relative_to(ROOT)}"
    assert "widgets" not in notebook.metadata, f"saved widget state: run {STRIP.name}"


def test_strip_tool_removes_outputs_counts_and_widget_state(tmp_path):
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    cell = next(cell for cell in notebook.cells if cell.cell_type == "code")
    cell.execution_count = 3
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    cell.metadata["execution"] = {"iopub.status.idle": "2026-11-01T00:00:00Z"}
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    path = tmp_path / "executed.ipynb"
    nbformat.write(notebook, path)

    def strip(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(STRIP), *args, str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert strip("--check").returncode == 1
    assert strip().returncode == 0
    assert strip("--check").returncode == 0
    stripped = nbformat.read(path, as_version=4)
    assert stripped == nbformat.read(NOTEBOOKS[0], as_version=4)


@pytest.fixture
def jupyter_sandbox(tmp_path, monkeypatch):
    """Point every Jupyter, IPython and matplotlib folder into tmp_path; yield the output dir."""
    for variable, folder in [
        ("JUPYTER_CONFIG_DIR", "jupyter-config"),
        ("JUPYTER_DATA_DIR", "jupyter-data"),
        ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
        ("IPYTHONDIR", "ipython"),
        ("MPLCONFIGDIR", "matplotlib"),
    ]:
        monkeypatch.setenv(variable, str(tmp_path / folder))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("OS_AUTH_TOKEN", raising=False)
    output = tmp_path / "output"
    monkeypatch.setenv("IMGFRAME_NOTEBOOK_OUTPUT", str(output))
    return output


def stderr_text(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.output_type == "stream" and output.name == "stderr"
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_runs_headless_without_errors_or_warnings(path, tmp_path, jupyter_sandbox):
    home = Path.home()
    absent_before = [folder for folder in HOME_FOLDERS if not (home / folder).exists()]
    notebook = nbformat.read(path, as_version=4)
    # Proves which Python ran the cells: this venv's, not whatever `python` is on PATH.
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))
    # "python" in the kernelspec's argv is replaced by sys.executable when launching.
    kernel = KernelManager(kernel_name="python3")
    assert kernel.kernel_spec.argv[0] in {"python", "python3", sys.executable}
    client = NotebookClient(
        notebook,
        km=kernel,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )

    client.execute()  # raises CellExecutionError, with the traceback, on any failing cell

    assert notebook.cells[-1].outputs[0].text.strip() == sys.prefix
    assert stderr_text(notebook) == ""
    for name in WRITES.get(path.name, []):
        assert (jupyter_sandbox / name).stat().st_size > 0, name
    assert [folder for folder in absent_before if (home / folder).exists()] == []
