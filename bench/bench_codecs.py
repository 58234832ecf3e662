"""Which compressor for image chunks? Speed and size of each candidate on real images.

Reads CHUNKS chunks of train/images from an existing store (originals and
augmented copies, as build-aug writes them), rewrites them through zarr with
each codec into a temporary store, and reads them back. Prints medians of
REPEATS runs and ratios against no compression, measured side by side.

    python bench/bench_codecs.py --store data/aug.zarr [--chunks 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numcodecs
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from augzarr.storage import open_storage
from augzarr.store_format import open_store

CANDIDATES = {
    "none": None,
    "blosc-lz4-5": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle", typesize=1),
    "blosc-lz4hc-5": BloscCodec(cname="lz4hc", clevel=5, shuffle="noshuffle", typesize=1),
    "blosc-zstd-1": BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle", typesize=1),
    "blosc-zstd-3": BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle", typesize=1),
    "blosc-zstd-5": BloscCodec(cname="zstd", clevel=5, shuffle="noshuffle", typesize=1),
    "blosc-zstd-3-bitshuffle": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=1),
    "zstd-3": ZstdCodec(level=3),
    "gzip-1": GzipCodec(level=1),
    "gzip-6": GzipCodec(level=6),
}


def measure(data, codec, chunk_rows: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        array = zarr.create_array(
            tmp,
            shape=data.shape,
            chunks=(chunk_rows, *data.shape[1:]),
            dtype="uint8",
            compressors=codec if codec is not None else None,
            fill_value=0,
        )
        t0 = time.perf_counter()
        for start in range(0, len(data), chunk_rows):
            array[start : start + chunk_rows] = data[start : start + chunk_rows]
        t1 = time.perf_counter()
        for start in range(0, len(data), chunk_rows):
            array[start : start + chunk_rows]
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, open_storage(tmp).usage()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="data/aug.zarr")
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    numcodecs.blosc.use_threads = False  # as in build workers: one process per core
    images = open_store(args.store).images("train")
    chunk_rows = images.chunks[0]
    data = images[: args.chunks * chunk_rows]
    raw = data.nbytes
    results = {}
    for _repeat in range(args.repeats):
        for name, codec in CANDIDATES.items():  # interleaved, so machine noise hits all alike
            results.setdefault(name, []).append(measure(data, codec, chunk_rows))
    base_write = statistics.median(r[0] for r in results["none"])
    base_read = statistics.median(r[1] for r in results["none"])
    print(
        f"{len(data):,} images ({raw / 2**20:.0f} MiB raw) from {args.store}, {chunk_rows} rows per chunk, "
        f"median of {args.repeats}"
    )
    print(f"{'codec':<24} {'ratio':>6} {'write MB/s':>10} {'read MB/s':>10} {'write x none':>12} {'read x none':>11}")
    for name, runs in results.items():
        write = statistics.median(r[0] for r in runs)
        read = statistics.median(r[1] for r in runs)
        size = runs[0][2]
        print(
            f"{name:<24} {raw / size:>6.3f} {raw / write / 1e6:>10.0f} {raw / read / 1e6:>10.0f} "
            f"{write / base_write:>12.2f} {read / base_read:>11.2f}"
        )


if __name__ == "__main__":
    main()
