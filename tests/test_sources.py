"""Sources: the official CIFAR-10 pickle format, Keras' loader, image folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import run_cli, smooth_image, write_image_folder
from PIL import Image

import augzarr
from augzarr.errors import UserError
from augzarr.sources import open_source


def test_cifar_archive_and_folder_read_the_same_arrays(cifar_archive, tmp_path):
    path, truth = cifar_archive
    from_tar = open_source(str(path))
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path / "extracted", filter="data")
    from_dir = open_source(str(tmp_path / "extracted" / "cifar-10-batches-py"))
    from_parent = open_source(str(tmp_path / "extracted"))
    for source in (from_tar, from_dir, from_parent):
        assert source.class_names == truth["names"]
        assert np.array_equal(source.train.images, truth["train"])
        assert np.array_equal(source.train.labels, truth["train_labels"])
        assert np.array_equal(source.test.images, truth["test"])
        assert source.image_shape == (32, 32, 3)
    assert from_tar.content_hash == from_dir.content_hash


def test_pickle_reader_agrees_with_keras_own_batch_loader(cifar_archive, tmp_path):
    from keras.src.datasets.cifar import load_batch

    path, _ = cifar_archive
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path / "x", filter="data")
    keras_images, keras_labels = load_batch(str(tmp_path / "x" / "cifar-10-batches-py" / "data_batch_2"))
    ours = open_source(str(path))
    assert np.array_equal(ours.train.images[20:40], keras_images.transpose(0, 2, 3, 1))
    assert np.array_equal(ours.train.labels[20:40], keras_labels)


def test_limit_takes_the_first_training_images(cifar_archive):
    path, truth = cifar_archive
    source = open_source(str(path), limit=7)
    assert np.array_equal(source.train.images, truth["train"][:7])
    assert len(source.test) == len(truth["test"])  # the test split is kept whole


def test_pickle_archive_that_is_not_cifar_is_refused(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not a tar file")
    with pytest.raises(UserError, match="cannot read the archive"):
        open_source(str(bad))


def test_pickle_with_code_is_refused(tmp_path):
    """Batches are pickles: only numpy arrays may be built from them, never arbitrary callables."""
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}, protocol=4))
    (folder / "data_batch_1").write_bytes(pickle.dumps(Evil(), protocol=4))
    with pytest.raises(UserError, match="not a CIFAR-10 pickle batch"):
        open_source(str(folder))


def test_keras_loader_offline_with_empty_cache_gives_one_line_advice(tmp_path):
    result = run_cli(
        "build-aug", "--out", str(tmp_path / "s.zarr"), env={"KERAS_HOME": str(tmp_path / "keras")}, timeout=120
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("build-aug: error: CIFAR-10 is not in Keras' cache")
    assert str(tmp_path / "keras") in lines[-1] and "--source" in lines[-1]
    assert not (tmp_path / "s.zarr" / "zarr.json").exists()


def test_image_folder_classes_order_and_reports(tmp_path):
    root = write_image_folder(tmp_path / "imgs", {"b_dog": 3, "a_cat": 2})
    (root / "a_cat" / "notes.txt").write_text("not an image")
    (root / "a_cat" / ".hidden.jpg").write_bytes(b"")
    (root / "Thumbs.db").write_bytes(b"")
    (root / "c_empty").mkdir()
    source = open_source(str(root))
    assert source.class_names == ["a_cat", "b_dog"]
    # classes in turn: cat0, dog0, cat1, dog1, dog2
    assert source.train.labels.tolist() == [0, 1, 0, 1, 1]
    assert [f.name for f in source.train.files] == ["0000.jpg", "0000.jpg", "0001.jpg", "0001.jpg", "0002.jpg"]
    reported = "\n".join(source.ignored)
    assert "notes.txt: not an image file" in reported
    assert ".hidden.jpg: hidden" in reported
    assert "Thumbs.db: hidden" in reported
    assert "c_empty: empty class folder" in reported
    assert source.test is None


def test_image_folder_with_train_and_test(tmp_path):
    write_image_folder(tmp_path / "d" / "train", {"x": 3, "y": 3})
    write_image_folder(tmp_path / "d" / "test", {"x": 1, "y": 2}, seed=1)
    source = open_source(str(tmp_path / "d"))
    assert source.class_names == ["x", "y"]
    assert len(source.train) == 6 and len(source.test) == 3


def test_image_folder_test_class_unknown_to_train_is_refused(tmp_path):
    write_image_folder(tmp_path / "d" / "train", {"x": 2})
    write_image_folder(tmp_path / "d" / "test", {"z": 1})
    with pytest.raises(UserError, match="test/ has classes that train/ lacks: z"):
        open_source(str(tmp_path / "d"))


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="a file must be the official"):
        open_source(str(tmp_path / "photo.jpg"))


def test_every_mode_becomes_rgb(tmp_path):
    """Grayscale, grayscale+alpha, palette, RGBA and 16-bit PNGs all decode to the right RGB pixels."""
    from augzarr.images import read_image_file

    rng = np.random.default_rng(0)
    rgb = smooth_image(rng, 8)
    gray = rgb[..., 0]
    cases = {
        "L.png": (Image.fromarray(gray, "L"), np.repeat(gray[..., None], 3, axis=2)),
        "LA.png": (Image.fromarray(np.dstack([gray, gray]), "LA"), np.repeat(gray[..., None], 3, axis=2)),
        "RGBA.png": (Image.fromarray(np.dstack([rgb, np.full(gray.shape, 255, np.uint8)]), "RGBA"), rgb),
        "P.png": (Image.fromarray(rgb).convert("P"), np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))),
        "I16.png": (Image.fromarray(gray.astype(np.uint16) * 257), np.repeat(gray[..., None], 3, axis=2)),
        "RGB.bmp": (Image.fromarray(rgb), rgb),
        "RGB.webp": (Image.fromarray(rgb), rgb),
    }
    for name, (image, expected) in cases.items():
        kwargs = {"lossless": True} if name.endswith(".webp") else {}
        image.save(tmp_path / name, **kwargs)
        decoded, _ = read_image_file(tmp_path / name)
        assert decoded.shape == (8, 8, 3) and decoded.dtype == np.uint8, name
        assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1, name


def test_a_relative_source_folder_builds_and_hashes_like_an_absolute_one(image_folder, tmp_path):
    relative = run_cli(
        "build-aug",
        "--source",
        image_folder.name,
        "--copies",
        "1",
        "--preview",
        "0",
        "--quiet",
        "--out",
        "rel.zarr",
        cwd=image_folder.parent,
    )
    assert relative.returncode == 0, relative.stderr
    absolute = run_cli(
        "build-aug",
        "--source",
        str(image_folder),
        "--copies",
        "1",
        "--preview",
        "0",
        "--quiet",
        "--out",
        str(tmp_path / "abs.zarr"),
        check=True,
    )
    assert absolute.returncode == 0
    read = lambda p: zarr.open_group(str(p), mode="r").attrs["source"]["content_hash"]
    assert read(image_folder.parent / "rel.zarr") == read(tmp_path / "abs.zarr")


def test_evaluate_takes_a_source_of_arrays_at_the_models_shape_and_channels(cifar_archive):
    """evaluate --source reads any source through the seam: decoded arrays (a CIFAR archive here, MNIST's grayscale
    alike) are resized and given the model's channels, and said to hold no image files to look training images up by."""
    from augzarr.trainer.evaluate import model_inputs, training_images
    from augzarr.trainer.options import TrainOptions
    from augzarr.trainer.records import RunRecord

    path, truth = cifar_archive
    test = open_source(str(path)).test
    images, resized, digests = model_inputs(test, 16, 20, 1)
    assert images.shape == (len(test), 16, 20, 1) and resized == {"32x32": len(test)} and digests is None
    same, resized, _ = model_inputs(test, 32, 32, 3)
    assert np.array_equal(same, truth["test"]) and resized == {}
    gray = type(test)(labels=test.labels, images=truth["test"][..., :1])
    colour, _, _ = model_inputs(gray, 32, 32, 3)
    assert np.array_equal(colour, np.repeat(truth["test"][..., :1], 3, axis=3))
    assert (
        training_images(RunRecord(status=None, run_dir=None, options=TrainOptions(store="s.zarr")), None)[
            "unknown_because"
        ]
        == "the source's images are arrays, not image files"
    )


