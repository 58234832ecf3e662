"""build-aug end to end: store layout, hold-out, determinism, resume, refusals, errors."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import (
    BIN,
    assert_same_store,
    restore_ctrl_c,
    run_cli,
    store_arrays,
    write_image_folder,
)
from PIL import Image

from augzarr.builder.build import BuildOptions, build_store
from augzarr.errors import UserError
from augzarr.store_format import BUILD_DIR, open_store


def build(source, out, **kwargs):
    return build_store(BuildOptions(source=str(source), out=out, **kwargs))


def test_store_layout_follows_format_v1(cifar_archive, tmp_path):
    path, truth = cifar_archive  # 40 train, 10 test images of 32x32
    out = tmp_path / "s.zarr"
    result = build(path, out, copies=3, val_fraction=0.25, chunk_size=16, workers=1)
    assert result.status == "built"
    root = zarr.open_group(str(out), mode="r")
    attrs = root.attrs
    assert attrs["format"] == "augzarr" and attrs["format_version"] == 1 and attrs["complete"] is True
    assert attrs["class_names"] == truth["names"] and attrs["image_shape"] == [32, 32, 3]
    assert attrs["copies"] == 3 and attrs["include_original"] is True and attrs["seed"] == 0
    assert attrs["source"]["kind"] == "cifar10-pickle" and attrs["source"]["content_hash"].startswith("sha256:")
    assert attrs["policy"]["name"] == "crop-flip" and attrs["policy"]["albumentations"]["transform"]["transforms"]
    assert {"albumentations", "zarr", "numpy"} <= set(attrs["versions"])
    assert not (out / BUILD_DIR).exists()
    n_val = root["val/images"].shape[0]
    n_train_sources = 40 - n_val
    train = root["train"]
    assert train["images"].shape == (n_train_sources * 4, 32, 32, 3) and train["images"].dtype == np.uint8
    assert train["images"].chunks == (16, 32, 32, 3)
    assert (
        train["labels"].dtype == np.uint8
        and train["source_index"].dtype == np.int32
        and train["copy_index"].dtype == np.int16
    )
    # every train source appears once per copy 0..3, and copy 0 is the original pixels
    sources, copies = train["source_index"][:], train["copy_index"][:]
    for k in range(4):
        assert sorted(sources[copies == k]) == sorted(set(sources))
    images = train["images"][:]
    originals = np.flatnonzero(copies == 0)
    assert np.array_equal(images[originals], truth["train"][sources[originals]])
    assert np.array_equal(train["labels"][:], truth["train_labels"][sources])
    augmented = np.flatnonzero(copies > 0)
    changed = [not np.array_equal(images[r], truth["train"][sources[r]]) for r in augmented]
    assert np.mean(changed) > 0.95
    # rows are shuffled: copies of one image are not next to each other
    assert not np.array_equal(sources, np.sort(sources))
    # val and test: originals only, in the source's pixels
    assert (root["val/copy_index"][:] == 0).all() and (root["test/copy_index"][:] == 0).all()
    assert np.array_equal(root["test/images"][:], truth["test"])
    assert np.array_equal(root["val/images"][:], truth["train"][root["val/source_index"][:]])


def test_validation_is_held_out_by_source_and_stratified(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 20, "b": 10, "c": 30}, size=8)
    out = tmp_path / "s.zarr"
    build(folder, out, copies=2, val_fraction=0.2, workers=1, chunk_size=32)
    root = zarr.open_group(str(out), mode="r")
    val_sources = set(root["val/source_index"][:].tolist())
    train_sources = set(root["train/source_index"][:].tolist())
    assert val_sources and not (val_sources & train_sources)  # no copy of a validation image in train
    assert val_sources | train_sources == set(range(60))
    assert np.bincount(root["val/labels"][:], minlength=3).tolist() == [4, 2, 6]


def test_workers_do_not_change_a_single_byte(image_folder, tmp_path):
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    build(image_folder, one, copies=3, workers=1, chunk_size=8)
    build(image_folder, two, copies=3, workers=2, chunk_size=8)
    assert_same_store(one, two)
    chunk_files = sorted(p.relative_to(one) for p in (one / "train" / "images").rglob("*") if p.is_file())
    assert chunk_files
    for rel in chunk_files:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel


def test_seed_changes_the_augmentations(image_folder, tmp_path):
    build(image_folder, tmp_path / "a.zarr", copies=2, seed=0, workers=1)
    build(image_folder, tmp_path / "b.zarr", copies=2, seed=1, workers=1)
    a, b = store_arrays(tmp_path / "a.zarr"), store_arrays(tmp_path / "b.zarr")
    assert not np.array_equal(a["train/images"], b["train/images"])


def test_no_include_original_stores_copies_only(image_folder, tmp_path):
    out = tmp_path / "s.zarr"
    build(image_folder, out, copies=2, include_original=False, workers=1)
    root = zarr.open_group(str(out), mode="r")
    assert set(root["train/copy_index"][:].tolist()) == {1, 2}
    assert root.attrs["include_original"] is False


def test_image_size_resizes_mixed_sizes_and_is_required_for_them(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=16)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "b" / "big.png")
    with pytest.raises(
        UserError, match=r"images differ in size: .*big.png is 24x20, the first is 16x16; pass --image-size"
    ):
        build(folder, tmp_path / "s.zarr", copies=1, workers=1)
    out = tmp_path / "t.zarr"
    build(folder, out, copies=1, workers=1, image_size=12)
    assert zarr.open_group(str(out), mode="r")["train/images"].shape[1:] == (12, 12, 3)


def test_cli_build_previews_and_summary(image_folder, tmp_path):
    out, previews = tmp_path / "s.zarr", tmp_path / "prev"
    result = run_cli(
        "build-aug",
        "--source",
        str(image_folder),
        "--out",
        str(out),
        "--copies",
        "2",
        "--preview",
        "3",
        "--preview-dir",
        str(previews),
        "--val-fraction",
        "0.2",
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1].startswith(f"built {out}: 72 train, 6 val rows (78 computed) in ")
    assert "building" in result.stderr and "images/s" in result.stderr  # the progress bar
    names = sorted(p.name for p in previews.glob("cifar_*.jpeg"))
    root = zarr.open_group(str(out), mode="r")
    first = sorted(set(root["train/source_index"][:].tolist()))[:3]
    assert names == sorted(f"cifar_{s}_{k}.jpeg" for s in first for k in range(3))
    sheet = Image.open(previews / "contact_sheet.png")
    assert sheet.size[0] > 3 * 96 and sheet.size[1] > 3 * 96  # 3 columns, 3 rows of enlarged 16 px images
    # a preview is the stored row, JPEG-encoded
    rows = np.flatnonzero((root["train/source_index"][:] == first[0]) & (root["train/copy_index"][:] == 1))
    stored = root["train/images"][int(rows[0])]
    shown = np.asarray(Image.open(previews / f"cifar_{first[0]}_1.jpeg"))
    assert np.abs(shown.astype(int) - stored.astype(int)).mean() < 6

    quiet = run_cli(
        "build-aug",
        "--source",
        str(image_folder),
        "--out",
        str(tmp_path / "q.zarr"),
        "--copies",
        "1",
        "--preview",
        "0",
        "--preview-dir",
        str(tmp_path / "none"),
        "--quiet",
        check=True,
    )
    assert quiet.stdout == "" and not (tmp_path / "none").exists()

    inspected = run_cli(
        "inspect-aug", "--store", str(out), "--preview", "2", "--preview-dir", str(tmp_path / "again"), check=True
    )
    assert "complete" in inspected.stdout and "crop-flip" in inspected.stdout
    lines = {line.split()[0]: line.split()[1:] for line in inspected.stdout.splitlines() if line.split()}
    assert lines["cat"] == ["24", "2"] and lines["total"] == ["72", "6"]
    assert "ratio" in inspected.stdout
    assert len(list((tmp_path / "again").glob("cifar_*.jpeg"))) == 2 * 3
    as_json = json.loads(run_cli("inspect-aug", "--store", str(out), "--json", check=True).stdout)
    assert as_json["counts"]["train"] == [24, 24, 24] and as_json["copies"] == 2


def test_complete_store_is_kept_unless_overwrite(image_folder, tmp_path):
    out = tmp_path / "s.zarr"
    args = ["build-aug", "--source", str(image_folder), "--out", str(out), "--copies", "2", "--preview", "0"]
    run_cli(*args, check=True)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = run_cli(*args, check=True)
    assert "already complete" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    other = run_cli(*args[:-4], "--copies", "3", "--preview", "0")
    assert other.returncode == 1
    assert "complete store built with other arguments (copies 2 -> 3)" in other.stderr and "--overwrite" in other.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    run_cli(*args[:-4], "--copies", "3", "--preview", "0", "--overwrite", check=True)
    assert zarr.open_group(str(out), mode="r").attrs["copies"] == 3


def test_changed_source_images_are_noticed(image_folder, tmp_path):
    out = tmp_path / "s.zarr"
    build(image_folder, out, copies=1, workers=1)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image_folder / "cat" / "0000.jpg")
    with pytest.raises(UserError, match="built from other source images"):
        build(image_folder, out, copies=1, workers=1)


def test_out_that_is_not_a_store_is_never_touched(image_folder, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    result = run_cli("build-aug", "--source", str(image_folder), "--out", str(precious), "--overwrite")
    assert result.returncode == 1 and "is not an augzarr store" in result.stderr
    assert (precious / "thesis.txt").read_text() == "keep me" and len(list(precious.iterdir())) == 1


def start_build(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "build-aug"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=restore_ctrl_c,
        **kwargs,
    )


def wait_for_chunks(out: Path, at_least: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = list((out / BUILD_DIR / "chunks").rglob("train.*")) if (out / BUILD_DIR / "chunks").is_dir() else []
        if len(done) >= at_least:
            return
        assert process.poll() is None, "the build ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("no chunks appeared")


def test_resume_after_kill_9_is_byte_identical(resumable_case, tmp_path):
    args, reference = resumable_case
    out = tmp_path / "killed.zarr"
    process = start_build([*args, "--out", str(out)], start_new_session=True)
    wait_for_chunks(out, 20, process)
    os.killpg(process.pid, signal.SIGKILL)  # the build and its workers, as an OOM killer or a power cut would
    process.wait()
    done_before = len(
        list((out / BUILD_DIR / "chunks").rglob("[a-z]*.[0-9]*"))
    )  # markers, not the .tmp of one cut short
    inspect = run_cli("inspect-aug", "--store", str(out))
    assert inspect.returncode == 1 and "incomplete" in inspect.stderr and "Traceback" not in inspect.stderr
    resumed = run_cli("build-aug", *[a for a in args if a != "--quiet"], "--out", str(out), check=True)
    assert resumed.stdout.startswith(f"resumed {out}")
    computed = int(resumed.stdout.split("(")[1].split()[0].replace(",", ""))
    total = sum(zarr.open_group(str(out), mode="r")[f"{s}/images"].shape[0] for s in ("train", "val"))
    assert 0 < computed <= total - 8 * done_before  # only the missing chunks were computed
    assert_same_store(out, reference)


def test_ctrl_c_stops_cleanly_and_resumes(resumable_case, tmp_path):
    args, reference = resumable_case
    out = tmp_path / "interrupted.zarr"
    process = start_build([*args, "--out", str(out)])
    wait_for_chunks(out, 10, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert (
        stderr.strip().splitlines()[-1]
        == "build-aug: error: interrupted: run the same command again to resume where it stopped"
    )
    assert "Traceback" not in stderr
    run_cli("build-aug", *args, "--out", str(out), check=True)
    assert_same_store(out, reference)


def test_incomplete_store_with_other_arguments_is_refused(resumable_case, tmp_path):
    args, _ = resumable_case
    out = tmp_path / "s.zarr"
    process = start_build([*args, "--out", str(out)], start_new_session=True)
    wait_for_chunks(out, 5, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    other = run_cli("build-aug", *[a if a != "5" else "4" for a in args], "--out", str(out))
    assert other.returncode == 1 and "unfinished build with other arguments (copies 5 -> 4)" in other.stderr
    with pytest.raises(UserError, match="incomplete"):
        open_store(out)


def set_file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_stops_with_a_message_and_resumes(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 20, "b": 20}, size=16)
    args = ["--source", str(folder), "--copies", "2", "--chunk-size", "64", "--preview", "0", "--quiet"]
    out = tmp_path / "s.zarr"
    # the decoded source (40 x 768 B) fits under 40 KB, an image chunk (64 x 768 B) does not
    full = run_cli("build-aug", *args, "--out", str(out), preexec_fn=set_file_size_limit(40_000))
    assert full.returncode == 1, full.stderr
    assert (
        full.stderr.startswith("build-aug: error: no space left writing")
        and "run the same command again to resume" in full.stderr
    )
    assert len(full.stderr.strip().splitlines()) == 1
    run_cli("build-aug", *args, "--out", str(out), check=True)
    run_cli("build-aug", *args, "--out", str(tmp_path / "reference.zarr"), check=True)
    assert_same_store(out, tmp_path / "reference.zarr")


def test_corrupt_image_is_named_and_the_build_resumes_once_fixed(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 6, "b": 6}, size=16)
    victim = folder / "b" / "0003.jpg"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    out = tmp_path / "s.zarr"
    args = ["build-aug", "--source", str(folder), "--out", str(out), "--copies", "2", "--preview", "0"]
    failed = run_cli(*args)
    assert failed.returncode == 1
    assert (
        failed.stderr.strip().splitlines()[-1]
        == f"build-aug: error: image {victim} is a truncated JPEG: remove it or replace it, or pass --skip-bad to leave it out"
    )
    victim.write_bytes(b"GIF89a not really")
    failed = run_cli(*args)
    assert f"cannot decode image {victim}" in failed.stderr
    victim.write_bytes(good)
    run_cli(*args, check=True)
    open_store(out)


# every option's bad values: tests/test_robustness.py


def test_missing_source_and_unwritable_out(image_folder, tmp_path):
    missing = run_cli("build-aug", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.zarr"))
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    under_file = run_cli("build-aug", "--source", str(image_folder), "--out", str(blocker / "s.zarr"))
    assert under_file.returncode == 1 and len(under_file.stderr.strip().splitlines()) == 1, under_file.stderr
    assert str(blocker) in under_file.stderr
    read_only = run_cli("build-aug", "--source", str(image_folder), "--out", "/proc/augzarr-test.zarr")
    assert read_only.returncode == 1 and len(read_only.stderr.strip().splitlines()) == 1, read_only.stderr
    assert "/proc/augzarr-test.zarr" in read_only.stderr


def test_chunk_files_are_byte_for_byte_what_zarr_writes(image_folder, tmp_path):
    """build-aug writes raw image chunks itself (faster); they must be exactly zarr's own files."""
    out = tmp_path / "s.zarr"
    build(image_folder, out, copies=2, chunk_size=7, workers=1)  # 72 train rows: the last chunk is partial
    ours = zarr.open_group(str(out), mode="r")
    for split in ("train", "val"):
        images = ours[f"{split}/images"]
        theirs = zarr.open_group(str(tmp_path / "zarr.zarr"), mode="a", zarr_format=3).create_array(
            split, shape=images.shape, chunks=images.chunks, dtype="uint8", compressors=None, fill_value=0
        )
        theirs[:] = images[:]
        for c in range(images.cdata_shape[0]):
            key = images.metadata.encode_chunk_key((c, 0, 0, 0))
            assert (out / split / "images" / key).read_bytes() == (tmp_path / "zarr.zarr" / split / key).read_bytes(), (
                split,
                c,
            )
    assert not list(out.rglob("*.tmp"))
