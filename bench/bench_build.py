"""build-aug against (a) the notebook's ImageDataGenerator.flow and (b) the compute floor.

Each produces COPIES augmented copies of the same images, side by side in every round:
(a) Keras' legacy ImageDataGenerator with the notebook's settings, in memory;
(b) a single-process loop of the notebook albumentations policy over images already decoded in
memory, through albumentations' full call; (b') the same loop through build-aug's image applier
(the same bytes, cheaper calls: builder/applier.py); build-aug end to end (decode JPEGs, augment,
write, previews) with 2 workers, --policy notebook and --val-fraction 0, so it augments as many
images as (a) and (b), with the same settings.

    python bench/bench_build.py --images /tmp/cifar [--limit 50000] [--copies 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed_build(images: str, out: Path, copies: int, limit: int, workers: int) -> float:
    bin_dir = Path(sys.executable).parent
    args = [
        str(bin_dir / "build-aug"),
        "--source",
        images,
        "--out",
        str(out / "aug.zarr"),
        "--copies",
        str(copies),
        "--policy",
        "notebook",
        "--val-fraction",
        "0",
        "--workers",
        str(workers),
        "--limit",
        str(limit),
        "--preview-dir",
        str(out / "preview"),
        "--quiet",
    ]
    start = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - start


def floor_loop(decoded: np.ndarray, copies: int, fast: bool) -> float:
    """(b): the notebook policy over decoded images, one process; fast=True goes through
    build-aug's image applier (the same bytes, tests/test_policies.py) instead of the full call."""
    from augzarr.builder.applier import image_applier
    from augzarr.builder.policies import load_policy

    pipeline = load_policy("notebook", decoded.shape[1:]).pipeline
    apply = image_applier(pipeline) if fast else (lambda image: pipeline(image=image)["image"])
    start = time.perf_counter()
    for _ in range(copies):
        for image in decoded:
            apply(image)
    return time.perf_counter() - start


def idg_flow(decoded: np.ndarray, copies: int) -> float:
    """(a): the notebook's ImageDataGenerator settings, flowing the same images in memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(
        rotation_range=40,
        width_shift_range=0.2,
        height_shift_range=0.2,
        zoom_range=0.2,
        horizontal_flip=True,
        fill_mode="nearest",
    )
    start = time.perf_counter()
    produced = []
    for batch in generator.flow(decoded, batch_size=len(decoded), shuffle=False):
        produced.append(batch.astype(np.uint8))
        if len(produced) == copies:
            break
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True)
    parser.add_argument("--limit", type=int, default=50000)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=3, help="each round measures every method once; medians are reported"
    )
    args = parser.parse_args()
    from augzarr.images import read_image_file
    from augzarr.sources import open_source

    source = open_source(args.images, limit=args.limit)
    decoded = np.stack([read_image_file(f)[0] for f in source.train.files])
    n = len(decoded) * args.copies
    print(f"{len(decoded):,} images x {args.copies} copies = {n:,} augmented images, {args.rounds} rounds", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    names = {
        "idg": "(a) ImageDataGenerator.flow, in memory",
        "floor": "(b) albumentations full call, 1 process (floor)",
        "fast": "(b') the same through build-aug's applier, 1 process",
        "build": "build-aug --workers 2, end to end",
    }
    times: dict[str, list[float]] = {key: [] for key in names}
    for round_number in range(args.rounds):
        times["build"].append(timed_build(args.images, tmp / "b2", args.copies, args.limit, 2))
        shutil.rmtree(tmp / "b2")
        times["floor"].append(floor_loop(decoded, args.copies, fast=False))
        times["fast"].append(floor_loop(decoded, args.copies, fast=True))
        times["idg"].append(idg_flow(decoded, args.copies))
        print(f"round {round_number + 1}: " + ", ".join(f"{key} {t[-1]:.1f} s" for key, t in times.items()), flush=True)

    median = {key: float(np.median(t)) for key, t in times.items()}
    print(f"{'method':<56} {'median s':>9} {'images/s':>9}")
    for key, name in names.items():
        print(f"{name:<56} {median[key]:>9.1f} {n / median[key]:>9,.0f}")
    print(f"build-aug speed-up over (a), per round: {fmt(ratio(times['idg'], times['build']))} (target >= 4)")
    print(
        f"build-aug / ((b) / 2), per round: {fmt(ratio(times['build'], [t / 2 for t in times['floor']]))} (target <= 1.25)"
    )
    print(
        f"build-aug / ((b') / 2), per round: {fmt(ratio(times['build'], [t / 2 for t in times['fast']]))} (the parallel overhead)"
    )
    shutil.rmtree(tmp)


def ratio(numerators: list[float], denominators: list[float]) -> list[float]:
    """Per round: both sides measured in the same round."""
    return [x / y for x, y in zip(numerators, denominators)]


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + f": median {np.median(values):.2f}"


if __name__ == "__main__":
    main()
