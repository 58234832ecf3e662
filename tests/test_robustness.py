"""The robustness campaign's cases (issue #4): concurrent misuse, corrupted stores, bad images, bad options."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from builder.store import BUILD_DIR
from conftest import assert_same_store, run_cli
from test_build import start_build, wait_for_chunks


def test_a_second_build_into_the_same_store_refuses_and_the_lock_dies_with_the_first(resumable_case, tmp_path):
    args, reference = resumable_case
    out = tmp_path / "s.zarr"
    first = start_build([*args, "--out", str(out)], start_new_session=True)
    wait_for_chunks(out, 5, first)
    os.killpg(first.pid, signal.SIGSTOP)  # hold the first build mid-way (a suspended laptop), lock and all
    second = run_cli("build-aug", *args, "--out", str(out))
    assert second.returncode == 1
    assert second.stderr.strip() == f"build-aug: error: another build-aug is writing {out} right now: wait for it to finish, or stop it, then run this again"
    assert first.poll() is None  # the first build is untouched

    train = run_cli("train", "--store", str(out), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert train.returncode == 1 and "incomplete" in train.stderr and not (tmp_path / "run").exists()

    os.kill(first.pid, signal.SIGKILL)  # the main process only: its workers must not keep the lock
    first.wait()
    try:
        run_cli("build-aug", *args, "--out", str(out), check=True)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # orphaned workers, if any
    assert not (out / BUILD_DIR).exists()
    assert_same_store(out, reference)


# -- corrupted stores ---------------------------------------------------------------------------------

@pytest.fixture
def small_store(image_folder, tmp_path) -> Path:
    out = tmp_path / "s.zarr"
    run_cli("build-aug", "--source", str(image_folder), "--copies", "2", "--chunk-size", "8", "--preview", "0", "--quiet", "--out", str(out), check=True)
    verified = run_cli("inspect-aug", "--store", str(out), "--verify", check=True)
    assert "all 10 image chunks" in verified.stdout  # train: 24 sources x 3 rows = 9 chunks of 8; val: 6 rows, 1 chunk
    return out


def chunk_file(store: Path, split: str, chunk: int) -> Path:
    return store / split / "images" / "c" / str(chunk) / "0" / "0" / "0"


def edit_attrs(store: Path, **changes) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"].update(changes)
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    ("delete", "is missing"),
    ("truncate", "has 3,000 bytes, not 6,144"),
])
def test_missing_or_truncated_chunks_are_refused_by_every_reader(damage, message, small_store, tmp_path):
    victim = chunk_file(small_store, "train", 3)
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:3000])
    for args in (["inspect-aug", "--store", str(small_store)], ["inspect-aug", "--store", str(small_store), "--verify"],
                 ["train", "--store", str(small_store), "--epochs", "1", "--out", str(tmp_path / "run")]):
        result = run_cli(*args)
        assert result.returncode == 1, args
        assert str(victim) in result.stderr and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_verify_finds_a_flipped_byte_that_only_checksums_can_see(small_store):
    victim = chunk_file(small_store, "val", 0)
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert run_cli("inspect-aug", "--store", str(small_store)).returncode == 0  # same size: the cheap check passes
    result = run_cli("inspect-aug", "--store", str(small_store), "--verify")
    assert result.returncode == 1
    assert f"val chunk 0 ({victim}) does not match its checksum from the build" in result.stderr


def test_edited_attributes_are_detected(small_store, tmp_path):
    edit_attrs(small_store, image_shape=[32, 32, 3])
    result = run_cli("train", "--store", str(small_store), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert result.returncode == 1 and "train/images holds (16, 16, 3) images but the attributes say (32, 32, 3)" in result.stderr
    edit_attrs(small_store, image_shape=[16, 16, 3], class_names=["cat", "dog"])
    verify = run_cli("inspect-aug", "--store", str(small_store), "--verify")
    assert verify.returncode == 1 and "labels go up to 2, but the attributes name 2 classes" in verify.stderr
    edit_attrs(small_store, format_version=7)
    newer = run_cli("inspect-aug", "--store", str(small_store))
    assert newer.returncode == 1 and "format version 7, newer than this augzarr reads (1): upgrade augzarr" in newer.stderr
