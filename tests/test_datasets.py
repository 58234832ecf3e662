"""More keras.datasets sources (CIFAR-100, MNIST, Fashion-MNIST) and grayscale end to end.

Each test writes small files in the dataset's official format where Keras 3's load_data() keeps
them (a temporary KERAS_HOME), then builds, inspects, trains and evaluates through the commands."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import cli_server, run_cli, smooth_image

from augzarr.errors import OptionError, UserError
from augzarr.sources import open_source
from augzarr.sources.keras_datasets import (
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    FASHION_MNIST_CLASSES,
    KERAS_DATASETS,
    download_keras_dataset,
)


def digits(rng: np.random.Generator, n: int) -> np.ndarray:
    """n grayscale 28x28 images, a bright blob on a dark smooth background, as [n, 28, 28] uint8."""
    return np.stack([smooth_image(rng, 28)[..., 0] // 2 for _ in range(n)])


def write_mnist(keras_home: Path, n_train: int = 40, n_test: int = 10, seed: int = 0) -> dict:
    """mnist.npz, as Keras downloads it: x_train [n, 28, 28] uint8, y_train [n] uint8, x_test, y_test."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": digits(rng, n_train),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": digits(rng, n_test),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    (keras_home / "datasets").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(keras_home / "datasets" / "mnist.npz", **arrays)
    return arrays


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: 0x0000, type 0x08 (unsigned byte), the number of dimensions, each dimension
    as a big-endian int32, then the data."""
    return struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion_mnist(keras_home: Path, n_train: int = 40, n_test: int = 10, seed: int = 1) -> dict:
    """The four gzipped IDX files, in datasets/fashion-mnist/ as Keras caches them."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": digits(rng, n_train),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": digits(rng, n_test),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder = keras_home / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for name, key in (
        ("train-labels-idx1-ubyte.gz", "y_train"),
        ("train-images-idx3-ubyte.gz", "x_train"),
        ("t10k-labels-idx1-ubyte.gz", "y_test"),
        ("t10k-images-idx3-ubyte.gz", "x_test"),
    ):
        (folder / name).write_bytes(gzip.compress(idx_bytes(arrays[key]), mtime=0))
    return arrays


