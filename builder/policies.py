"""Augmentation policies: named presets and albumentations' own serialized files.

A policy is stored in the store in albumentations' serialized form, and build
workers rebuild their pipeline from that form, so the store alone reproduces
the build.
"""

from __future__ import annotations

import contextlib
import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from augzarr.errors import OptionError, UserError

from .albumentations_import import A, load_pipeline, pipeline_from_dict

MASK64 = (1 << 64) - 1


def notebook_policy(height: int, width: int) -> A.Compose:
    """The notebook's ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
    height_shift_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode='nearest').

    Keras draws the x and y zoom independently from [0.8, 1.2], as keep_ratio=False
    does here; fill_mode 'nearest' repeats the edge pixel, which is BORDER_REPLICATE.
    Albumentations shifts by whole pixels: translate_percent would truncate 20% toward
    zero (0 twice as likely as any other shift), so the shift is drawn uniformly from
    the whole pixels within 20% instead (-6..6 at 32 px).
    """
    max_dx, max_dy = int(0.2 * width), int(0.2 * height)
    return A.Compose(
        [
            A.Affine(
                rotate=(-40, 40),
                translate_px={"x": (-max_dx, max_dx), "y": (-max_dy, max_dy)},
                scale=(0.8, 1.2),
                keep_ratio=False,
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_REPLICATE,
                p=1.0,
            ),
            A.HorizontalFlip(p=0.5),
        ]
    )


def crop_flip_policy(height: int, width: int) -> A.Compose:
    """The standard CIFAR recipe: zero-pad by 1/8 of the side (4 px at 32), random crop back, flip."""
    pad = max(1, round(min(height, width) / 8))
    return A.Compose(
        [
            A.PadIfNeeded(
                min_height=height + 2 * pad, min_width=width + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0
            ),
            A.RandomCrop(height=height, width=width),
            A.HorizontalFlip(p=0.5),
        ]
    )


def crop_flip_cutout_policy(height: int, width: int) -> A.Compose:
    """crop-flip, then cutout (DeVries & Taylor, 2017, whose best CIFAR-10 setting is one 16x16 hole at
    32x32): one hole half the side (16 px at 32), always, filled with mid-grey (128, about the data's mean,
    as the paper's zero after normalising is), wherever it falls (cut off at the edges)."""
    return A.Compose(
        [
            *crop_flip_policy(height, width).transforms,
            A.CoarseDropout(
                num_holes_range=(1, 1), hole_height_range=(0.5, 0.5), hole_width_range=(0.5, 0.5), fill=128, p=1.0
            ),
        ]
    )


def randaugment_policy(height: int, width: int) -> A.Compose:
    """RandAugment-style (Cubuk et al., 2020): per copy, 2 different operations drawn uniformly from the
    list below (identity among them, so a copy gets one or two), each at a random magnitude within a range
    suited to 32x32 images (about RandAugment's magnitude 9 of 30, shifts scaled to the side); then
    crop-flip, as the paper's CIFAR-10 recipe does. Geometric operations fill with mid-grey (128)."""
    shift_y, shift_x = max(1, round(height / 8)), max(1, round(width / 8))
    geometry = {"border_mode": cv2.BORDER_CONSTANT, "fill": 128, "p": 1.0}
    operations = [
        A.NoOp(p=1.0),  # identity
        A.AutoContrast(p=1.0),  # stretch each channel to 0..255
        A.Equalize(p=1.0),  # histogram equalisation
        A.Affine(rotate=(-15, 15), **geometry),  # rotate up to 15 degrees
        A.Solarize(threshold_range=(0.5, 1.0), p=1.0),  # invert above a threshold of 50-100%
        A.ColorJitter(brightness=0, contrast=0, saturation=(0.5, 1.5), hue=0, p=1.0),  # colour: saturation x0.5-1.5
        A.Posterize(num_bits=(4, 6), p=1.0),  # keep 4-6 bits a channel
        A.ColorJitter(brightness=0, contrast=(0.5, 1.5), saturation=0, hue=0, p=1.0),  # contrast x0.5-1.5
        A.ColorJitter(brightness=(0.5, 1.5), contrast=0, saturation=0, hue=0, p=1.0),  # brightness x0.5-1.5
        A.Sharpen(alpha=(0.2, 0.5), p=1.0),  # sharpness
        A.Affine(shear={"x": (-15, 15), "y": (0, 0)}, **geometry),  # shear x up to 15 degrees
        A.Affine(shear={"x": (0, 0), "y": (-15, 15)}, **geometry),  # shear y
        A.Affine(translate_px={"x": (-shift_x, shift_x), "y": (0, 0)}, **geometry),  # translate x by 1/8 of the side
        A.Affine(translate_px={"x": (0, 0), "y": (-shift_y, shift_y)}, **geometry),  # translate y
    ]
    return A.Compose([A.SomeOf(operations, n=2, replace=False, p=1.0), *crop_flip_policy(height, width).transforms])


