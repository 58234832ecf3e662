"""Augmentation policies: named presets and albumentations' own serialized files.

A policy is stored in the store in albumentations' serialized form, and build
workers rebuild their pipeline from that form, so the store alone reproduces
the build.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2

from augzarr.errors import OptionError, UserError

from .albumentations_import import A, load_pipeline, pipeline_from_dict
from .policy_check import check_policy


def notebook_policy(height: int, width: int) -> A.Compose:
    """The notebook's `ImageDataGenerator`: rotation ±40°, shifts within ±20% as whole pixels, zoom 0.8-1.2
    drawn per axis, horizontal flip, edge-replicating fill.

    ImageDataGenerator(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2, zoom_range=0.2,
    horizontal_flip=True, fill_mode='nearest').

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
    """Zero-pad 1/8 of the side (4 px at 32), random crop back to size, horizontal flip: the classic CIFAR recipe."""
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
    """crop-flip, then one mid-grey (128) hole half the side (16x16 at 32) at a random centre, cut off at the
    edges: cutout's best CIFAR-10 setting.

    Cutout: DeVries & Taylor, 2017, whose best CIFAR-10 setting is one 16x16 hole at 32x32, always; mid-grey is
    about the data's mean, as the paper's zero after normalising is."""
    return A.Compose(
        [
            *crop_flip_policy(height, width).transforms,
            A.CoarseDropout(
                num_holes_range=(1, 1), hole_height_range=(0.5, 0.5), hole_width_range=(0.5, 0.5), fill=128, p=1.0
            ),
        ]
    )


def randaugment_policy(height: int, width: int) -> A.Compose:
    """RandAugment-style: per copy 2 different operations drawn uniformly from identity, autocontrast,
    equalize, rotate ±15°, solarize above 50-100%, saturation, contrast and brightness ×0.5-1.5, posterize to 4-6
    bits, sharpen (alpha 0.2-0.5), shear x or y ±15°, translate x or y by up to 1/8 of the side, geometric ones
    filling with mid-grey; then crop-flip.

    RandAugment: Cubuk et al., 2020. Identity is among the operations, so a copy gets one or two; each at a random
    magnitude within a range suited to 32x32 images (about RandAugment's magnitude 9 of 30, shifts scaled to the
    side); then crop-flip, as the paper's CIFAR-10 recipe does."""
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


def photo_policy(height: int, width: int) -> A.Compose:
    """For photos: a random crop of 8-100% of the image's area at an aspect ratio of 3/4-4/3, resized to the stored
    size, and a horizontal flip (the ImageNet recipe, torchvision's RandomResizedCrop); each copy is cut from the
    image staged at up to twice the stored size (--stage-scale), so a small crop stays sharp.

    Area interpolation where the crop is larger than the stored size (torchvision's antialiasing), linear where it is
    smaller."""
    return A.Compose(
        [
            A.RandomResizedCrop(
                size=(height, width), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), area_for_downscale="image"
            ),
            A.HorizontalFlip(p=0.5),
        ]
    )


def photo_strong_policy(height: int, width: int) -> A.Compose:
    """photo, then colour jitter on 80% of the copies: brightness, contrast and saturation x0.6-1.4 and hue shifted
    by up to 0.1 of the colour circle, in random order; copies cut from the image staged as photo's are.

    Colour jitter rather than a RandAugment-style draw: its magnitudes for photos are the common ImageNet and
    self-supervised ones (0.4, hue 0.1, applied with p 0.8), it costs one colour conversion a copy, and the operations
    RandAugment adds (rotations, shears, solarize, posterize) are tuned per dataset; the randaugment preset keeps them
    for small images."""
    return A.Compose(
        [
            *photo_policy(height, width).transforms,
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
        ]
    )


# each preset's name -> its function; the first paragraph of the function's docstring is what the docs say it does
PRESETS = {
    "notebook": notebook_policy,
    "crop-flip": crop_flip_policy,
    "crop-flip-cutout": crop_flip_cutout_policy,
    "randaugment": randaugment_policy,
    "photo": photo_policy,
    "photo-strong": photo_strong_policy,
}
PHOTO_STAGE_SCALE = 2.0
# the presets whose copies are cut from the source staged above the stored size, and at what scale (--stage-scale's
# default for them; 1 for the others, whose copies are cut from the fitted original)
STAGE_SCALES = {"photo": PHOTO_STAGE_SCALE, "photo-strong": PHOTO_STAGE_SCALE}


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