def write_cifar100(keras_home: Path, n_train: int = 40, n_test: int = 10, seed: int = 2) -> dict:
    """cifar-100-python.tar.gz (cifar-100-python/train, test, meta: pickled dicts with bytes keys, data as
    [n, 3072] CHW rows, fine_labels and coarse_labels), saved where Keras 3 caches it."""
    rng = np.random.default_rng(seed)
    arrays = {}
    members = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = np.stack([smooth_image(rng, 32) for _ in range(n)])
        fine = rng.integers(0, 100, n)
        coarse = rng.integers(0, 20, n)
        arrays[split] = (images, fine, coarse)
        members[split] = pickle.dumps(
            {
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                b"batch_label": f"{split} batch".encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) for v in coarse],
                b"data": images.transpose(0, 3, 1, 2).reshape(n, -1),
            },
            protocol=4,
        )
    members["meta"] = pickle.dumps(
        {
            b"fine_label_names": [n.encode() for n in CIFAR100_FINE_CLASSES],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_CLASSES],
        },
        protocol=4,
    )
    (keras_home / "datasets").mkdir(parents=True, exist_ok=True)
    with tarfile.open(keras_home / "datasets" / "cifar-100-python-target_archive", "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return arrays


def write_cifar10(keras_home: Path) -> dict:
    """cifar-10-python.tar.gz, saved where Keras 3 caches it."""
    from conftest import write_cifar_archive

    (keras_home / "datasets").mkdir(parents=True, exist_ok=True)
    return write_cifar_archive(keras_home / "datasets" / "cifar-10-batches-py-target_archive")


def keras_env(keras_home: Path) -> dict:
    return {"KERAS_HOME": str(keras_home)}


def read_back(store: Path) -> tuple[zarr.Group, dict]:
    group = zarr.open_group(str(store), mode="r")
    return group, dict(group.attrs)


@pytest.fixture(scope="module", autouse=True)
def cli_server_under_the_session_keras_home():
    """This process's CLI server (conftest.run_cli) started before a test points KERAS_HOME at its own cache (the
    server takes the environment it starts in): train and evaluate, which read a store and not that cache, fork
    from it once a test has put KERAS_HOME back."""
    cli_server()


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """A temporary Keras cache for this test: for open_source here, and for the commands through keras_env."""
    import keras.src.backend.config as keras_config

    home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(
        keras_config, "_KERAS_DIR", str(home)
    )  # Keras reads KERAS_HOME once, when another test first imported it
    return home


# --- reading each dataset from Keras' cache -----------------------------------


def test_every_keras_dataset_reads_from_keras_cache(keras_home):
    mnist, fashion, cifar100, cifar10 = (
        write_mnist(keras_home),
        write_fashion_mnist(keras_home),
        write_cifar100(keras_home),
        write_cifar10(keras_home),
    )
    assert set(KERAS_DATASETS) == {"cifar10", "cifar100", "mnist", "fashion_mnist"}
    for name, truth, names in (
        ("mnist", mnist, [str(d) for d in range(10)]),
        ("fashion_mnist", fashion, FASHION_MNIST_CLASSES),
    ):
        source = open_source(name)
        assert source.kind == f"keras-{name}" and source.location == f"keras.datasets.{name}"
        assert source.image_shape == (28, 28, 1) and source.class_names == names
        assert np.array_equal(source.train.images, truth["x_train"][..., None])
        assert np.array_equal(source.test.images, truth["x_test"][..., None])
        assert (
            source.train.labels.tolist() == truth["y_train"].tolist()
            and source.test.labels.tolist() == truth["y_test"].tolist()
        )
    fine, coarse = open_source("cifar100"), open_source("cifar100", label_mode="coarse")
    assert fine.class_names == CIFAR100_FINE_CLASSES and len(fine.class_names) == 100
    assert coarse.class_names == CIFAR100_COARSE_CLASSES and len(coarse.class_names) == 20
    assert fine.location == "keras.datasets.cifar100 (label_mode=fine)" and coarse.location.endswith(
        "(label_mode=coarse)"
    )
    images, fine_labels, coarse_labels = cifar100["train"]
    assert fine.image_shape == (32, 32, 3) and np.array_equal(fine.train.images, images)
    assert np.array_equal(coarse.train.images, images)
    assert fine.train.labels.tolist() == fine_labels.tolist() and coarse.train.labels.tolist() == coarse_labels.tolist()
    assert coarse.test.labels.tolist() == cifar100["test"][2].tolist()
    assert fine.content_hash != coarse.content_hash  # the labels differ, so do the stores
    ten = open_source("cifar10")
    assert ten.kind == "keras-cifar10" and np.array_equal(ten.train.images, cifar10["train"])
    archive = keras_home.parent / "cifar-10-python.tar.gz"  # the same file, as --source PATH reads it
    shutil.copy(keras_home / "datasets" / "cifar-10-batches-py-target_archive", archive)
    assert ten.content_hash == open_source(str(archive)).content_hash
    assert ten.class_names == cifar10["names"] and ten.test.labels.tolist() == cifar10["test_labels"].tolist()


def test_cache_reader_agrees_with_keras_own_loaders(keras_home, tmp_path):
    """The same files through Keras' own code: Fashion-MNIST's load_data() (it checks no hash, so it reads
    a test's files) and CIFAR-100's batch reader."""
    import keras
    from keras.src.datasets.cifar import load_batch

    write_fashion_mnist(keras_home)
    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    ours = open_source("fashion_mnist")
    assert np.array_equal(ours.train.images[..., 0], x_train) and np.array_equal(ours.test.images[..., 0], x_test)
    assert np.array_equal(ours.train.labels, y_train) and np.array_equal(ours.test.labels, y_test)
    # what build-aug takes from load_data() when nothing is cached is what it reads from the cache
    files = [keras_home / file for file in KERAS_DATASETS["fashion_mnist"].cache_files]
    downloaded = download_keras_dataset("fashion_mnist", KERAS_DATASETS["fashion_mnist"], files, None)
    for theirs, mine in zip(downloaded, KERAS_DATASETS["fashion_mnist"].read_cache(files, None)):
        assert theirs.shape == mine.shape and np.array_equal(theirs, mine)

    write_cifar100(keras_home)
    with tarfile.open(keras_home / "datasets" / "cifar-100-python-target_archive") as archive:
        archive.extractall(tmp_path / "x", filter="data")
    for mode in ("fine", "coarse"):
        images, labels = load_batch(str(tmp_path / "x" / "cifar-100-python" / "test"), label_key=f"{mode}_labels")
        source = open_source("cifar100", label_mode=mode)
        assert np.array_equal(source.test.images, images.transpose(0, 2, 3, 1))
        assert source.test.labels.tolist() == list(labels)


def test_label_mode_is_cifar100s_only(keras_home, tmp_path):
    write_mnist(keras_home)
    with pytest.raises(OptionError, match="--label-mode applies to --source cifar100 only"):
        open_source("mnist", label_mode="fine")
    with pytest.raises(OptionError, match="--label-mode must be fine or coarse"):
        open_source("cifar100", label_mode="medium")
    result = run_cli(
        "build-aug",
        "--source",
        "mnist",
        "--label-mode",
        "coarse",
        "--out",
        str(tmp_path / "s.zarr"),
        env=keras_env(keras_home),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "build-aug: error: --label-mode applies to --source cifar100 only, not to --source mnist; leave it out"
    ]
    assert not (tmp_path / "s.zarr").exists()


def test_offline_with_nothing_cached_gives_one_line_advice(tmp_path, monkeypatch):
    home = tmp_path / "keras"
    result = run_cli(
        "build-aug", "--source", "fashion_mnist", "--out", str(tmp_path / "s.zarr"), env=keras_env(home), timeout=120
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # the error is the only line: not even Keras' "Downloading data from ..." before it
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, (result.stdout, result.stderr)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"build-aug: error: Fashion-MNIST is not in Keras' cache ({home / 'datasets'}) and could not be downloaded"
    )
    assert "connect once to let Keras download it" in line and "train-images-idx3-ubyte.gz" in line
    assert str(home / "datasets" / "fashion-mnist") in line
    assert not (tmp_path / "s.zarr" / "zarr.json").exists()
    # the others the same way, in this process (each command would spend seconds starting TensorFlow)
    import keras.src.backend.config as keras_config

    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))  # read once, when Keras was first imported
    for name, title, cached in (
        ("cifar100", "CIFAR-100", "cifar-100-python-target_archive"),
        ("mnist", "MNIST", "mnist.npz"),
    ):
        with pytest.raises(UserError) as refused:
            open_source(name)
        message = str(refused.value)
        assert message.startswith(f"{title} is not in Keras' cache ({home / 'datasets'})") and "\n" not in message
        assert f"save it as {home / 'datasets' / cached}" in message


