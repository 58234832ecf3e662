"""Small real data the tests make themselves: JPEG/PNG image folders and CIFAR-10 pickle archives."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# End-to-end tests that start servers, clusters or kernels, or run the campaigns and the recipe comparison: marked
# `slow`, which `make test` runs like every other; `pytest -m "not slow"` leaves them out of a quick loop.
SLOW_FILES = {"test_notebook.py", "test_cluster_build.py", "test_object_storage.py", "test_stream_s3_order.py"}
SLOW_TESTS = {
    "test_compare_recipes_prints_a_row_per_recipe_with_mean_and_spread",
    "test_a_rerun_reuses_the_finished_runs_of_its_results_file_and_only_under_the_same_settings",
    "test_crash_campaign_fast_form",
    "test_misuse_campaign_fast_form",
    "test_mnist_end_to_end_build_inspect_train_evaluate",
    "test_stream_steps_fault_no_more_than_array_steps",
}

# The files that take longest, longest first (pytest --durations, summed per file): make test starts them first.
LONGEST_FILES = [
    "test_campaigns.py",
    "test_cluster_build.py",
    "test_run_checks.py",
    "test_object_storage.py",
    "test_bad_images.py",
    "test_store_checks.py",
    "test_layout_detection.py",
    "test_build.py",
    "test_robustness.py",
    "test_compare_recipes.py",
    "test_datasets.py",
    "test_hf_datasets.py",
    "test_notebook.py",
    "test_reports.py",
    "test_build_checks.py",
    "test_train.py",
    "test_torch.py",
    "test_docs.py",
    "test_api.py",
    "test_policy_checks.py",
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    # make test hands each test process one whole file at a time, in this order (--no-loadscope-reorder): the files
    # that take longest go first, so that none of them is left running alone at the end while the others idle
    items.sort(key=lambda item: LONGEST_FILES.index(item.path.name) if item.path.name in LONGEST_FILES else 1000)


@pytest.fixture(scope="session", autouse=True)
def own_temp_dir(tmp_path_factory):
    """A temporary folder of this test process's own, for it and every process it starts (TMPDIR): tests that
    compare what a build leaves in the machine's temporary folder must not see another test process's builds
    (pytest-xdist runs four; other checkouts may run theirs on the same machine)."""
    import tempfile

    folder = tmp_path_factory.mktemp("tmp", numbered=False)
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    yield folder
    if before is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random but natural-looking image: a smooth gradient plus a blob, so augmentations visibly act."""
    y, x = np.mgrid[0:size, 0:size] / size
    colour = rng.uniform(0, 255, (2, 3))
    img = colour[0] * x[..., None] + colour[1] * y[..., None]
    cy, cx = rng.uniform(0.2, 0.8, 2)
    img[(y - cy) ** 2 + (x - cx) ** 2 < 0.04] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image_folder(root: Path, classes: dict[str, int], size: int = 16, seed: int = 0, fmt: str = "jpg") -> Path:
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(smooth_image(rng, size)).save(root / name / f"{i:04d}.{fmt}", quality=95)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """3 classes x 10 JPEGs of 16x16."""
    return write_image_folder(tmp_path / "images", {"cat": 10, "dog": 10, "emu": 10})


def cifar_batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """One batch in the official format: a pickled dict of bytes keys, data as [n, 3072] CHW rows.
    Protocol 4 stores bytes natively, as the official Python 2 pickles' strings load with encoding='bytes'."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=4)


def write_cifar_archive(path: Path, n_batches: int = 2, per_batch: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """A small cifar-10-python.tar.gz; returns the arrays it holds."""
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train = np.stack([smooth_image(rng, 32) for _ in range(n_batches * per_batch)])
    train_labels = rng.integers(0, 10, len(train))
    test = np.stack([smooth_image(rng, 32) for _ in range(n_test)])
    test_labels = rng.integers(0, 10, n_test)
    members = {
        f"data_batch_{b + 1}": cifar_batch(
            train[b * per_batch : (b + 1) * per_batch],
            train_labels[b * per_batch : (b + 1) * per_batch],
            f"training batch {b + 1}",
        )
        for b in range(n_batches)
    }
    members["test_batch"] = cifar_batch(test, test_labels, "testing batch 1")
    members["batches.meta"] = pickle.dumps(
        {b"label_names": [n.encode() for n in names], b"num_vis": 3072, b"num_cases_per_batch": per_batch}, protocol=4
    )
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return {"train": train, "train_labels": train_labels, "test": test, "test_labels": test_labels, "names": names}


@pytest.fixture
def cifar_archive(tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "cifar-10-python.tar.gz"
    return path, write_cifar_archive(path)


def restore_ctrl_c() -> None:
    """For a child that must feel Ctrl-C: a shell that starts a command in the background (as CI
    may) makes it ignore SIGINT, and Python would then never raise KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


