"""build-aug against (a) the notebook's ImageDataGenerator.flow and (b) the compute floor.

All three produce COPIES augmented copies of the same decoded images, side by side in
one run: (a) Keras' legacy ImageDataGenerator with the notebook's settings, in memory;
(b) a single-process loop of the notebook albumentations policy over images already
decoded in memory; build-aug end to end (decode JPEGs, augment, write, previews) with
2 workers and --val-fraction 0, so it augments as many images as (a) and (b).

    python bench/bench_build.py --images /tmp/cifar/train [--limit 50000] [--copies 5]
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
    args = [str(bin_dir / "build-aug"), "--source", images, "--out", str(out / "aug.zarr"), "--copies", str(copies),
            "--val-fraction", "0", "--workers", str(workers), "--limit", str(limit), "--preview-dir", str(out / "preview"), "--quiet"]
    start = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True)
    parser.add_argument("--limit", type=int, default=50000)
    parser.add_argument("--copies", type=int, default=5)
    args = parser.parse_args()
    from builder.policies import load_policy
    from builder.sources import open_source
    from builder.decode import read_image_file

    source = open_source(args.images, limit=args.limit)
    decoded = np.stack([read_image_file(f)[0] for f in source.train.files])
    n = len(decoded) * args.copies
    print(f"{len(decoded):,} images x {args.copies} copies = {n:,} augmented images", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    build_s = timed_build(args.images, tmp / "b2", args.copies, args.limit, 2)
    shutil.rmtree(tmp / "b2")

    pipeline = load_policy("notebook", decoded.shape[1:]).pipeline
    start = time.perf_counter()
    for _ in range(args.copies):
        for image in decoded:
            pipeline(image=image)
    floor_s = time.perf_counter() - start

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                                   zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")
    start = time.perf_counter()
    produced = []
    for batch in generator.flow(decoded, batch_size=len(decoded), shuffle=False):
        produced.append(batch.astype(np.uint8))
        if len(produced) == args.copies:
            break
    idg_s = time.perf_counter() - start

    print(f"{'method':<48} {'seconds':>8} {'images/s':>9}")
    for name, s in [("(a) ImageDataGenerator.flow, in memory", idg_s), ("(b) albumentations loop, 1 process (floor)", floor_s),
                    ("build-aug --workers 2, end to end", build_s)]:
        print(f"{name:<48} {s:>8.1f} {n / s:>9,.0f}")
    print(f"build-aug speed-up over (a): {idg_s / build_s:.2f}x (target >= 4)")
    print(f"build-aug / ((b) / 2): {build_s / (floor_s / 2):.2f} (target <= 1.25)")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
