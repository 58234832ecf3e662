"""Policies: the notebook's ImageDataGenerator settings, presets, files, seeding."""

from __future__ import annotations

import json
import warnings

import albumentations as A
import cv2
import numpy as np
import pytest
from conftest import smooth_image

from augzarr.builder.applier import FOLLOWED_RELEASES, image_applier, is_identity, transform_step
from augzarr.builder.policies import PRESETS, Policy, load_policy
from augzarr.builder.seeding import SampleSeeder
from augzarr.errors import UserError

N_SAMPLES = 3000


def applied_notebook_params(size: int = 32) -> dict[str, np.ndarray]:
    """Run the notebook policy N_SAMPLES times with per-sample seeds; collect what it applied."""
    policy = load_policy("notebook", (size, size, 3))
    pipeline = policy.pipeline
    pipeline.save_applied_params = True
    seeder = SampleSeeder(pipeline, seed=0)
    image = smooth_image(np.random.default_rng(0), size)
    rows = {"rotate": [], "scale_x": [], "scale_y": [], "shift_x": [], "shift_y": [], "flipped": []}
    centre = np.array([(size - 1) / 2, (size - 1) / 2, 1.0])
    for i in range(N_SAMPLES):
        seeder.reseed(i, 1)
        applied = dict(pipeline(image=image)["applied_transforms"])
        affine = applied["Affine"]
        rows["rotate"].append(affine["rotate"])
        rows["scale_x"].append(affine["scale"]["x"])
        rows["scale_y"].append(affine["scale"]["y"])
        # rotation and zoom act about the centre, so the centre moves by the shift alone
        moved = affine["matrix"] @ centre
        rows["shift_x"].append((moved[0] - centre[0]) / size)
        rows["shift_y"].append((moved[1] - centre[1]) / size)
        rows["flipped"].append("HorizontalFlip" in applied)
    return {k: np.array(v) for k, v in rows.items()}


def test_notebook_policy_parameters_fall_in_and_cover_the_notebook_ranges():
    params = applied_notebook_params()
    ranges = {
        "rotate": (-40, 40),
        "scale_x": (0.8, 1.2),
        "scale_y": (0.8, 1.2),
        "shift_x": (-0.2, 0.2),
        "shift_y": (-0.2, 0.2),
    }
    for name, (low, high) in ranges.items():
        values = params[name]
        tolerance = 0.5 / 32 if name.startswith("shift") else 1e-9  # shifts are whole pixels
        assert values.min() >= low - tolerance and values.max() <= high + tolerance, name
        span = high - low
        # covered: reaches both ends (within 3%, or 1 pixel for the whole-pixel shifts), and every tenth is used
        margin = 1 / 32 if name.startswith("shift") else 0.03 * span
        assert values.min() <= low + margin and values.max() >= high - margin, name
        if name.startswith("shift"):  # every whole-pixel shift from -6 to 6 (20% of 32 = 6.4) is used
            pixels, counts = np.unique(np.round(values * 32).astype(int), return_counts=True)
            assert pixels.tolist() == list(range(-6, 7)) and counts.min() > N_SAMPLES / 13 * 0.5, (name, counts)
        else:
            hist, _ = np.histogram(values, bins=10, range=(low, high))
            assert hist.min() > N_SAMPLES / 10 * 0.5, (name, hist)
    assert 0.45 < params["flipped"].mean() < 0.55
    # x and y zoom are drawn independently, as ImageDataGenerator draws zx and zy
    assert abs(np.corrcoef(params["scale_x"], params["scale_y"])[0, 1]) < 0.1


def test_notebook_policy_fills_by_repeating_edges():
    affine = load_policy("notebook", (32, 32, 3)).pipeline.transforms[0]
    assert affine.border_mode == cv2.BORDER_REPLICATE  # fill_mode='nearest'
    # a uniform image stays uniform whatever the shift: no black or reflected border appears
    flat = np.full((32, 32, 3), 200, np.uint8)
    pipeline = load_policy("notebook", (32, 32, 3)).pipeline
    seeder = SampleSeeder(pipeline, 0)
    for i in range(50):
        seeder.reseed(i, 1)
        assert (pipeline(image=flat)["image"] == 200).all()


def test_crop_flip_preset_pads_4_pixels_at_32():
    pipeline = load_policy("crop-flip", (32, 32, 3)).pipeline
    pad = pipeline.transforms[0]
    assert (pad.min_height, pad.min_width) == (40, 40)
    image = smooth_image(np.random.default_rng(1), 32)
    out = pipeline(image=image)["image"]
    assert out.shape == image.shape


def test_same_sample_same_pixels_and_different_samples_differ():
    image = smooth_image(np.random.default_rng(2), 32)
    a, b = (load_policy("notebook", (32, 32, 3)).pipeline for _ in range(2))
    seed_a, seed_b = SampleSeeder(a, 7), SampleSeeder(b, 7)
    seed_a.reseed(3, 1)
    first = a(image=image)["image"]
    seed_a.reseed(4, 2)  # other work in between must not matter
    a(image=image)
    seed_a.reseed(3, 1)
    seed_b.reseed(3, 1)
    assert np.array_equal(first, a(image=image)["image"])
    assert np.array_equal(first, b(image=image)["image"])
    outputs = set()
    for i, k in [(3, 2), (4, 1), (0, 1), (1, 1)]:
        seed_a.reseed(i, k)
        outputs.add(a(image=image)["image"].tobytes())
    assert len(outputs) == 4 and first.tobytes() not in outputs