def test_a_module_in_a_seam_package_is_registered_by_being_there(tmp_path):
    """Adding a source kind or a storage backend is one new module: the package imports each of its modules, so a
    kind or backend registered in a new file is found without an import line elsewhere."""
    code = """
import sys
sys.path.insert(0, {root!r})
import augzarr.sources, augzarr.storage
from augzarr.sources import source_kinds
from augzarr.storage.base import _BACKENDS
print(sorted(type(kind).__module__ for kind in source_kinds()))
print(sorted({{backend.__module__ for backend in _BACKENDS.values()}}))
"""
    package = Path(augzarr.__file__).parent
    copy = tmp_path / "augzarr"
    shutil.copytree(package, copy, symlinks=True)
    (copy / "sources" / "tfrecord_example.py").write_text(
        "from .base import SourceKind, register\n\n\n@register\nclass ExampleKind(SourceKind):\n"
        "    described = 'an example'\n\n    def claims(self, spec):\n        return False\n\n"
        "    def open(self, spec, request):\n        raise NotImplementedError\n"
    )
    (copy / "storage" / "example_backend.py").write_text(
        "from .base import register\nfrom .local import LocalStorage\n\n\n@register('example')\nclass ExampleStorage(LocalStorage):\n    pass\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code.format(root=str(tmp_path))], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "augzarr.sources.tfrecord_example" in out[0] and "augzarr.sources.image_folder" in out[0], out
    assert "augzarr.storage.example_backend" in out[1] and "augzarr.storage.objectstore" in out[1], out
