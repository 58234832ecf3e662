"""build-aug's and inspect-aug's options, each written once (augzarr/options.py says how): the commands, the
Python API (augzarr.build, Store.contact_sheet) and the docs' reference come from here. Imports neither
albumentations nor OpenCV, so a bad option is refused at once and `import augzarr` stays cheap."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from augzarr.errors import OptionError
from augzarr.options import DEFAULT_STORE, check_fields, internal, lazy, option
from augzarr.user_text import user_text

MAX_IMAGE_SIZE = 4096
MAX_COPIES = 10_000
WORKERS_PER_CORE = 4
MAX_PREVIEW = 256  # rows of the contact sheet
MAX_STAGE_SCALE = 4  # 4x the stored size: 16x its pixels staged for each image


def lazy_check(module: str, name: str):
    """A check that lives in a module not imported until a value is checked."""
    return lambda value, label: getattr(importlib.import_module(module), name)(value, label)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def max_workers() -> int:
    return WORKERS_PER_CORE * default_workers()


@dataclass
class BuildOptions:
    """What a store is built from and how: build-aug's options, and augzarr.build's keywords."""

    source: str = option(
        "cifar10",
        "A dataset of keras.datasets ({choices}; read from Keras' cache), the official cifar-10-python.tar.gz or its "
        "extracted folder, an image folder DIR/<class>/<image> or DIR/train/<class>/... (optional DIR/test/, DIR/val/ or DIR/valid/), "
        "or a folder saved by Hugging Face datasets (save_to_disk; pip install 'augzarr[hf]').",
        choices=lazy("augzarr.sources.keras_datasets", "KERAS_DATASETS"),
        strict=False,
    )
    out: str | Path = option(
        DEFAULT_STORE,
        "The zarr store to write: a folder, or an object-store URL (s3://BUCKET/PREFIX/aug.zarr, gs://, az://; docs/guides/object-storage.md).",
    )
    label_mode: str | None = option(
        None, "--source cifar100 only: 'fine' (100 classes) or 'coarse' (20 superclasses).", default_text="fine"
    )
    copies: int = option(
        5, "Augmented copies of each training image (0: the originals only, a baseline).", low=0, high=MAX_COPIES
    )
    include_original: bool = option(
        True, "Store each original as copy 0.", flags=("--include-original/--no-include-original",)
    )
    policy: str = option(  # not the notebook's policy: it trains worse than no augmentation (BENCHMARKS.md)
        "crop-flip",
        "A preset, one of {choices} (docs/reference/build-aug.md says what each does), or a .json/.yaml file saved with "
        "albumentations.save().",
        choices=lazy("augzarr.builder.policies", "PRESETS"),
        strict=False,
    )
    val_fraction: float = option(
        0.2,
        "Fraction of training images held out (stratified) for validation, before augmenting; unused when the image folder "
        "has its own val/ or valid/.",
        low=0,
        high=1,
        high_open=True,
    )
    seed: int = option(
        0,
        "Seed for the split, the row order and every augmentation.",
        low=0,
        high=2**63,
        high_open=True,
        high_text="2**63",
    )
    chunk_size: int | None = option(None, "Rows per chunk.", low=1, default_text="~4 MiB of pixels, 1024 at 32x32")
    codec: str = option(
        "auto",
        "How images are stored, one of {choices}; docs/guides/codecs.md says which to choose.",
        choices=lazy("augzarr.codecs", "CODEC_CHOICES"),
        strict=False,
        check=lazy_check("augzarr.codecs", "check_spec"),
    )
    image_size: str | None = option(
        None,
        "Resize every image to NxN, or HxW (needed when image sizes differ), fitted as --fit says.",
        check=lambda value, label: parse_image_size(value, label),
    )
    fit: str | None = option(
        None,
        "How --image-size fits an image of another shape: {choices}.",
        choices=lazy("augzarr.images", "FITS"),
        default_text="crop; stretch for a store (or unfinished build) at --out recorded before --fit existed",
    )
    stage_scale: float | None = option(
        None,
        "Cut each augmented copy from the image staged once at up to this many times --image-size (never above the "
        "image's own size; stored as JPEG q95 while building), so a small random crop stays sharp; 1 cuts copies from "
        "the stored original. The policy must bring the staged image to the stored size (a crop or resize to it).",
        low=1,
        high=MAX_STAGE_SCALE,
        default_text="2 for the photo presets, else 1",
    )
    limit: int | None = option(
        None, "Use only the first N training images (for quick trials).", low=1, default_text="all"
    )
    workers: int | None = option(
        None,
        "Worker processes; the store's bytes do not depend on it.",
        low=1,
        high=max_workers,
        limit_note=f"{WORKERS_PER_CORE} per core on this machine",
        default_text="all cores",
    )
    overwrite: bool = option(False, "Replace a complete store, or restart an unfinished build with other arguments.")
    skip_bad: bool = option(
        False,
        "Leave out images that cannot be read or decoded (listed at the end and in the store's attrs) instead of stopping.",
    )
    license: str | None = option(
        None,
        "The terms the source images are under (a license name, a link), recorded in the store and repeated in every model "
        "card trained from it.",
        flags=("--license",),
        check=user_text,
    )
    provenance: str | None = option(
        None,
        "Where the images came from and whether the people in them consented, recorded in the store and repeated in every "
        "model card trained from it.",
        check=user_text,
    )
    preview_dir: Path | None = internal(
        None
    )  # where the CLI writes previews: never read as images when inside --source
    scheduler: str | None = option(  # cluster.py; None: this machine's processes
        None,
        "Compute the chunks on a Dask cluster: its scheduler's address (tcp://HOST:8786), or 'local' to start one here.",
        default_text="$AUGZARR_SCHEDULER, else $DASK_SCHEDULER_ADDRESS, else this machine's processes",
    )

    def __post_init__(self):
        if isinstance(self.image_size, int) and not isinstance(self.image_size, bool):  # augzarr.build(image_size=64)
            self.image_size = str(self.image_size)

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """--image-size as (height, width); None when not given."""
        return None if self.image_size is None else parse_image_size(self.image_size, "--image-size")

    def validate(self) -> None:
        check_fields(self)
        if self.fit is not None and self.image_size is None:
            raise OptionError("--fit says how --image-size fits each image: give --image-size N or HxW with it")
        if self.stage_scale is not None and self.stage_scale > 1 and self.image_size is None:
            raise OptionError(
                "--stage-scale stages each image above the stored size --image-size sets: give --image-size N or HxW with it"
            )
        if self.copies == 0 and not self.include_original:
            raise OptionError("--copies 0 stores the originals only: it needs --include-original")
        from augzarr.sources import check_label_mode

        check_label_mode(self.source, self.label_mode)


def parse_image_size(value: str, label: str) -> tuple[int, int]:
    """'64' -> (64, 64); '224x320' (height x width) -> (224, 320); OptionError naming the option otherwise."""
    parts = value.strip().lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
        raise OptionError(f"{label} must be N (NxN) or HxW (height x width), such as 224 or 224x320, not {value!r}")
    sides = [int(part) for part in parts]
    if not all(1 <= side <= MAX_IMAGE_SIZE for side in sides):
        raise OptionError(f"{label} must be in [1, {MAX_IMAGE_SIZE}] on each side, not {value!r}")
    return (sides[0], sides[-1])


def preview_option(default: int, help: str) -> int:
    return option(default, help, low=0, high=MAX_PREVIEW)


def preview_dir_option() -> Path:
    return option(Path("preview"), "Where previews go.")


@dataclass
class BuildAugOptions:
    """What build-aug does besides the store."""

    preview: int = preview_option(8, "Training images to write as previews (0 for none).")
    preview_dir: Path = preview_dir_option()
    quiet: bool = option(False, "No progress bar and no summary line.")


@dataclass
class InspectOptions:
    """inspect-aug's options."""

    store: str = option(DEFAULT_STORE, "The store to describe: a folder or an object-store URL.")
    preview: int = preview_option(0, "Also write previews of this many training images.")
    preview_dir: Path = preview_dir_option()
    as_json: bool = option(False, "Print the summary as JSON.", flags=("--json",))
    verify: bool = option(False, "Read every chunk back and check it against the checksums recorded at build time.")


@dataclass
class SheetOptions:
    """Store.contact_sheet's arguments (Python only)."""

    count: int = option(
        8, "Training images on the sheet, each original beside its copies.", low=1, high=MAX_PREVIEW, cli=False
    )


# each command's options, in the order --help and the reference table show them
BUILD_AUG = (BuildOptions, BuildAugOptions)
INSPECT_AUG = (InspectOptions,)
