"""build-aug on a Dask cluster against the local worker pool (issue #13's performance point), and the
per-chunk figures a cluster's wall time can be predicted from.

Part 1, side by side in every round, the cases interleaved, median of --rounds:
  pool       build-aug --workers 2
  dask-local build-aug --scheduler local --workers 2 (starts a LocalCluster of 2 single-threaded workers)
  dask-addr  build-aug --scheduler ADDRESS of a LocalCluster of 2 single-threaded workers started once here
             (what a cluster pays per build without its start-up)
Part 2, for the model: one image's decode (a JPEG of ImageNet's typical 500x375, resized to 224x224) and
augmentation at 224x224 (--policy), one process, the best of --repeats; the rows and bytes of a 224x224
chunk; the scheduler's cost per task (2,000 empty tasks through the same cluster). --rounds 0: part 2 only.

    python bench/bench_cluster_build.py --images /tmp/cifar --limit 50000 --copies 5 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def timed_build(images: str, out: Path, args, *how: str) -> float:
    command = [
        str(BIN / "build-aug"),
        "--source",
        images,
        "--out",
        str(out),
        "--copies",
        str(args.copies),
        "--policy",
        args.policy,
        "--limit",
        str(args.limit),
        "--preview",
        "0",
        "--quiet",
        *how,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


def per_image_costs(policy_name: str, repeats: int = 200) -> dict:
    import cv2

    from augzarr.builder.applier import image_applier
    from augzarr.builder.policies import load_policy
    from augzarr.builder.seeding import SampleSeeder
    from augzarr.images import read_image_file, resize_to

    rng = np.random.default_rng(0)
    # a photo-like image (smooth gradients plus noise) compresses as photos do, not as white noise
    y, x = np.mgrid[0:375, 0:500]
    photo = np.stack([(x * 0.5 + y * 0.2) % 256, (y * 0.6) % 256, (x * 0.3 + 40) % 256], -1) + rng.normal(
        0, 12, (375, 500, 3)
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "photo.jpg"
        cv2.imwrite(
            str(path),
            cv2.cvtColor(np.clip(photo, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 90],
        )
        jpeg_bytes = path.stat().st_size
        start = time.perf_counter()
        for _ in range(repeats):
            image = resize_to(read_image_file(path)[0], 224, 224)
        decode = (time.perf_counter() - start) / repeats
    pipeline = load_policy(policy_name, (224, 224, 3)).pipeline
    seeder, augment = SampleSeeder(pipeline, 0), image_applier(pipeline)
    start = time.perf_counter()
    for k in range(repeats):
        seeder.reseed(k, 1)
        augment(image)
    return {"jpeg_bytes": jpeg_bytes, "decode_s": decode, "augment_s": (time.perf_counter() - start) / repeats}


def main() -> None:
    from distributed import Client, LocalCluster

    from augzarr.store_format import default_chunk_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="an image folder (the CIFAR-10 JPEGs)")
    parser.add_argument("--limit", type=int, default=50_000)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--policy", default="crop-flip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="part 2's measurements: the best of this many")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    if args.rounds:
        times: dict[str, list[float]] = {"pool": [], "dask-local": [], "dask-addr": []}
        with (
            tempfile.TemporaryDirectory() as folder,
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        ):
            out = Path(folder) / "aug.zarr"
            for _ in range(args.rounds):
                times["pool"].append(timed_build(args.images, out, args, "--workers", "2"))
                times["dask-local"].append(
                    timed_build(args.images, out, args, "--scheduler", "local", "--workers", "2")
                )
                times["dask-addr"].append(timed_build(args.images, out, args, "--scheduler", cluster.scheduler_address))
        print(
            f"{args.limit:,} images x {args.copies} copies, --policy {args.policy}; {cpu}, {len(os.sched_getaffinity(0))} "
            f"cores; median of {args.rounds} rounds, interleaved"
        )
        print("| build | seconds (median) | all rounds | against the pool |\n| --- | ---: | --- | ---: |")
        pool = statistics.median(times["pool"])
        for name, values in times.items():
            print(
                f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
                f"{statistics.median(values) / pool:.2f}x |"
            )
    costs = [per_image_costs(args.policy) for _ in range(args.repeats)]
    decode, augment = min(c["decode_s"] for c in costs), min(c["augment_s"] for c in costs)
    rows = default_chunk_rows((224, 224, 3))
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.gather(client.map(int, range(100)))  # warm
        start = time.perf_counter()
        client.gather(client.map(int, range(2000)))
        per_task = (time.perf_counter() - start) / 2000
    print(
        f"\nat 224x224 (best of {args.repeats}): decode {decode * 1e3:.2f} ms an image (a {costs[0]['jpeg_bytes'] / 1e3:.0f} kB JPEG "
        f"of 500x375, resized), augment {augment * 1e3:.3f} ms a copy ({args.policy}); a chunk is {rows} rows, "
        f"{rows * 224 * 224 * 3 / 2**20:.1f} MiB raw (stored raw); Dask: {per_task * 1e3:.2f} ms a task, end to end, 2 workers"
    )


if __name__ == "__main__":
    main()