PRESETS = {
    "notebook": notebook_policy,
    "crop-flip": crop_flip_policy,
    "crop-flip-cutout": crop_flip_cutout_policy,
    "randaugment": randaugment_policy,
}


@dataclass
class Policy:
    name: str  # a preset name or the file it was loaded from
    pipeline: A.Compose

    def to_attrs(self) -> dict:
        return {"name": self.name, "albumentations": A.to_dict(self.pipeline)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> Policy:
        with derived_fields_unwarned():
            return cls(name=attrs["name"], pipeline=pipeline_from_dict(attrs["albumentations"]))


@contextlib.contextmanager
def derived_fields_unwarned():
    """albumentations 2 serializes derived fields (PadIfNeeded's 'padding') that it then warns
    about when reading them back, from the store or a saved policy file; the rebuilt pipeline is
    the same (tested)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Argument\(s\) .* are not valid for transform")
        yield


def load_policy(spec: str, image_shape: tuple[int, ...]) -> Policy:
    """--policy: a preset name, or a JSON/YAML file saved with albumentations.save(); refused
    unless it keeps the image's shape and uint8 dtype on every draw (policy_check)."""
    from .policy_check import check_policy  # late: policy_check imports SampleSeeder from here

    if spec in PRESETS:
        policy = Policy(name=spec, pipeline=PRESETS[spec](image_shape[0], image_shape[1]))
        check_policy(spec, policy.pipeline, image_shape)
        return policy
    path = Path(spec).expanduser()
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise OptionError(
            f"--policy {spec}: unknown policy; use one of {', '.join(PRESETS)} or a .json/.yaml file saved with albumentations.save()"
        )
    if path.is_dir():
        raise UserError(f"--policy {spec} is a folder; give the .json/.yaml file saved with albumentations.save()")
    if not path.is_file():
        raise UserError(f"--policy {spec}: no such file")
    data_format = "json" if path.suffix.lower() == ".json" else "yaml"
    try:
        with derived_fields_unwarned():
            pipeline = load_pipeline(str(path), data_format=data_format)
    except Exception as exc:
        raise UserError(
            f"--policy {spec}: not a valid albumentations {data_format} pipeline ({type(exc).__name__}: {exc})".replace(
                "\n", " "
            )
        ) from exc
    if not isinstance(pipeline, A.BaseCompose):
        pipeline = A.Compose([pipeline])
    check_policy(spec, pipeline, image_shape)
    return Policy(name=str(path), pipeline=pipeline)


def policy_json(policy: Policy) -> str:
    return json.dumps(policy.to_attrs(), sort_keys=True)


def mix64(x: int) -> int:
    """splitmix64's finalizer: spreads nearby integers over all 64 bits."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & MASK64
    return x ^ (x >> 31)


class GeneratorRandom(random.Random):
    """A random.Random that draws from a numpy Generator, so one cheap state reset
    reseeds both of albumentations' random sources (random.Random.seed costs ~6 us).
    Uniforms are drawn BATCH at a time: one numpy call costs what ~10 scalar draws do."""

    BATCH = 16

    def __init__(self, generator: np.random.Generator):
        self.generator = generator
        super().__init__(0)
        self.refill()

    def refill(self) -> None:
        self.values = iter(self.generator.random(self.BATCH).tolist())

    def random(self) -> float:
        value = next(self.values, None)
        if value is None:
            self.refill()
            value = next(self.values)
        return value

    def getrandbits(self, k: int) -> int:
        if k <= 53:
            # random() is a multiple of 2**-53, so this is exactly k uniform bits, from the batch
            # (randint and choice land here: ~0.3 us instead of ~2.5 for a numpy scalar draw)
            return int(self.random() * (1 << k))
        if k <= 63:
            return int(self.generator.integers(0, 1 << k))
        return int.from_bytes(self.generator.bytes((k + 7) // 8), "little") >> (-k % 8)


class SampleSeeder:
    """Gives sample (source i, copy k) a random state that depends on (seed, i, k) alone,
    so a store's bytes do not depend on worker count, chunk order or resumption.

    The pipeline shares one numpy Generator (and a random.Random drawing from it);
    reseeding sets the generator's PCG64 state in place: ~3 us, against ~30 us for
    pipeline.set_random_seed().
    """

    def __init__(self, pipeline: A.Compose, seed: int):
        self.seed_key = mix64(seed & MASK64)
        self.generator = np.random.Generator(np.random.PCG64(0))
        self.state = self.generator.bit_generator.state
        self.py_random = GeneratorRandom(self.generator)
        pipeline.set_random_state(self.generator, self.py_random)

    def reseed(self, source_index: int, copy_index: int) -> None:
        key = mix64(mix64(self.seed_key ^ source_index) ^ (copy_index << 48))
        self.state["state"]["state"] = (mix64(key ^ 0x9E3779B97F4A7C15) << 64) | key
        self.state["state"]["inc"] = 1
        self.state["has_uint32"] = 0
        self.generator.bit_generator.state = self.state
        self.py_random.refill()
