"""The notebooks in notebooks/ are saved without outputs and execute headless (nbclient) against a real sweep
directory in the documented layout, on a kernel of this interpreter registered in a temporary Jupyter path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_report import make_sweep  # noqa: E402 - the synthetic sweep of the report tests

NOTEBOOKS = ("atari100k_results", "ablations", "imagination_and_subgoals")
FIGURES = {"atari100k_results": 1, "ablations": 4, "imagination_and_subgoals": 4}  # PNG figures each one displays
KERNEL = "hieros-test"


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory: pytest.TempPathFactory, repo_root: Path):
    """A kernelspec for ``sys.executable`` in a temporary JUPYTER_PATH (CI has none registered), and the
    environment variables that point the notebooks' parameter cells at a fresh sweep."""
    root = tmp_path_factory.mktemp("notebooks")
    spec_dir = root / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hieros test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    sweep = make_sweep(root / "runs", crashed=("krull", 1, 1), missing=("krull", 2, 1), games=("krull",))
    environment = {
        "JUPYTER_PATH": str(root / "jupyter"),
        "HIEROS_REPORT_SOURCE": str(sweep),
        "HIEROS_REPORT_REPS": "200",
        "HIEROS_REPORT_ETBS_SIZE": "300",
        "HIEROS_REPORT_ETBS_SEEDS": "2",
        "HIEROS_HOME": str(root / "home"),
        "MPLBACKEND": "Agg",
    }
    patcher = pytest.MonkeyPatch()
    for key, value in environment.items():
        patcher.setenv(key, value)
    yield root
    patcher.undo()


def _outputs(notebook: nbformat.NotebookNode) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.extend(str(value) for value in output.get("data", {}).values())
    return "\n".join(texts)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_saved_without_outputs(name: str, repo_root: Path):
    notebook = nbformat.read(repo_root / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "HIEROS_REPORT_SOURCE" in code[0].source  # parameterised in the first code cell
    assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 3  # prose explains what to look at


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name: str, notebook_env: Path, repo_root: Path):
    notebook = nbformat.read(repo_root / "notebooks" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL,
        timeout=300,
        startup_timeout=180,
        # on a loaded machine a cell's outputs can arrive after its reply: wait for them instead of dropping them
        iopub_timeout=120,
        raise_on_iopub_timeout=True,
        resources={"metadata": {"path": str(notebook_env)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    text = _outputs(notebook)
    images = sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    assert images == FIGURES[name], f"{name} displayed {images} figures"
    if name == "atari100k_results":
        assert "hierarchy.layers=3" in text and "seed 2 missing" in text
        assert "reproduces its Table 1 mean (120) and median (56)" in text
    elif name == "ablations":
        assert "baseline: hierarchy.layers=3" in text and "probability_of_improvement" in text
    else:
        assert "imagination: open_loop_step000001000.gif (step 1000)" in text
        assert "subgoals: subgoals_step000001000.gif (step 1000)" in text
