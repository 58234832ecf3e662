"""Issue #9 points 3 and 11: every array of a store is checked when a reader opens it, and small
splits are not padded to a full chunk. Stores are built for real, then damaged on disk."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest
import zarr
from conftest import run_cli, write_cifar_archive, write_image_folder

from augzarr.store_format import chunk_key, crc32_hex

ARRAYS = ("labels", "source_index", "copy_index", "images")
SPLITS = ("train", "val", "test")
DAMAGES = ("delete", "truncate", "flip")


@pytest.fixture(scope="module")
def cifar_store(tmp_path_factory) -> Path:
    """A CIFAR archive source (so a test split): train ~10 chunks of 16 rows, val ~12 rows, test 12, 32x32."""
    root = tmp_path_factory.mktemp("cifar-store")
    archive = root / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, n_batches=2, per_batch=30, n_test=12)
    out = root / "s.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(archive),
        "--copies",
        "2",
        "--chunk-size",
        "16",
        "--preview",
        "0",
        "--workers",
        "1",
        "--quiet",
        "--out",
        str(out),
        check=True,
    )
    run_cli("inspect-aug", "--store", str(out), "--verify", check=True)
    return out


@pytest.fixture(scope="module")
def finished_run(cifar_store, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    run_cli(
        "train",
        "--store",
        str(cifar_store),
        "--epochs",
        "1",
        "--model",
        "shallow",
        "--batch-size",
        "32",
        "--quiet",
        "--out",
        str(run_dir),
        check=True,
    )
    return run_dir


def copy_of(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(store, copy)
    return copy


def damage(store: Path, key: str, how: str) -> Path:
    """Damage one chunk file of array `key` (a middle one where there are several); return it."""
    array = zarr.open_array(str(store), path=key, mode="r")
    victim = store / chunk_key(array, array.cdata_shape[0] // 2)
    data = victim.read_bytes()
    if how == "delete":
        victim.unlink()
    elif how == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(flipped))
    return victim


def edit_attrs(store: Path, edit) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    edit(meta["attributes"])
    (store / "zarr.json").write_text(json.dumps(meta))


def assert_one_line_refusal(result, *expected: str) -> str:
    line = result.stderr.strip()
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(line.splitlines()) == 1, result.stderr
    for text in expected:
        assert text in line, (text, line)
    return line


# -- damaged chunks of every array ----------------------------------------------------------------

EXPECTED = {
    # (array kind, damage) -> what the one line says
    ("row", "delete"): "is missing",
    ("row", "truncate"): "cannot be decoded",
    ("images", "delete"): "is missing",
    ("images", "truncate"): "bytes, not",
}


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", ARRAYS)
@pytest.mark.parametrize("split", SPLITS)
def test_every_damaged_chunk_of_every_array_is_refused_by_inspect(split, name, how, cifar_store, tmp_path):
    store = copy_of(cifar_store, tmp_path)
    victim = damage(store, f"{split}/{name}", how)
    inspect = run_cli("inspect-aug", "--store", str(store))
    if name == "images" or how == "flip":  # --verify shares the checks; run it where it differs
        verify = run_cli("inspect-aug", "--store", str(store), "--verify")
        assert verify.returncode == 1 and "Traceback" not in verify.stderr
        assert str(victim) in verify.stderr or f"{split}/{name}" in verify.stderr
    if name == "images" and how == "flip":
        # documented: opening stats image chunks without reading them; --verify re-reads them
        assert inspect.returncode == 0, inspect.stderr
        assert f"({victim}) does not match its checksum from the build" in verify.stderr
        return
    line = assert_one_line_refusal(inspect, f"store {store} is damaged", "rebuild it with build-aug --overwrite")
    if how == "flip":  # a zstd chunk with a changed byte either fails to decode or decodes to other values
        assert (
            f"chunk file {victim} cannot be decoded" in line
            or f"{split}/{name} ({victim.parent.parent}) does not match its checksum" in line
        )
    else:
        assert str(victim) in line and EXPECTED["images" if name == "images" else "row", how] in line


@pytest.mark.parametrize(
    "key, how",
    [
        ("test/labels", "truncate"),  # zstd's RuntimeError, once a traceback
        ("train/images", "delete"),
    ],
)
def test_train_and_evaluate_refuse_a_damaged_array_before_any_work(key, how, cifar_store, finished_run, tmp_path):
    """Every reader goes through store.open_store, which inspect-aug's cases above cover for all arrays."""
    store = copy_of(cifar_store, tmp_path)
    victim = damage(store, key, how)
    train = run_cli(
        "train", "--store", str(store), "--epochs", "1", "--model", "shallow", "--out", str(tmp_path / "run")
    )
    line = assert_one_line_refusal(train, f"train: error: store {store} is damaged")
    assert str(victim) in line or key in line
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    evaluate = run_cli("evaluate", "--model", str(finished_run), "--store", str(store))
    assert assert_one_line_refusal(evaluate, f"evaluate: error: store {store} is damaged") == line.replace(
        "train:", "evaluate:", 1
    )


