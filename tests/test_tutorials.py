"""The tutorials are stored executed, with outputs from their current code, and run top to bottom.

The site shows the stored outputs (``python tutorials/execute.py`` writes them, full length). Each
notebook's metadata records the hash of its code cells: a notebook whose code changed since it was
executed fails here. ``test_tutorial_runs`` executes each one again in a fresh kernel on the
interpreter running the tests, with ``PSBNN_FAST=1`` to shorten training.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="tutorial tests need the test extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="tutorial tests need the test extra (nbclient)")
pytest.importorskip("ipykernel", reason="tutorial tests need the test extra (ipykernel)")

HERE = Path(__file__).resolve().parents[1] / "tutorials"
TUTORIALS = sorted(HERE.glob("*.ipynb"))


def load_execute():
    spec = importlib.util.spec_from_file_location("execute", HERE / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute = load_execute()


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 2


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_is_stored_executed_from_its_current_code(path):
    notebook = nbformat.read(path, as_version=4)
    recorded = notebook.metadata.get(execute.METADATA_KEY, {})
    stale = "was never executed" if not recorded else "changed since its outputs were stored"
    assert recorded.get("code_sha256") == execute.code_sha256(notebook), (
        f"{path.name} {stale}: run `python tutorials/execute.py {path.stem}`"
    )
    assert recorded.get("fast") is False, "the site shows full-length runs (no --fast)"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)  # every cell ran
    assert all(c.execution_count == i for i, c in enumerate(code, start=1))  # in order, once
    outputs = [o for c in code for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # figures for the site
    assert not [o for o in outputs if o.output_type == "error"]
    text = execute.output_text(notebook)
    assert not [s for s in execute.FORBIDDEN if s in text]
    assert str(Path(sys.prefix)) not in text and str(HERE.parent) not in text  # local paths


def test_currency_check_sees_code_not_markdown_or_outputs():
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("x = 1")]
    )
    notebook.metadata[execute.METADATA_KEY] = {"code_sha256": execute.code_sha256(notebook)}
    assert execute.is_current(notebook)
    notebook.cells[0].source = "# Another title"
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    assert execute.is_current(notebook)
    notebook.cells[1].source = "x = 2"
    assert not execute.is_current(notebook)


def test_clean_replaces_local_paths():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import warnings")])
    site_packages = execute.site.getsitepackages()[0]
    warning = f"{site_packages}/tqdm/auto.py:21: Warning\n"
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr", text=warning)]
    notebook.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    execute.clean(notebook)
    assert notebook.cells[0].outputs[0].text == "<site-packages>/tqdm/auto.py:21: Warning\n"
    assert "execution" not in notebook.cells[0].metadata


@pytest.mark.slow  # about 25 s of CPU per notebook
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path):
    notebook = nbformat.read(path, as_version=4)
    # The kernel spec starts "python": put this interpreter first on PATH so the kernel is it.
    path_var = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PSBNN_FAST": "1", "OMP_NUM_THREADS": "1", "PATH": path_var}
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    client.execute(env=env)
