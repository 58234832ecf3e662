"""Issue #12 point 3: the stronger presets, crop-flip-cutout and randaugment, do what the README says."""

from __future__ import annotations

from collections import Counter

import albumentations as A
import numpy as np
from conftest import run_cli, smooth_image, write_image_folder

from augzarr.builder.policies import PRESETS, load_policy
from augzarr.builder.seeding import SampleSeeder


def test_crop_flip_cutout_leaves_one_grey_hole_half_the_side():
    pipeline = load_policy("crop-flip-cutout", (32, 32, 3)).pipeline
    seeder = SampleSeeder(pipeline, 0)
    image = np.full((32, 32, 3), 7, np.uint8)  # no grey and no black of its own
    for i in range(50):
        seeder.reseed(i, 1)
        grey = (pipeline(image=image)["image"] == 128).all(axis=-1)
        rows, cols = np.flatnonzero(grey.any(axis=1)), np.flatnonzero(grey.any(axis=0))
        assert (
            0 < len(rows) <= 16 and 0 < len(cols) <= 16 and grey.sum() == len(rows) * len(cols)
        )  # one box, cut at the edges
        assert len(rows) == 16 or rows[0] == 0 or rows[-1] == 31


def test_randaugment_applies_two_distinct_operations_from_its_list_per_copy():
    preset = PRESETS["randaugment"](32, 32)
    some_of = preset.transforms[0]
    assert isinstance(some_of, A.SomeOf) and some_of.n == 2 and not some_of.replace and len(some_of.transforms) == 14
    recorded = A.Compose(preset.transforms, save_applied_params=True)
    seeder = SampleSeeder(recorded, 3)
    image = smooth_image(np.random.default_rng(0), 32)
    drawn = Counter()
    for i in range(700):
        seeder.reseed(i, 1)
        applied = [name for name, _ in recorded(image=image)["applied_transforms"]]
        assert applied[2:4] == ["PadIfNeeded", "RandomCrop"] and applied[4:] in ([], ["HorizontalFlip"]), applied
        drawn.update(applied[:2])  # exactly two operations of the list, then crop-flip
    # uniform over the 14 entries (100 draws each expected): 5 are Affine (rotate, 2 shears, 2 shifts), 3 ColorJitter
    assert 400 < drawn.pop("Affine") < 600 and 220 < drawn.pop("ColorJitter") < 380
    assert set(drawn) == {"NoOp", "AutoContrast", "Equalize", "Solarize", "Posterize", "Sharpen"}
    assert all(50 < count < 150 for count in drawn.values()), drawn


def test_the_new_presets_build_stores_that_repeat_byte_for_byte(tmp_path):
    images = write_image_folder(tmp_path / "images", {"ant": 5, "bee": 5}, size=16)
    for name in ("crop-flip-cutout", "randaugment"):
        stores = []
        for attempt in ("a", "b"):
            out = tmp_path / f"{name}-{attempt}.zarr"
            run_cli(
                "build-aug",
                "--source",
                str(images),
                "--out",
                str(out),
                "--copies",
                "2",
                "--policy",
                name,
                "--preview",
                "0",
                "--workers",
                "1" if attempt == "a" else "2",
                check=True,
            )
            stores.append(
                sorted(
                    (p.relative_to(out).as_posix(), p.read_bytes())
                    for p in (out / "train" / "images").rglob("*")
                    if p.is_file()
                )
            )
        assert stores[0] == stores[1]


def test_copies_0_stores_the_originals_only_as_a_baseline(tmp_path):
    import zarr

    images = write_image_folder(tmp_path / "images", {"ant": 6, "bee": 4}, size=8)
    out = tmp_path / "originals.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(out),
        "--copies",
        "0",
        "--val-fraction",
        "0.2",
        "--preview",
        "0",
        check=True,
    )
    train = zarr.open_group(str(out), mode="r")["train"]
    sources = train["source_index"][:]
    assert (
        len(sources) == len(set(sources.tolist())) == 8 and not train["copy_index"][:].any()
    )  # 10 minus 2 held out, once each
    refused = run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(tmp_path / "none.zarr"),
        "--copies",
        "0",
        "--no-include-original",
    )
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "build-aug: error: --copies 0 stores the originals only: it needs --include-original"
    )