def test_damaged_array_metadata_is_refused(cifar_store, tmp_path):
    for key in ("train/labels", "val", "test/images"):
        store = copy_of(cifar_store, tmp_path / key.replace("/", "-"))
        meta = store / key / "zarr.json"
        meta.write_bytes(meta.read_bytes()[:50])
        inspect = run_cli("inspect-aug", "--store", str(store))
        assert_one_line_refusal(inspect, f"{meta} cannot be read")


def test_an_array_and_a_group_swapped_are_refused_naming_them(cifar_store, tmp_path):
    """A split that is an array, or an array that is a group (an edited or mixed-up zarr.json), is damage, told in one
    line, not an attribute error from deep in the checks."""
    for key, node_type in (("train/labels", "group"), ("test/images", "group"), ("val", "array")):
        store = copy_of(cifar_store, tmp_path / key.replace("/", "-"))
        group_meta = {"zarr_format": 3, "node_type": "group", "attributes": {}}
        meta = store / key / "zarr.json"
        meta.write_text(
            json.dumps(
                group_meta if node_type == "group" else json.loads((store / "train/labels/zarr.json").read_text())
            )
        )
        inspect = run_cli("inspect-aug", "--store", str(store))
        assert_one_line_refusal(
            inspect, f"store {store} is damaged", f"{key} is a{'n' if node_type == 'array' else ''} {node_type}"
        )


# -- attributes that disagree with the data -----------------------------------------------------------


def with_names(names):
    return lambda attrs: attrs.update(class_names=names(attrs["class_names"]))


@pytest.mark.parametrize(
    "edit, message",
    [
        (with_names(lambda n: n[:5]), "differ from those it was built with"),  # fewer names than labels
        (with_names(lambda n: ["plane", *n[1:]]), "differ from those it was built with"),  # renamed
        (with_names(lambda n: n[::-1]), "differ from those it was built with"),  # reordered
        (with_names(lambda n: [*n, "extra"]), "differ from those it was built with"),  # one more
        (with_names(lambda n: [n[0], n[0], *n[2:]]), "repeats a name"),
        (with_names(lambda n: ["", *n[1:]]), "is not a list of non-empty names"),
        (lambda attrs: attrs.pop("class_names"), "is not a list of non-empty names"),
        # both copies edited alike: caught where labels fall beyond the names, in every split
        (
            lambda attrs: [
                attrs.update(class_names=attrs["class_names"][:5]),
                attrs["identity"].update(class_names=attrs["class_names"]),
            ],
            "labels go up to",
        ),
    ],
)
def test_edited_class_names_are_refused(edit, message, cifar_store, tmp_path):
    store = copy_of(cifar_store, tmp_path)
    edit_attrs(store, edit)
    assert_one_line_refusal(
        run_cli("inspect-aug", "--store", str(store)),
        "class_names" if "labels" not in message else "test/labels",
        message,
    )


def test_labels_outside_the_classes_in_the_test_split_are_refused_before_training(cifar_store, finished_run, tmp_path):
    """Labels written wrong with a matching checksum (a bad source once did this): once an IndexError
    after a whole training run, now refused when the store is opened."""
    store = copy_of(cifar_store, tmp_path)
    labels = zarr.open_array(str(store), path="test/labels", mode="r+")
    data = labels[:]
    data[3] = 10
    labels[:] = data
    edit_attrs(store, lambda attrs: attrs["array_crc32"].update({"test/labels": crc32_hex(data)}))
    expected = "test/labels go up to 10, but the attributes name 10 classes"
    assert_one_line_refusal(run_cli("inspect-aug", "--store", str(store)), expected)
    train = run_cli(
        "train", "--store", str(store), "--epochs", "1", "--model", "shallow", "--out", str(tmp_path / "run")
    )
    assert_one_line_refusal(train, expected)
    assert not (tmp_path / "run").exists()
    assert_one_line_refusal(run_cli("evaluate", "--model", str(finished_run), "--store", str(store)), expected)


