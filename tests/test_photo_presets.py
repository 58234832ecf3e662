"""Issue #24 point 2: the photo presets, and their copies cut from the source staged above the stored size
(build-aug --stage-scale), while stores of the other presets keep their bytes and identity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from conftest import BIN, REPO, assert_same_store, run_cli, smooth_image, write_image_folder
from PIL import Image

import augzarr
from augzarr.errors import OptionError, UserError
from augzarr.store_format import BUILD_DIR

STORED = 16  # the stored size of the checkerboard stores: their sources are 4x that


def checkerboards(root: Path, per_class: int = 4) -> Path:
    """Photos of 64x64 pixels, four times the stored 16x16, each a black and white checkerboard of 2-pixel squares:
    detail finer than the stored size can hold. Fitted to 16x16 (each pixel the mean of a 4x4 block) the originals
    are flat grey; staged at 2x (32x32) they are a checkerboard of 1-pixel squares, which a crop of a quarter of the
    image or less keeps at the stored size."""
    y, x = np.mgrid[: 4 * STORED, : 4 * STORED]
    board = (((y // 2 + x // 2) % 2) * 255).astype(np.uint8)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.roll(board, 2 * i, axis=1)).convert("RGB").save(root / name / f"{i}.png")
    return root


def build(source: Path, out: Path, **options) -> augzarr.Store:
    defaults = {"image_size": STORED, "copies": 6, "policy": "photo", "progress": False}
    return augzarr.build(source, out, **{**defaults, **options})


def pixel_spread(out: Path, copies: bool) -> float:
    """The mean over a store's training rows, the originals or the copies, of each row's standard deviation: a flat
    grey row has none, a checkerboard's has ~127."""
    group = zarr.open_group(str(out), mode="r")
    rows = group["train/images"][:].astype(np.float64)
    chosen = (group["train/copy_index"][:] > 0) == copies
    return float(rows[chosen].std(axis=(1, 2, 3)).mean())


def identity(out: Path) -> dict:
    return json.loads((out / "zarr.json").read_text())["attributes"]["identity"]


def test_the_photo_presets_are_registered_and_documented_from_the_registry():
    from augzarr.builder.policies import PRESETS, STAGE_SCALES

    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    from reference import on_page_markdown

    photo = PRESETS["photo"](224, 224)
    crop = photo.transforms[0]
    assert type(crop).__name__ == "RandomResizedCrop" and tuple(crop.size) == (224, 224)
    assert tuple(crop.scale) == (0.08, 1.0) and np.allclose(crop.ratio, (3 / 4, 4 / 3))
    assert [type(t).__name__ for t in photo.transforms] == ["RandomResizedCrop", "HorizontalFlip"]
    strong = [type(t).__name__ for t in PRESETS["photo-strong"](224, 224).transforms]
    assert strong == ["RandomResizedCrop", "HorizontalFlip", "ColorJitter"]
    assert STAGE_SCALES == {"photo": 2.0, "photo-strong": 2.0}  # the others cut copies from the stored original
    page = SimpleNamespace(file=SimpleNamespace(src_uri="reference/build-aug.md"))
    reference = on_page_markdown((REPO / "docs/reference/build-aug.md").read_text(), page, None, None)
    assert "- `photo`: For photos: a random crop of 8-100%" in reference
    assert "- `photo-strong`: photo, then colour jitter" in reference
    assert "`--stage-scale`" in reference and "2 for the photo presets, else 1" in reference


def test_copies_of_a_photo_preset_are_cut_from_the_staged_source_not_the_stored_original(tmp_path):
    source = checkerboards(tmp_path / "boards")
    staged = tmp_path / "staged.zarr"
    build(source, staged)
    from_originals = tmp_path / "originals.zarr"
    build(source, from_originals, stage_scale=1)
    for out in (staged, from_originals):
        assert pixel_spread(out, copies=False) < 2  # the originals: flat grey at the stored size, both ways
    assert pixel_spread(from_originals, copies=True) < 2  # an upscaled crop of flat grey stays flat
    # cut from the 32x32 checkerboard: the crops of about a quarter of the area or less keep it (8-100% drawn), the
    # larger ones average it towards grey as they shrink it
    assert pixel_spread(staged, copies=True) > 10


def test_the_identity_records_staging_only_when_it_is_on(tmp_path):
    source = checkerboards(tmp_path / "boards", per_class=2)
    on = tmp_path / "on.zarr"
    build(source, on, copies=1)
    staging = identity(on)["staging"]
    assert staging["scale"] == 2.0 and staging["codec"] == "jpeg:95" and "simplejpeg" in staging["encoder"]
    off = tmp_path / "off.zarr"
    build(source, off, copies=1, stage_scale=1)
    assert "staging" not in identity(off) and {**identity(off), "staging": staging} == identity(on)
    described = run_cli("inspect-aug", "--store", str(on), check=True).stdout
    assert "copies cut from each image staged at up to 2x the stored size" in described
    assert "staged" not in run_cli("inspect-aug", "--store", str(off), check=True).stdout
    old = tmp_path / "crop-flip.zarr"
    build(source, old, copies=1, policy="crop-flip")
    assert "staging" not in identity(old)  # the other presets: the identity stores built before have
    # another scale is another store: refused without --overwrite, naming the difference
    again = run_cli(
        "build-aug",
        *("--source", str(source), "--out", str(on), "--image-size", str(STORED), "--copies", "1"),
        *("--policy", "photo", "--stage-scale", "3", "--preview", "0"),
    )
    assert again.returncode == 1 and "staging.scale 2.0 -> 3.0" in again.stderr