def test_damaged_cache_file_is_one_line_naming_it(keras_home, tmp_path):
    write_mnist(keras_home)
    cached = keras_home / "datasets" / "mnist.npz"
    cached.write_bytes(cached.read_bytes()[:100])  # a download cut short
    result = run_cli("build-aug", "--source", "mnist", "--out", str(tmp_path / "s.zarr"), env=keras_env(keras_home))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert (
        line.startswith("build-aug: error: --source mnist: Keras' cached MNIST cannot be read")
        and str(cached) in line
        and "delete that file" in line
    )
    assert cached.exists()  # the user's file is left alone

    arrays = write_mnist(keras_home)
    np.savez(cached, **{**arrays, "y_test": np.full(len(arrays["y_test"]), 10, np.uint8)})  # a label past "9"
    with pytest.raises(UserError, match="--source mnist: test label 10 is outside MNIST's 10 classes"):
        open_source("mnist")
    np.savez(cached, **{**arrays, "x_train": arrays["x_train"].astype(np.float32)})
    with pytest.raises(UserError, match=r"training images are float32 \[40, 28, 28, 1\], not uint8"):
        open_source("mnist")


def test_a_damaged_cifar100_cache_file_is_named_as_cifar100(keras_home, tmp_path):
    write_cifar100(keras_home)
    cached = keras_home / "datasets" / "cifar-100-python-target_archive"
    with tarfile.open(cached, "w:gz") as archive:  # the archive reads, its train batch does not unpickle
        for name, data in (("train", b"not a pickle"), ("test", b"nor this"), ("meta", b"")):
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError) as refused:
        open_source("cifar100")
    message = str(refused.value)
    assert message.startswith(
        f"--source cifar100: Keras' cached CIFAR-100 cannot be read: {cached}: train is not a CIFAR-100 pickle batch"
    )
    assert "CIFAR-10 " not in message and "\n" not in message


# --- grayscale end to end -----------------------------------------------------