def rewrite_batch(archive: Path, name: str, edit) -> None:
    """Edit one pickled batch of a CIFAR archive written by write_cifar_archive."""
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    key = f"cifar-10-batches-py/{name}"
    batch = pickle.loads(members[key], encoding="bytes")
    edit(batch)
    members[key] = pickle.dumps(batch, protocol=4)
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("batch, label", [("test_batch", 10), ("test_batch", -1), ("data_batch_2", 10)])
def test_a_cifar_source_with_labels_outside_its_classes_is_refused_at_build_time(batch, label, tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(archive)
    rewrite_batch(archive, batch, lambda b: b[b"labels"].__setitem__(1, label))
    result = run_cli("build-aug", "--source", str(archive), "--preview", "0", "--out", str(tmp_path / "s.zarr"))
    assert_one_line_refusal(
        result, f"--source {archive}: {batch} has label {label}, outside the 10 classes of batches.meta"
    )
    assert not (tmp_path / "s.zarr").exists()


# -- small splits are not padded -------------------------------------------------------------------


def test_each_split_is_chunked_to_at_most_its_own_rows(tmp_path):
    """300 images of 32x32: train 240 x 4 rows in one default 1024-row chunk size; val's 60 rows take 60 rows
    of bytes, not a 3 MiB chunk of 1024."""
    folder = write_image_folder(tmp_path / "images", {"a": 100, "b": 100, "c": 100}, size=32)
    out = tmp_path / "s.zarr"
    build = run_cli(
        "build-aug", "--source", str(folder), "--copies", "3", "--preview", "0", "--out", str(out), check=True
    )
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["chunk_rows"] == 1024  # as requested
    row_bytes = 32 * 32 * 3
    for split, rows, chunk_rows in (("train", 960, 960), ("val", 60, 60)):
        images = group[f"{split}/images"]
        assert images.shape[0] == rows and images.chunks[0] == chunk_rows
        assert (out / chunk_key(images, 0)).stat().st_size == rows * row_bytes
    ratio = float(build.stdout.rsplit("compression ", 1)[1].split("x")[0])
    assert ratio > 0.9, build.stdout  # was 0.06x-like with a padded val chunk
    summary = run_cli("inspect-aug", "--store", str(out), check=True).stdout
    assert "1,024 rows per chunk, train 960, val 60" in summary
    assert "all 2 image chunks" in run_cli("inspect-aug", "--store", str(out), "--verify", check=True).stdout


def test_a_split_larger_than_a_chunk_keeps_the_requested_chunk_rows(cifar_store):
    group = zarr.open_group(str(cifar_store), mode="r")
    assert group["val/images"].shape[0] < 16  # about 20% of 60 sources
    assert {s: group[f"{s}/images"].chunks[0] for s in SPLITS} == {
        "train": 16,
        "val": group["val/images"].shape[0],
        "test": 12,
    }
    assert group["train/images"].shape[0] > 16
    last = group["train/images"].cdata_shape[0] - 1
    assert (
        cifar_store / chunk_key(group["train/images"], last)
    ).stat().st_size == 16 * 32 * 32 * 3  # one partial chunk, full size


def test_raw_chunk_reads_give_zarrs_rows_and_refuse_a_chunk_cut_short_after_open(cifar_store, tmp_path):
    """The stream reads raw image chunks straight from storage; the rows must be zarr's own,
    the last partial chunk included, and a chunk cut short or removed since the store was opened is named."""
    import numpy as np

    from augzarr.errors import UserError
    from augzarr.store_format import is_raw_layout, open_store, read_chunks

    store = tmp_path / "s.zarr"
    shutil.copytree(cifar_store, store)
    opened = open_store(store)
    images = opened.images("train")
    assert is_raw_layout(images) and not is_raw_layout(opened.group["train/labels"])
    for chunk in range(images.cdata_shape[0]):
        for rows in (images.chunks[0], 5):  # a whole chunk, and the first rows of one (as of a last, partial chunk)
            start = chunk * images.chunks[0]
            expected = images[start : start + rows]
            got = np.empty_like(expected)
            read_chunks(opened.storage, images, [chunk], [got])
            assert np.array_equal(got, expected), (chunk, rows)
    victim = store / chunk_key(images, 0)
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(UserError, match=f"chunk file {victim} has 1,000 bytes"):
        read_chunks(
            opened.storage, images, [0], [np.empty((5, *images.shape[1:]), np.uint8)]
        )  # a short read is refused too
    victim.unlink()
    with pytest.raises(UserError, match=f"chunk file {victim} is missing"):
        read_chunks(opened.storage, images, [0], [np.empty((images.chunks[0], *images.shape[1:]), np.uint8)])


# -- issue 21: what a store records of its training files, and messages that stay short ---------------


def test_a_store_records_the_digests_of_exactly_its_training_files(tmp_path):
    """Split layout: train/ minus the images held out for validation; never test/'s files. In train/'s
    attributes, so the root's attributes (every reader's) and the images are as before."""
    import base64
    import hashlib

    from augzarr.sources.image_folder import scan_image_folder

    photos = tmp_path / "photos"
    write_image_folder(photos / "train", {"cat": 6, "dog": 6, "emu": 6}, size=8)
    write_image_folder(photos / "test", {"cat": 2, "dog": 2, "emu": 2}, size=8, seed=5)
    out = tmp_path / "s.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(photos),
        "--copies",
        "1",
        "--preview",
        "0",
        "--workers",
        "1",
        "--quiet",
        "--out",
        str(out),
        check=True,
    )
    group = zarr.open_group(str(out), mode="r")
    files = scan_image_folder(photos, None).train.files
    trained = sorted(set(group["train/source_index"][:].tolist()))
    assert 0 < len(trained) < len(files)  # some held out for validation
    key = lambda file: hashlib.sha256(file.read_bytes()).digest()[:8]
    raw = base64.b64decode(group["train"].attrs["file_digests"])
    recorded = {raw[i : i + 8] for i in range(0, len(raw), 8)}
    assert recorded == {key(files[i]) for i in trained}
    assert not recorded & {key(f) for f in (photos / "test").rglob("*.jpg")}
    assert "file_digests" not in group.attrs and "file_digests" not in group["val"].attrs
    from augzarr.storage import open_storage
    from augzarr.store_format import train_file_digests

    assert train_file_digests(open_storage(out)) == recorded
    arrays = tmp_path / "arrays.zarr"  # a source of arrays has no files to record
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, n_batches=1, per_batch=20, n_test=4)
    run_cli(
        "build-aug",
        "--source",
        str(archive),
        "--copies",
        "0",
        "--preview",
        "0",
        "--quiet",
        "--out",
        str(arrays),
        check=True,
    )
    assert train_file_digests(open_storage(arrays)) is None