def start_build(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "build-aug"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def test_a_photo_store_has_the_same_bytes_with_1_or_2_workers_and_after_kill_9(tmp_path):
    folder = write_image_folder(tmp_path / "photos", {"a": 120, "b": 120}, size=40)  # staged at 32, stored at 16
    args = ["--source", str(folder), "--image-size", str(STORED), "--policy", "photo-strong"]
    args += ["--copies", "4", "--chunk-size", "8", "--preview", "0", "--quiet"]
    reference = tmp_path / "one.zarr"
    run_cli("build-aug", *args, "--workers", "1", "--out", str(reference), check=True)
    assert identity(reference)["staging"]["scale"] == 2.0
    out = tmp_path / "killed.zarr"
    process = start_build([*args, "--workers", "2", "--out", str(out)])
    deadline = time.time() + 120
    chunks = out / BUILD_DIR / "chunks"
    while not (chunks.is_dir() and len(list(chunks.rglob("train.*"))) >= 10):
        assert process.poll() is None and time.time() < deadline, "the build ended before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the build and its workers
    process.wait()
    resumed = run_cli("build-aug", *args, "--workers", "2", "--out", str(out), check=True)
    assert "Traceback" not in resumed.stderr
    assert_same_store(out, reference)


def test_stage_scale_is_refused_where_it_cannot_work(tmp_path):
    source = checkerboards(tmp_path / "boards", per_class=2)
    with pytest.raises(OptionError, match="--stage-scale stages each image above the stored size --image-size sets"):
        augzarr.build(source, tmp_path / "no-size.zarr", stage_scale=2, progress=False)
    # a policy that keeps the staged image's size would store rows of another size: refused before any work
    kept = tmp_path / "notebook.zarr"
    with pytest.raises(
        UserError, match=r"--policy notebook does not turn an image staged at 32x32 \(--stage-scale 2\)"
    ):
        build(source, kept, policy="notebook", stage_scale=2)
    assert not kept.exists()
    # a Dask cluster: refused in one line before any connection or write (staging is local only)
    remote = tmp_path / "cluster.zarr"
    with pytest.raises(
        UserError, match="built on this machine only: build without --scheduler, or pass --stage-scale 1"
    ):
        build(source, remote, scheduler="tcp://127.0.0.1:9")
    assert not remote.exists()


@pytest.mark.parametrize("name", ["photo", "photo-strong"])
def test_the_builds_fast_path_gives_the_full_calls_bytes_on_staged_images(name):
    """A copy is cut from an image larger than the stored size, of its own shape: the worker's cheap path
    (applier.py) must give albumentations' own bytes there too."""
    from augzarr.builder.applier import image_applier
    from augzarr.builder.policies import PRESETS
    from augzarr.builder.seeding import SampleSeeder

    full, fast = PRESETS[name](24, 32), PRESETS[name](24, 32)
    full_seeder, fast_seeder = SampleSeeder(full, 5), SampleSeeder(fast, 5)
    apply = image_applier(fast)
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(48, 64), (30, 40), (24, 32), (36, 48)] * 10):
        image = np.ascontiguousarray(smooth_image(rng, 64)[:height, :width])
        full_seeder.reseed(i, 1)
        fast_seeder.reseed(i, 1)
        expected = full(image=image)["image"]
        assert expected.shape == (24, 32, 3) and np.array_equal(apply(image), expected), i


def test_a_photo_build_to_object_storage_is_the_local_build(tmp_path, monkeypatch):
    """An object store's build stages in a temporary folder of this machine, not in the store's .build/."""
    from s3server import MotoServer

    folder = write_image_folder(tmp_path / "photos", {"a": 6, "b": 6}, size=40)
    args = ["--source", str(folder), "--image-size", str(STORED), "--policy", "photo", "--copies", "3"]
    args += ["--chunk-size", "8", "--preview", "0", "--workers", "2"]
    local = tmp_path / "local.zarr"
    run_cli("build-aug", *args, "--out", str(local), check=True)
    with MotoServer() as server:
        server.make_bucket("photos")
        url = "s3://photos/aug.zarr"
        run_cli("build-aug", *args, "--out", url, env=server.env, check=True)
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        remote = augzarr.open_store(url)
        for split in ("train", "val"):
            for mine, theirs in zip(remote.arrays(split), augzarr.open_store(local).arrays(split)):
                assert np.array_equal(mine, theirs), split
        assert remote._store.attrs.identity["staging"]["scale"] == 2.0