_server = None  # this test process's CliServer, started at its first command


def cli_server():
    """None where AUGZARR_TEST_PLAIN_PROCESSES=1 asks for every command as a plain process (slower, same results)."""
    global _server
    if _server is None and os.environ.get("AUGZARR_TEST_PLAIN_PROCESSES") != "1":
        from cli_server import CliServer

        _server = CliServer.start()
    return _server


def run_cli(*args: str, env: dict | None = None, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a console script (build-aug, inspect-aug, train, evaluate) as a user would, in a process of its own:
    forked from this test process's CliServer, which has paid for the imports once (tests/cli_server.py), or started
    from the installed script where its environment changes what those imports read. A crash of the interpreter (a
    signal, not an error of ours) prints every thread's Python stack into the failure (PYTHONFAULTHANDLER)."""
    full_env = {**os.environ, "COLUMNS": "200", "PYTHONFAULTHANDLER": "1", **(env or {})}
    server = cli_server()
    if server is not None and server.can_run(args, full_env, env or {}, kwargs):
        result = server.run(args, full_env, **kwargs)
    else:
        result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=full_env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {
        f"{split}/{name}": group[f"{split}/{name}"][:]
        for split in ("train", "val", "test")
        if split in group
        for name in ("images", "labels", "source_index", "copy_index")
    }


def assert_same_store(a: Path, b: Path) -> None:
    arrays_a, arrays_b = store_arrays(a), store_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        assert arrays_a[key].dtype == arrays_b[key].dtype, key
        assert np.array_equal(arrays_a[key], arrays_b[key]), f"{key} differs"


@pytest.fixture(scope="session")
def resumable_case(tmp_path_factory):
    """A build of 600 images x 5 copies in 8-row chunks: long enough to interrupt, with its reference store.
    Read them, never change them: each test builds into a folder of its own."""
    root = tmp_path_factory.mktemp("resumable")
    folder = write_image_folder(root / "imgs", {"a": 200, "b": 200, "c": 200}, size=16)
    args = [
        "--source",
        str(folder),
        "--copies",
        "5",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--workers",
        "2",
        "--quiet",
    ]
    reference = root / "reference.zarr"
    run_cli("build-aug", *args, "--out", str(reference), check=True)
    return args, reference


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> Path:
    """Train from it, never change it: 3 classes of 16x16 images, 2 copies, 8-row chunks (shared by several test files)."""
    root = tmp_path_factory.mktemp("small-store")
    images = write_image_folder(root / "images", {"ant": 12, "bee": 10, "cow": 9}, size=16)
    out = root / "store.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(out),
        "--copies",
        "2",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        check=True,
    )
    return out


@pytest.fixture(scope="session")
def straddling_store(tmp_path_factory) -> Path:
    """Read it, never change it: train 66 rows of 8x8 in 9 chunks of 8, the last holding 2; val 15 rows.
    With batches of 7 (dividing neither), batches straddle windows and an epoch ends on a partial one."""
    root = tmp_path_factory.mktemp("straddling-store")
    write_image_folder(root / "images", {"ant": 10, "bee": 9, "cow": 8}, size=8)
    out = root / "store.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(root / "images"),
        "--out",
        str(out),
        "--copies",
        "2",
        "--chunk-size",
        "8",
        "--val-fraction",
        "0.2",
        "--preview",
        "0",
        "--workers",
        "1",
        check=True,
    )
    return out