@pytest.mark.parametrize("name", list(PRESETS))
def test_stored_form_rebuilds_an_identical_policy(name):
    policy = load_policy(name, (32, 32, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and quietly
        reloaded = Policy.from_attrs(json.loads(json.dumps(policy.to_attrs())))
    image = smooth_image(np.random.default_rng(3), 32)
    s1, s2 = SampleSeeder(policy.pipeline, 1), SampleSeeder(reloaded.pipeline, 1)
    for i in range(20):
        s1.reseed(i, 1)
        s2.reseed(i, 1)
        assert np.array_equal(policy.pipeline(image=image)["image"], reloaded.pipeline(image=image)["image"])


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_policy_file_saved_by_albumentations(tmp_path, fmt):
    pipeline = A.Compose([A.RandomBrightnessContrast(p=1.0), A.HorizontalFlip()])
    path = tmp_path / f"policy.{fmt}"
    A.save(pipeline, str(path), data_format=fmt)
    policy = load_policy(str(path), (16, 16, 3))
    assert [type(t).__name__ for t in policy.pipeline.transforms] == ["RandomBrightnessContrast", "HorizontalFlip"]
    assert policy.name == str(path)


def test_bad_policies_name_the_option(tmp_path):
    with pytest.raises(UserError, match="--policy nope: unknown policy; use one of notebook, crop-flip"):
        load_policy("nope", (32, 32, 3))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="--policy .*broken.json: not a valid albumentations json pipeline"):
        load_policy(str(broken), (32, 32, 3))
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"__version__": "2.0.8", "transform": {"__class_fullname__": "NoSuchTransform"}}))
    with pytest.raises(UserError, match="not a valid albumentations json pipeline"):
        load_policy(str(unknown), (32, 32, 3))
    resizing = tmp_path / "resize.yaml"
    A.save(A.Compose([A.Resize(8, 8)]), str(resizing), data_format="yaml")
    with pytest.raises(
        UserError,
        match=r"Resize\(height=8, width=8\) changes a 32x32x3 uint8 image into 8x8x3 uint8; a policy must keep the image.s shape and uint8 dtype",
    ):
        load_policy(str(resizing), (32, 32, 3))
    with pytest.raises(UserError, match="no such file"):
        load_policy(str(tmp_path / "missing.yaml"), (32, 32, 3))


def test_presets_keep_shape_for_other_sizes():
    for name in PRESETS:
        pipeline = load_policy(name, (48, 64, 3)).pipeline
        assert pipeline(image=np.zeros((48, 64, 3), np.uint8))["image"].shape == (48, 64, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PRESETS["notebook"](32, 32),
        lambda: PRESETS["crop-flip"](32, 32),
        lambda: PRESETS["crop-flip-cutout"](32, 32),
        lambda: PRESETS["randaugment"](32, 32),
        lambda: A.Compose(
            [A.OneOf([A.Rotate(limit=30), A.RandomBrightnessContrast()], p=0.7), A.VerticalFlip()], p=0.6
        ),
        lambda: A.Compose([A.HorizontalFlip()], bbox_params=A.BboxParams(format="pascal_voc")),  # takes the full call
        # Affine's own step, through each of its sampling branches, and the cases it hands back
        lambda: A.Compose([A.Affine(translate_percent=(-0.2, 0.3), shear=(-10, 20), rotate=(-5, 5), p=0.6)]),
        lambda: A.Compose(
            [
                A.Affine(
                    scale=(0.7, 1.5),
                    balanced_scale=True,
                    keep_ratio=True,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=(10, 200, 30),
                    interpolation=cv2.INTER_NEAREST,
                )
            ]
        ),
        lambda: A.Compose([A.Affine(scale=0.5, rotate=(-90, 90), fit_output=True, p=1)]),  # takes the full call
    ],
)
def test_fast_image_path_gives_the_full_calls_bytes(make):
    full, fast = make(), make()
    full_seeder, fast_seeder = SampleSeeder(full, 7), SampleSeeder(fast, 7)
    apply = image_applier(fast)
    rng = np.random.default_rng(0)
    differs = 0
    for i in range(150):
        image = smooth_image(rng, 32)
        full_seeder.reseed(i, 1)
        fast_seeder.reseed(i, 1)
        expected = full(image=image)["image"]
        assert np.array_equal(apply(image), expected), i
        differs += not np.array_equal(expected, image)
    assert differs > 50  # the pipelines did act


def test_identity_check_agrees_with_np_allclose():
    # affine_step returns the image unwarped exactly when albumentations' np.allclose test would
    rng = np.random.default_rng(0)
    identities = 0
    for _ in range(4000):
        matrix = np.eye(
            3
        )  # one entry off by 1e-10 to 1e-3: around both tolerances (1e-8 off the diagonal, ~1e-5 on it)
        matrix[rng.integers(3), rng.integers(3)] += rng.choice([-1, 1]) * 10 ** rng.uniform(-10, -3)
        expected = bool(np.allclose(matrix, np.eye(3)))
        assert is_identity(matrix) == expected, matrix
        identities += expected
    assert 500 < identities < 3500  # both answers were exercised
    assert not is_identity(np.full((3, 3), np.nan))


def test_cheap_steps_only_under_the_releases_they_follow(monkeypatch):
    # the byte tests above exercise the cheap steps, not only the full call they fall back to
    affine, flip = A.Affine(rotate=(-10, 10), p=1), A.HorizontalFlip()
    if A.__version__ in FOLLOWED_RELEASES:  # pyproject's pin installs one
        assert transform_step(affine).__qualname__.startswith("affine_step")
        assert transform_step(flip).__qualname__.startswith("direct_step")
    monkeypatch.setattr(A, "__version__", "2.1.0")  # a release whose internals nobody checked: the full call
    assert transform_step(affine).__qualname__.startswith("transform_step")
    assert transform_step(flip).__qualname__.startswith("transform_step")
