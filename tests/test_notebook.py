"""Issue #14 point 2: the seed notebook, done right, runs top to bottom (on a tiny CIFAR-10 archive in the
official format) and is stored without outputs."""

from __future__ import annotations

import json

import nbformat
import pytest
from conftest import REPO, write_cifar_archive

NOTEBOOK = REPO / "examples" / "cifar10_augmentation.ipynb"


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_the_notebook_runs_top_to_bottom_and_does_what_the_original_meant(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, n_batches=2, per_batch=20, n_test=10)
    out = tmp_path / "out"
    monkeypatch.setenv("AUGZARR_NOTEBOOK_SOURCE", str(archive))
    monkeypatch.setenv("AUGZARR_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("AUGZARR_NOTEBOOK_EPOCHS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "Test score: " in printed and "Test accuracy: " in printed
    score = float(printed.split("Test accuracy: ")[1].split()[0])
    assert 0 <= score <= 1
    build_cell = next(cell for cell in notebook.cells if "augzarr.build(" in cell.source)
    widgets = [o for o in build_cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the build's progress bar is a live widget in the notebook"
    images = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images, "the contact sheet is shown inline"
    # 5 copies of each of the 32 training images left after holding out a fifth (the 10 test images kept)
    assert "train" in printed and "copies       5 per image" in printed
    architecture = json.loads((out / "cifar10_architecture.json").read_text())
    assert architecture["class_name"] == "Sequential"
    import keras

    model = keras.models.model_from_json((out / "cifar10_architecture.json").read_text())
    model.load_weights(out / "cifar10.weights.h5")  # the saved weights fit the saved architecture
    assert model.output_shape == (None, 10)
    assert (out / "cifar10-aug.zarr" / "zarr.json").is_file()


@pytest.fixture(autouse=True)
def _kernel_runs_this_python(monkeypatch):
    """The kernel is this interpreter (jupyter_client runs `python` from a kernelspec as sys.executable)."""
    import sys
    from pathlib import Path

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
