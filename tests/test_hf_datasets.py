"""Issue #22 point 2: a source kind added as one module (augzarr/sources/hf_datasets.py): a folder written by Hugging
Face datasets' save_to_disk, read with pyarrow alone. The tests write real save_to_disk folders with `datasets`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from conftest import assert_same_store, run_cli, write_image_folder

datasets = pytest.importorskip("datasets")

CLASSES = ["ant", "bee", "cow"]


def saved(
    root: Path,
    splits: dict[str, list[tuple[bytes, int]]],
    class_names: list[str] = CLASSES,
    num_shards: int = 1,
    image: str = "image",
    label: str = "label",
    extra: dict | None = None,
) -> Path:
    """A DatasetDict of these splits (name -> (encoded image, label) rows) saved to `root`; one split named "" saves
    a Dataset alone."""
    features = datasets.Features(
        {image: datasets.Image(), label: datasets.ClassLabel(names=class_names), **(extra or {})}
    )

    def dataset(rows):
        columns = {image: [{"bytes": data, "path": None} for data, _ in rows], label: [lab for _, lab in rows]}
        columns.update({name: [0] * len(rows) for name in (extra or {})})
        return datasets.Dataset.from_dict(columns, features=features)

    if list(splits) == [""]:
        dataset(splits[""]).save_to_disk(str(root), num_shards=num_shards)
    else:
        datasets.DatasetDict({name: dataset(rows) for name, rows in splits.items()}).save_to_disk(
            str(root), num_shards={name: max(1, min(num_shards, len(rows))) for name, rows in splits.items()}
        )
    return root


def rows_of(folder: Path, image_size=None) -> dict[str, list[tuple[bytes, int]]]:
    """An image folder's splits as build-aug reads them (its order), as rows for saved(): the same bytes and labels."""
    from augzarr.sources import open_source

    source = open_source(str(folder), image_size)
    names = {"train": "train", "test": "test", "val": "validation"}
    return {
        names[name]: [(file.read_bytes(), int(label)) for file, label in zip(split.files, split.labels)]
        for name, split in source.splits().items()
    }


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict:
    """An image folder in the split layout and a DatasetDict saved with its files' bytes, row for row, in three shards."""
    root = tmp_path_factory.mktemp("hf")
    folder = root / "images"
    write_image_folder(folder / "train", dict.fromkeys(CLASSES, 9), size=16)
    write_image_folder(folder / "test", dict.fromkeys(CLASSES, 3), size=16, seed=1, fmt="png")
    write_image_folder(folder / "validation", dict.fromkeys(CLASSES, 2), size=16, seed=2)
    return {"folder": folder, "saved": saved(root / "saved", rows_of(folder), num_shards=3), "root": root}


BUILD = ["--copies", "2", "--chunk-size", "8", "--preview", "0", "--quiet"]


