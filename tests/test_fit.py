"""build-aug --image-size N or HxW with --fit crop|pad|stretch: the geometry of each fit on images of known shapes,
the default for new stores (crop), and stores built before --fit (stretched) opening, re-running and resuming as
they were, their identity unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import run_cli
from PIL import Image

from augzarr.errors import OptionError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def bands(height: int, width: int, across: bool = True) -> np.ndarray:
    """Red, green, blue bands: the first and last quarter red and blue, the middle half green; across the width
    (vertical bands) or down the height."""
    image = np.zeros((height, width, 3), np.uint8)
    side = width if across else height
    cuts = [0, side // 4, side - side // 4, side]
    for colour, (start, stop) in zip((RED, GREEN, BLUE), zip(cuts, cuts[1:])):
        if across:
            image[:, start:stop] = colour
        else:
            image[start:stop] = colour
    return image


def colour_at(image: np.ndarray, row: int, col: int) -> tuple[int, ...]:
    return tuple(int(v) for v in image[row, col])


def test_crop_keeps_the_centre_at_the_aspect_ratio():
    from augzarr.images import fit_to

    wide = fit_to(bands(100, 200), 50, 50, "crop")  # the centre 100x100: the green half, nothing else
    assert wide.shape == (50, 50, 3) and np.all(wide == GREEN)
    tall = fit_to(bands(200, 100, across=False), 50, 50, "crop")
    assert np.all(tall == GREEN)
    # HxW: a 200x100 portrait into 40x80 keeps its centre rows 75-125, green, at half scale in both directions
    band = fit_to(bands(200, 100, across=False), 40, 80, "crop")
    assert band.shape == (40, 80, 3) and np.all(band == GREEN)


def test_pad_keeps_the_whole_image_and_fills_the_rest_with_black():
    from augzarr.images import fit_to

    padded = fit_to(bands(100, 200), 50, 50, "pad")  # 200 wide -> 50: the image is 25 rows, centred
    assert padded.shape == (50, 50, 3)
    assert np.all(padded[:11] == 0) and np.all(padded[-11:] == 0)  # 12.5 rows of black each side
    row = 25
    assert (
        colour_at(padded, row, 2) == RED and colour_at(padded, row, 25) == GREEN and colour_at(padded, row, 47) == BLUE
    )
    one_channel = fit_to(bands(100, 200)[..., :1], 20, 20, "pad")
    assert one_channel.shape == (20, 20, 1)


def test_stretch_squeezes_the_whole_image_aspect_lost():
    from augzarr.images import fit_to

    stretched = fit_to(bands(100, 200), 50, 50, "stretch")
    assert colour_at(stretched, 0, 2) == RED and colour_at(stretched, 49, 47) == BLUE  # every band, top to bottom
    assert colour_at(stretched, 0, 25) == GREEN


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", r"--image-size must be in \[1, 4096\] on each side"),
        ("32x5000", r"--image-size must be in \[1, 4096\] on each side"),
        ("big", "--image-size must be N"),
        ("32x32x3", "--image-size must be N"),
    ],
)
def test_bad_image_sizes_are_refused_in_one_line(value, message):
    from augzarr.builder.options import BuildOptions

    with pytest.raises(OptionError, match=message):
        BuildOptions(image_size=value).validate()


def test_fit_without_image_size_is_refused():
    from augzarr.builder.options import BuildOptions

    assert BuildOptions(image_size=64).image_hw == (64, 64) and BuildOptions(image_size="24X32").image_hw == (24, 32)
    with pytest.raises(OptionError, match="--fit says how --image-size fits each image"):
        BuildOptions(fit="pad").validate()


def write_photos(root: Path) -> Path:
    """Two classes of PNG photos of two shapes, landscape 40x80 and portrait 80x40, each with red-green-blue bands
    along its long side: centre-cropped they are all green, stretched they keep red and blue edges."""
    for name, (height, width) in (("wide", (40, 80)), ("tall", (80, 40))):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(bands(height, width, across=width > height)).save(root / name / f"{i}.png")
    return root


def build(folder: Path, out: Path, *more: str, check: bool = True):
    return run_cli(
        "build-aug", "--source", str(folder), "--out", str(out), "--copies", "0", "--preview", "0", *more, check=check
    )


def originals(out: Path) -> np.ndarray:
    group = zarr.open_group(str(out), mode="r")
    return np.concatenate([group["train/images"][:], group["val/images"][:]])


def identity(out: Path) -> dict:
    return json.loads((out / "zarr.json").read_text())["attributes"]["identity"]


# the identity's keys as every store built before --fit has them: a stretched store must keep exactly these
IDENTITY_KEYS_BEFORE_FIT = [
    "format_version",
    "source_kind",
    "class_names",
    "image_shape",
    "limit",
    "copies",
    "include_original",
    "val_fraction",
    "seed",
    "chunk_rows",
    "policy",
    "codec",
]


def test_new_stores_are_centre_cropped_and_record_it(tmp_path):
    folder = write_photos(tmp_path / "photos")
    cropped = tmp_path / "crop.zarr"
    build(folder, cropped, "--image-size", "16")
    images = originals(cropped)
    assert images.shape[1:] == (16, 16, 3) and np.all(np.abs(images.astype(int) - GREEN).max(axis=-1) <= 2)
    assert identity(cropped)["fit"] == "crop"
    padded = tmp_path / "pad.zarr"
    build(folder, padded, "--image-size", "8x16", "--fit", "pad")
    images = originals(padded)
    assert (
        images.shape[1:] == (8, 16, 3)
        and identity(padded)["fit"] == "pad"
        and identity(padded)["image_shape"][:2] == [8, 16]
    )
    # a portrait photo in a 1:2 frame fills its middle quarter, black left and right; a landscape one fills it all
    tall = [image for image in images if image[:, :4].max() == 0]
    assert len(tall) == 4 and all(image[:, 12:].max() == 0 and image[:, 7:9].max(axis=-1).min() > 200 for image in tall)
    assert all(image.reshape(-1, 3).max(axis=1).min() > 200 for image in images if image[:, :4].max() > 0)


def test_a_store_built_before_fit_reruns_and_resumes_stretched_with_its_identity_unchanged(tmp_path):
    folder = write_photos(tmp_path / "photos")
    old = tmp_path / "old.zarr"
    build(folder, old, "--image-size", "16", "--fit", "stretch")  # stretched: what every build did before --fit
    recorded = identity(old)
    assert list(recorded) == IDENTITY_KEYS_BEFORE_FIT  # no "fit": the identity stores built before have
    images = originals(old)
    assert any(colour_at(image, 8, 0)[0] > 200 for image in images)  # red edges kept: stretched, not cropped
    # the command that built it, from before --fit existed: the store is already complete, not refused or rebuilt
    again = build(folder, old, "--image-size", "16")
    assert "already complete" in again.stdout and identity(old) == recorded
    # --overwrite starts anew at the default: crop
    build(folder, old, "--image-size", "16", "--overwrite")
    assert identity(old)["fit"] == "crop"


def test_without_image_size_nothing_is_fitted_and_the_identity_is_as_before(tmp_path):
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir(parents=True)
    for name in ("a", "b"):
        for i in range(3):
            Image.fromarray(bands(12, 20)).save(folder / name / f"{i}.png")
    out = tmp_path / "same.zarr"
    build(folder, out)
    assert list(identity(out)) == IDENTITY_KEYS_BEFORE_FIT and originals(out).shape[1:] == (12, 20, 3)


def test_an_unfinished_build_from_before_fit_resumes_stretched(tmp_path):
    """Without --fit, a build resumes with the fit its build.json records: stretch where it records none."""
    from augzarr.builder.build import resolved_fit
    from augzarr.builder.options import BuildOptions
    from augzarr.builder.records import BuildRecord
    from augzarr.storage import open_storage

    storage = open_storage(str(tmp_path / "unfinished.zarr"))
    options = BuildOptions(out=storage.location, image_size=16)
    assert resolved_fit(options, storage) == "crop"  # nothing there: a new store
    BuildRecord({"format_version": 1, "image_shape": [16, 16, 3]}, None, "id").write(storage)
    assert resolved_fit(options, storage) == "stretch"
    BuildRecord({"format_version": 1, "image_shape": [16, 16, 3], "fit": "pad"}, None, "id").write(storage)
    assert resolved_fit(options, storage) == "pad"
    assert resolved_fit(BuildOptions(out=storage.location, image_size=16, fit="crop"), storage) == "crop"
    assert resolved_fit(BuildOptions(out=storage.location, image_size=16, overwrite=True), storage) == "crop"
