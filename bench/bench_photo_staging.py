"""What staging photos above the stored size costs (build-aug --stage-scale, the photo presets): bytes and time.

For each photo of a folder: its staged size (images.staged_size, --fit crop), its staged JPEG (staging.encode_staged,
q95) against its raw pixels at that size, and the time of one photo copy cut from it (read the JPEG back, decode,
the preset) against one cut from the fitted original (no staging). Prints per-photo medians and means, and what
a source of --images photos (ImageNet-1k's 1.28M by default) would stage at those means.

    python bench/bench_photo_staging.py --photos /work/data/imagen --size 224 --limit 300
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from augzarr.builder.policies import PRESETS
from augzarr.builder.seeding import SampleSeeder
from augzarr.builder.staging import STAGE_SPEC, encode_staged
from augzarr.codecs import decode_image_into
from augzarr.images import fit_to, read_image_file

SUFFIXES = (".jpg", ".jpeg", ".png")


def per_copy_seconds(pipeline, make_input, repeats: int) -> float:
    seeder = SampleSeeder(pipeline, 0)
    started = time.perf_counter()
    for copy in range(repeats):
        seeder.reseed(0, copy + 1)
        pipeline(image=make_input())
    return (time.perf_counter() - started) / repeats


def measure(path: Path, size: int, scale: float, policy: str, repeats: int) -> dict:
    image, _ = read_image_file(path)
    original = fit_to(image, size, size, "crop")
    data, height, width = encode_staged(image, size, size, "crop", scale)
    pipeline = PRESETS[policy](size, size)

    def staged() -> np.ndarray:
        if not data:
            return original
        out = np.empty((height, width, 3), np.uint8)
        decode_image_into(STAGE_SPEC, data, out)
        return out

    return {
        "side": height,
        "jpeg": len(data) or original.nbytes,  # staged at the stored size: its copies use the original
        "raw": height * width * 3,
        "copy_staged": per_copy_seconds(pipeline, staged, repeats),
        "copy_original": per_copy_seconds(pipeline, lambda: original, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--policy", default="photo")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=1_281_167, help="the source to extrapolate to")
    args = parser.parse_args()
    files = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in SUFFIXES)
    files = files[:: max(1, len(files) // args.limit)][: args.limit]  # spread evenly over the sorted files
    rows = [measure(path, args.size, args.scale, args.policy, args.repeats) for path in files]
    for key in rows[0]:
        values = [row[key] for row in rows]
        print(f"{key:14s} median {statistics.median(values):12.6g}  mean {statistics.mean(values):12.6g}")
    for key in ("jpeg", "raw"):
        total = statistics.mean(row[key] for row in rows) * args.images / 1e9
        print(f"{args.images:,} photos staged as {key}: {total:,.0f} GB")
    fitted = args.images * args.size * args.size * 3 / 1e9
    print(f"{args.images:,} fitted originals (raw, as staged today): {fitted:,.0f} GB")


if __name__ == "__main__":
    main()
