"""The robustness campaign's bad image corpus (issue #4): each odd file is used correctly, or named in one line
and skipped with --skip-bad; hidden files and OS litter are reported, not used. (A file of its own so that the test
processes of make test share the robustness cases.)"""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from conftest import run_cli, write_image_folder
from corpus import CASES, expected_rgb, make_case
from test_robustness import run_without_root_powers

from augzarr.images import DEFAULT_FIT, fit_to, shown
from augzarr.sources import open_source


@pytest.mark.parametrize("case", list(CASES))
def test_each_odd_file_is_used_correctly_or_named_and_skippable(case, tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 4, "b": 4}, size=16)
    odd = make_case(folder / "a", case)
    args = [
        "--source",
        str(folder),
        "--copies",
        "1",
        "--image-size",
        "16",
        "--val-fraction",
        "0",
        "--preview",
        "0",
        "--quiet",
    ]
    result = run_without_root_powers("build-aug", *args, "--out", str(tmp_path / "s.zarr"))
    if CASES[case] == "valid":
        assert result.returncode == 0, result.stderr
        group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
        files = open_source(str(folder)).train.files
        row = np.flatnonzero(
            (group["train/source_index"][:] == files.index(odd)) & (group["train/copy_index"][:] == 0)
        )[0]
        stored = group["train/images"][row].astype(int)
        expected = fit_to(expected_rgb(odd, 16), 16, 16, DEFAULT_FIT).astype(int)  # as a new store fits it
        assert np.abs(stored - expected).mean() < 3, f"{case}: the stored pixels are not the image"
        return
    message = f"build-aug: error: {result.stderr.strip().split('error: ', 1)[-1]}"
    assert result.returncode == 1 and result.stderr.strip() == message, result.stderr  # exactly one line
    assert shown(odd) in result.stderr and "Traceback" not in result.stderr
    skipped = run_without_root_powers("build-aug", *args, "--skip-bad", "--out", str(tmp_path / "t.zarr"))
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped: " in skipped.stderr and shown(odd) in skipped.stderr
    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    assert [entry["file"] for entry in group.attrs["skipped"]] == [shown(odd)]
    summary = run_cli("inspect-aug", "--store", str(tmp_path / "t.zarr"), check=True)
    assert f"skipped      1 bad image (--skip-bad): {shown(odd)}" in summary.stdout
    files = open_source(str(folder)).train.files
    assert sorted(set(group["train/source_index"][:])) == sorted(
        i for i, f in enumerate(files) if f != odd
    )  # no row for it


def test_hidden_files_and_os_litter_are_reported_not_used(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=16)
    for litter in ("a/.DS_Store", "a/Thumbs.db", "b/._b0000.jpg", "notes.txt"):
        (folder / litter).write_bytes(b"\0\1junk")
    (folder / "b" / "more").mkdir()
    os.symlink(folder / "a", folder / "b" / "more" / "loop")  # a folder link: never followed
    result = run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--copies",
        "1",
        "--val-fraction",
        "0",
        "--preview",
        "0",
        "--out",
        str(tmp_path / "s.zarr"),
        check=True,
    )
    for litter in (".DS_Store", "Thumbs.db", "._b0000.jpg", "notes.txt", "loop"):
        assert litter in result.stderr
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["train/images"].shape[0] == 12  # 6 images x 2 rows