def test_a_saved_dataset_dict_builds_the_stores_bytes_of_the_image_folder_it_was_made_from(twins, tmp_path):
    """Without `datasets` importable in build-aug or its workers: pyarrow reads the folder."""
    assert sorted(p.name for p in (twins["saved"] / "train").glob("*.arrow")) == [
        f"data-0000{i}-of-00003.arrow" for i in range(3)
    ]
    out, reference = tmp_path / "hf.zarr", tmp_path / "folder.zarr"
    blocked = "import sys; sys.modules['datasets'] = None; from augzarr.builder.cli import main_build; main_build()"
    built = subprocess.run(
        [sys.executable, "-c", blocked, "--source", str(twins["saved"]), "--out", str(out), *BUILD, "--workers", "2"],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    run_cli("build-aug", "--source", str(twins["folder"]), "--out", str(reference), *BUILD, check=True)
    assert_same_store(out, reference)  # pixels, labels, rows: the same images in the same order
    attrs, folder_attrs = (zarr.open_group(str(p), mode="r").attrs.asdict() for p in (out, reference))
    assert attrs["source"]["kind"] == "hf-datasets" and attrs["source"]["location"] == str(twins["saved"])
    assert attrs["source"]["layout"] == "split (train, validation, test)"
    assert (attrs["source"]["train_count"], attrs["source"]["val_count"], attrs["source"]["test_count"]) == (27, 6, 9)
    assert (
        attrs["class_names"] == CLASSES and attrs["val_fraction"] is None
    )  # its own validation split: nothing held out
    assert (
        attrs["source"]["content_hash"].startswith("sha256:")
        and attrs["source"]["content_hash"] != folder_attrs["source"]["content_hash"]
    )
    # each image's digest is its bytes', as an image file's: the record evaluate --source looks training images up in
    digests = [zarr.open_group(str(p), mode="r")["train"].attrs["file_digests"] for p in (out, reference)]
    assert digests[0] == digests[1]
    summary = run_cli("inspect-aug", "--store", str(out), check=True).stdout
    assert "hf-datasets" in summary and "split (train, validation, test)" in summary


def test_a_saved_dataset_builds_the_same_bytes_whatever_the_workers_and_is_recognised_when_built_again(twins, tmp_path):
    single = saved(tmp_path / "single", {"": rows_of(twins["folder"])["train"]}, num_shards=2)
    args = ["build-aug", "--source", str(single), *BUILD, "--policy", "randaugment"]
    run_cli(*args, "--workers", "1", "--out", str(tmp_path / "one.zarr"), check=True)
    run_cli(*args, "--workers", "3", "--out", str(tmp_path / "three.zarr"), check=True)
    assert_same_store(tmp_path / "one.zarr", tmp_path / "three.zarr")
    attrs = zarr.open_group(str(tmp_path / "one.zarr"), mode="r").attrs.asdict()
    assert attrs["source"]["layout"] == "dataset" and attrs["splits"] == [
        "train",
        "val",
    ]  # one Dataset: the training split
    again = run_cli(
        *[a for a in args if a != "--quiet"], "--workers", "1", "--out", str(tmp_path / "one.zarr"), check=True
    )
    assert "already complete with these arguments" in again.stdout
    # another image in one row: the content hash sees it
    rows = rows_of(twins["folder"])["train"]
    rows[5] = (rows[6][0], rows[5][1])
    shutil.rmtree(single)
    saved(single, {"": rows}, num_shards=2)
    refused = run_cli(*args, "--workers", "1", "--out", str(tmp_path / "one.zarr"))
    assert refused.returncode == 1 and "was built from other source images" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_a_saved_dataset_builds_on_a_dask_cluster_as_here(twins, tmp_path):
    pytest.importorskip("distributed")
    args = ["build-aug", "--source", str(twins["saved"]), *BUILD]
    cluster = run_cli(
        *args, "--scheduler", "local", "--workers", "2", "--out", str(tmp_path / "cluster.zarr"), check=True
    )
    assert "cannot read" not in cluster.stdout  # the workers read the rows of the .arrow files themselves
    run_cli(*args, "--workers", "1", "--out", str(tmp_path / "here.zarr"), check=True)
    assert_same_store(tmp_path / "cluster.zarr", tmp_path / "here.zarr")


def refused(source: Path, out: Path) -> str:
    result = run_cli("build-aug", "--source", str(source), "--out", str(out), *BUILD)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()  # refused before any folder was made
    return lines[0]


def test_a_saved_dataset_without_an_image_or_a_class_label_column_is_one_line_saying_how_to_make_one(twins, tmp_path):
    rows = rows_of(twins["folder"])["train"][:6]
    no_labels = tmp_path / "no-labels"
    datasets.Dataset.from_dict(
        {"img": [{"bytes": b, "path": None} for b, _ in rows], "label": [lab for _, lab in rows]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}),
    ).save_to_disk(str(no_labels))
    line = refused(no_labels, tmp_path / "a.zarr")
    assert line == (
        f"build-aug: error: --source {no_labels}: no class-label column (a datasets.ClassLabel feature) among its columns "
        "img (Image), label (Value); make one with dataset.class_encode_column(NAME) and save it again"
    )
    no_images = tmp_path / "no-images"
    datasets.Dataset.from_dict(
        {"path": [f"{i}.jpg" for i in range(6)], "label": [lab for _, lab in rows]},
        features=datasets.Features({"path": datasets.Value("string"), "label": datasets.ClassLabel(names=CLASSES)}),
    ).save_to_disk(str(no_images))
    line = refused(no_images, tmp_path / "b.zarr")
    assert "no image column (a datasets.Image feature) among its columns path (Value), label (ClassLabel)" in line
    assert line.endswith("make one with dataset.cast_column(NAME, datasets.Image()) and save it again")
    two_labels = saved(tmp_path / "two-labels", {"": rows}, extra={"coarse": datasets.ClassLabel(names=["x", "y"])})
    line = refused(two_labels, tmp_path / "c.zarr")
    assert (
        "2 class-label columns (label, coarse); augzarr reads one: drop the others with dataset.remove_columns" in line
    )