@pytest.mark.parametrize("policy", ["crop-flip", "notebook", "crop-flip-cutout", "randaugment"])
def test_every_preset_keeps_grayscale_28x28_and_acts(policy, keras_home, tmp_path):
    write_mnist(keras_home, n_train=20, n_test=4)
    out = tmp_path / "s.zarr"
    run_cli(
        "build-aug",
        "--source",
        "mnist",
        "--policy",
        policy,
        "--copies",
        "2",
        "--preview",
        "0",
        "--workers",
        "1",
        "--out",
        str(out),
        "--quiet",
        env=keras_env(keras_home),
        check=True,
    )
    group, attrs = read_back(out)
    assert attrs["image_shape"] == [28, 28, 1] and group["train/images"].shape[1:] == (28, 28, 1)
    images, sources, copies = group["train/images"][:], group["train/source_index"][:], group["train/copy_index"][:]
    originals = {int(s): images[i] for i, (s, c) in enumerate(zip(sources, copies)) if c == 0}
    changed = sum(
        not np.array_equal(images[i], originals[int(s)]) for i, (s, c) in enumerate(zip(sources, copies)) if c > 0
    )
    assert changed >= 0.75 * np.count_nonzero(copies)


def test_grayscale_fast_image_path_gives_the_full_calls_bytes():
    """The build's cheap per-image path (applier.py) on one-channel images, preset by preset."""
    from augzarr.builder.applier import image_applier
    from augzarr.builder.policies import PRESETS
    from augzarr.builder.seeding import SampleSeeder

    rng = np.random.default_rng(0)
    images = [smooth_image(rng, 28)[..., :1].copy() for _ in range(40)]
    for name, make in PRESETS.items():
        full, fast = make(28, 28), make(28, 28)
        full_seeder, fast_seeder = SampleSeeder(full, 3), SampleSeeder(fast, 3)
        apply = image_applier(fast)
        for i, image in enumerate(images):
            full_seeder.reseed(i, 1)
            fast_seeder.reseed(i, 1)
            expected = full(image=image)["image"]
            assert expected.shape == (28, 28, 1)
            assert np.array_equal(apply(image), expected), (name, i)


def test_grayscale_store_is_deterministic_and_resizes_with_its_channel(keras_home, tmp_path):
    write_fashion_mnist(keras_home, n_train=30, n_test=4)
    args = [
        "build-aug",
        "--source",
        "fashion_mnist",
        "--copies",
        "2",
        "--preview",
        "0",
        "--quiet",
        "--chunk-size",
        "16",
    ]
    run_cli(*args, "--workers", "1", "--out", str(tmp_path / "a.zarr"), env=keras_env(keras_home), check=True)
    run_cli(*args, "--workers", "3", "--out", str(tmp_path / "b.zarr"), env=keras_env(keras_home), check=True)
    from conftest import assert_same_store

    assert_same_store(tmp_path / "a.zarr", tmp_path / "b.zarr")
    run_cli(*args, "--image-size", "32", "--out", str(tmp_path / "c.zarr"), env=keras_env(keras_home), check=True)
    group, attrs = read_back(tmp_path / "c.zarr")
    assert attrs["image_shape"] == [32, 32, 1] and group["test/images"].shape == (4, 32, 32, 1)
    assert attrs["class_names"] == FASHION_MNIST_CLASSES and attrs["source"]["kind"] == "keras-fashion_mnist"


def test_keras_randaugment_and_crop_flip_layers_keep_one_channel():
    """--keras-augment on a grayscale store: every operation RandAugment can draw (its colour degeneration
    leaves one channel as it is), then the translation and flip, keep [n, 28, 28, 1]."""
    from augzarr.trainer.models import build_model

    batch = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype("float32")
    model = build_model("shallow", (28, 28, 1), 10, keras_augment="randaugment")
    augment = [layer for layer in model.layers if "rand_augment" in layer.name or layer.name.startswith("random_")]
    rand_augment = next(layer for layer in augment if "rand_augment" in layer.name)
    for name in rand_augment._AUGMENT_LAYERS:
        assert tuple(getattr(rand_augment, name)(batch, training=True).shape) == batch.shape, name
    for layer in augment:
        assert tuple(layer(batch, training=True).shape) == batch.shape, layer.name
    assert model.output_shape == (None, 10)


