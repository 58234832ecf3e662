"""Issue #11 point 2: one module owns store format v1 (augzarr/store_format.py). What the builder writes
is exactly its typed attributes, the docs' store-format page documents them field for field, and the trainer reads stores
through it without importing the builder or changing any process-wide setting."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, run_cli, write_image_folder

from augzarr.store_format import SourceInfo, StoreAttrs, open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    images = write_image_folder(root / "images", {"ant": 6, "bee": 5}, size=8)
    out = root / "store.zarr"
    run_cli("build-aug", "--source", str(images), "--out", str(out), "--copies", "1", "--preview", "0", check=True)
    return out


def test_the_builder_writes_exactly_the_typed_attributes(store):
    raw = json.loads((store / "zarr.json").read_text())["attributes"]
    typed = StoreAttrs.from_json(raw, str(store))
    assert typed.to_json() == raw  # no field written outside the contract, none of it lost on reading
    assert open_store(store).attrs == typed


def test_the_docs_document_every_attribute_field_for_field():
    page = (REPO / "docs" / "reference" / "store-format.md").read_text()
    section = page.split("\n## Attributes", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| (`.+?) \|", section, flags=re.M)  # the attribute column of each row
    documented = {name for cell in first_cells for name in re.findall(r"`([a-z_0-9.]+)`", cell)}
    nested = {f"source.{f.name}" for f in dataclasses.fields(SourceInfo)}
    top = {f.name for f in dataclasses.fields(StoreAttrs)} - {"source"}
    assert documented == top | nested  # the arrays table's rows (train/images, ...) are paths, not names


IMPORT_TRAINER = """
import sys
import cv2, keras, zarr  # Keras imports OpenCV itself: what the trainer's own imports change is measured after it
from PIL import Image

def settings():
    return dict(zarr.config.get("array")), cv2.getNumThreads(), cv2.ocl.useOpenCL(), Image.MAX_IMAGE_PIXELS

before = settings()
import augzarr.store_format, augzarr.storage
import augzarr.trainer.training, augzarr.trainer.evaluate, augzarr.trainer.stream, augzarr.trainer.cli
loaded = sorted(m for m in sys.modules if m.startswith(("augzarr.builder", "albumentations")))
assert loaded == [], loaded
assert settings() == before, (settings(), before)
print("clean")
"""


def test_the_trainer_imports_no_builder_module_and_changes_no_global_setting():
    result = subprocess.run([sys.executable, "-c", IMPORT_TRAINER], capture_output=True, text=True)
    assert result.stdout.strip() == "clean", result.stderr[-2000:]


def test_a_store_with_a_required_attribute_missing_is_refused_naming_it(store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    del meta["attributes"]["image_shape"]
    (copy / "zarr.json").write_text(json.dumps(meta))
    result = run_cli("inspect-aug", "--store", str(copy))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"store {copy} is damaged: its attributes ({copy}/zarr.json) lack image_shape; rebuild it" in result.stderr