def test_a_corrupt_arrow_file_and_an_unlabelled_row_are_one_line_naming_them(twins, tmp_path):
    rows = rows_of(twins["folder"])["train"][:6]
    damaged = saved(tmp_path / "damaged", {"train": rows, "test": rows[:3]})
    arrow = damaged / "test" / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:200])  # cut short, as a copy interrupted
    line = refused(damaged, tmp_path / "a.zarr")
    assert line.startswith(
        f"build-aug: error: --source {damaged}: test/data-00000-of-00001.arrow cannot be read as an Arrow file ("
    )
    assert line.endswith("save the dataset again with save_to_disk")
    unlabelled = saved(tmp_path / "unlabelled", {"": [*rows[:4], (rows[4][0], -1), rows[5]]})
    line = refused(unlabelled, tmp_path / "b.zarr")
    assert f"--source {unlabelled}: row 4 of data-00000-of-00001.arrow has label -1, outside its 3 classes" in line
    assert line.endswith("drop the unlabelled rows (dataset.filter) and save it again")
    no_train = saved(tmp_path / "no-train", {"test": rows, "extra": rows})
    line = refused(no_train, tmp_path / "c.zarr")
    assert "its splits (test, extra) have no train split" in line
    empty_test = saved(tmp_path / "empty-test", {"train": rows, "test": []})
    line = refused(empty_test, tmp_path / "d.zarr")
    assert line.endswith(
        f"--source {empty_test}: its split 'test' has no rows; leave out an empty split (DatasetDict.pop) and save it again"
    )


def test_without_pyarrow_a_saved_dataset_is_refused_naming_the_extra(twins, tmp_path):
    hidden = "import sys; sys.modules['pyarrow'] = None; from augzarr.builder.cli import main_build; main_build()"
    out = tmp_path / "s.zarr"
    result = subprocess.run(
        [sys.executable, "-c", hidden, "--source", str(twins["saved"]), "--out", str(out), *BUILD],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.strip() == (
        f"build-aug: error: --source {twins['saved']} is a folder saved by Hugging Face datasets: "
        "reading it needs pyarrow: pip install 'augzarr[hf]'"
    )
    assert not out.exists()


def test_splits_other_than_train_test_and_validation_are_reported_and_not_used(twins, tmp_path):
    rows = rows_of(twins["folder"])["train"]
    folder = saved(tmp_path / "extra-split", {"train": rows, "unsupervised": rows[:4]})
    built = run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--out",
        str(tmp_path / "s.zarr"),
        "--copies",
        "1",
        "--preview",
        "0",
        check=True,
    )
    assert (
        f"warning: not used: {folder / 'unsupervised'}: split 'unsupervised', not train, test or validation: not used"
        in built.stderr
    )
    attrs = zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs.asdict()
    assert attrs["source"]["layout"] == "split (train)" and len(attrs["source"]["ignored"]) == 1


@pytest.mark.slow
def test_evaluate_on_a_saved_dataset_counts_the_training_images_by_content(twins, tmp_path):
    """A model trained on the image folder's store, evaluated on the saved dataset of the same bytes: its test split
    holds none of the training images; a dataset holding training images is named as such."""
    store, run = tmp_path / "s.zarr", tmp_path / "run"
    run_cli("build-aug", "--source", str(twins["folder"]), "--out", str(store), *BUILD, check=True)
    run_cli(
        "train",
        "--store",
        str(store),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--model",
        "shallow",
        check=True,
    )
    held_out = run_cli(
        "evaluate", "--model", str(run), "--source", str(twins["saved"]), "--json", str(tmp_path / "e.json"), check=True
    )
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["data"] == f"{twins['saved']} (test/ part)" and result["count"] == 9
    assert (
        result["training_images"]["count"] == 0
        and result["training_source"] is False
        and "warning" not in held_out.stderr
    )
    seen = saved(tmp_path / "seen", {"": rows_of(twins["folder"])["train"][:5]})
    warned = run_cli(
        "evaluate", "--model", str(run), "--source", str(seen), "--json", str(tmp_path / "f.json"), check=True
    )
    assert f"warning: --source {seen}: 5 of its 5 images were in the model's training data" in warned.stderr, (
        warned.stderr
    )
    mistakes = result["confidently_wrong"] + json.loads((tmp_path / "f.json").read_text())["confidently_wrong"]
    assert all(
        m["file"].startswith("row ") and ".arrow" in m["file"] for m in mistakes
    )  # each named by its row of its file