def test_a_plain_file_given_as_a_store_is_called_a_file(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("not a store")
    for command in (
        ["inspect-aug", "--store", str(plain)],
        ["train", "--store", str(plain), "--out", str(tmp_path / "run")],
    ):
        line = assert_one_line_refusal(run_cli(*command), f"{plain} is a file, not an augzarr store")
        assert "zarr.json" not in line
    assert not (tmp_path / "run").exists()


def test_verify_counts_its_problems_and_lists_only_the_first_ones(tmp_path):
    from augzarr.wording import SHOWN_LINES

    folder = write_image_folder(tmp_path / "imgs", {"a": 12, "b": 12}, size=8)
    out = tmp_path / "s.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--copies",
        "1",
        "--chunk-size",
        "1",
        "--preview",
        "0",
        "--quiet",
        "--out",
        str(out),
        check=True,
    )
    images = zarr.open_array(str(out), path="train/images", mode="r")
    chunks = [out / chunk_key(images, c) for c in range(images.cdata_shape[0])]
    assert len(chunks) > SHOWN_LINES
    for number, chunk in enumerate(chunks):
        data = bytearray(chunk.read_bytes())
        data[0] ^= 0xFF
        chunk.write_bytes(bytes(data))
        if number == 0:
            one = run_cli("inspect-aug", "--store", str(out), "--verify")
            assert one.returncode == 1 and one.stderr.strip().splitlines()[-1].endswith(
                "failed verification (1 problem above); rebuild it with build-aug --overwrite"
            ), one.stderr
    every = run_cli("inspect-aug", "--store", str(out), "--verify")
    lines = every.stderr.strip().splitlines()
    assert (
        every.returncode == 1
        and len(lines) == SHOWN_LINES + 1
        and all(line.startswith("damaged: ") for line in lines[:-1])
    )
    assert lines[-1].endswith(
        f"failed verification ({len(chunks)} problems, the first {SHOWN_LINES} above); rebuild it with build-aug --overwrite"
    )