def test_mnist_end_to_end_build_inspect_train_evaluate(keras_home, tmp_path, monkeypatch):
    """Grayscale through every step: the store, previews and contact sheet, both models (deep with --online,
    shallow with --keras-augment randaugment), evaluate on the store and on an RGB image folder."""
    from conftest import write_image_folder
    from PIL import Image

    write_mnist(keras_home, n_train=60, n_test=10)
    out, previews = tmp_path / "s.zarr", tmp_path / "preview"
    built = run_cli(
        "build-aug",
        "--source",
        "mnist",
        "--copies",
        "2",
        "--out",
        str(out),
        "--preview",
        "3",
        "--preview-dir",
        str(previews),
        "--workers",
        "1",
        env=keras_env(keras_home),
        check=True,
    )
    assert "10 previews" in built.stdout  # 3 images x (original + 2 copies), and the sheet
    group, attrs = read_back(out)
    assert attrs["image_shape"] == [28, 28, 1] and attrs["class_names"] == [str(d) for d in range(10)]
    assert attrs["source"]["kind"] == "keras-mnist" and group["test/images"].shape == (10, 28, 28, 1)
    with Image.open(previews / "cifar_0_1.jpeg") as preview:
        assert preview.mode == "L" and preview.size == (28, 28)
    with Image.open(previews / "contact_sheet.png") as sheet:
        assert sheet.mode == "RGB" and sheet.size[0] > 3 * 96
    summary = json.loads(run_cli("inspect-aug", "--store", str(out), "--json", check=True).stdout)
    assert summary["image_shape"] == [28, 28, 1] and summary["counts"]["test"] == [1] * 10

    # train and evaluate read the store, not Keras' cache: back to this process's own KERAS_HOME, under which they
    # fork from the CLI server that has imported TensorFlow already (conftest.run_cli) instead of importing it anew
    monkeypatch.undo()
    deep = tmp_path / "deep"
    trained = run_cli(
        "train",
        "--store",
        str(out),
        "--model",
        "deep",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--online",
        "flip,shift,erase",
        "--out",
        str(deep),
        "--quiet",
        check=True,
    )
    assert "Test accuracy" in trained.stdout
    shallow = tmp_path / "shallow"
    run_cli(
        "train",
        "--store",
        str(out),
        "--model",
        "shallow",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--keras-augment",
        "randaugment",
        "--out",
        str(shallow),
        "--quiet",
        check=True,
    )
    for run_dir in (deep, shallow):  # each judged on the store's test split at the end of training
        assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
        assert sum(json.loads((run_dir / "metrics.json").read_text())["confusion_matrix"][0]) == 1
    evaluated = run_cli(
        "evaluate", "--model", str(deep), "--store", str(out), "--json", str(tmp_path / "e.json"), check=True
    )
    written = json.loads((tmp_path / "e.json").read_text())
    assert written["evaluated_on"] == "test" and written["count"] == 10 and "Test accuracy" in evaluated.stdout

    folder = write_image_folder(tmp_path / "digits", {"3": 2, "7": 2}, size=32)  # RGB files, another size
    run_cli("evaluate", "--model", str(deep), "--source", str(folder), "--json", str(tmp_path / "f.json"), check=True)
    written = json.loads((tmp_path / "f.json").read_text())
    assert written["count"] == 4 and written["per_class"]["3"]["count"] == 2 and written["resized"]["to"] == "28x28"


def test_cifar100_label_modes_build_distinct_stores(keras_home, tmp_path):
    truth = write_cifar100(keras_home)
    args = ["build-aug", "--source", "cifar100", "--copies", "1", "--preview", "0", "--quiet", "--val-fraction", "0"]
    run_cli(*args, "--out", str(tmp_path / "fine.zarr"), env=keras_env(keras_home), check=True)
    run_cli(
        *args, "--label-mode", "coarse", "--out", str(tmp_path / "coarse.zarr"), env=keras_env(keras_home), check=True
    )
    for mode, names, column in (("fine", CIFAR100_FINE_CLASSES, 1), ("coarse", CIFAR100_COARSE_CLASSES, 2)):
        group, attrs = read_back(tmp_path / f"{mode}.zarr")
        assert attrs["class_names"] == names and attrs["image_shape"] == [32, 32, 3]
        assert attrs["source"]["location"] == f"keras.datasets.cifar100 (label_mode={mode})"
        rows = group["train/source_index"][:]
        assert group["train/labels"][:].tolist() == truth["train"][column][rows].tolist()
        assert group["test/labels"][:].tolist() == truth["test"][column].tolist()
    # the same store path with the other label mode is another store: refused, naming what differs
    refused = run_cli(*args, "--label-mode", "coarse", "--out", str(tmp_path / "fine.zarr"), env=keras_env(keras_home))
    assert refused.returncode == 1 and "class_names" in refused.stderr and "Traceback" not in refused.stderr
