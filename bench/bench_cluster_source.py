"""Getting the decoded source to a Dask cluster's workers (issue #13 point 2): staged once in the store's
build area, each worker process reading it once (what build-aug --scheduler does for an object store),
against scattering it from the client to every worker (client.scatter(..., broadcast=True)).

Times the whole hand-over until every worker holds the array, median of --rounds, the cases interleaved;
on a local disk store and on moto's S3 server (started here, in its own process).

    python bench/bench_cluster_source.py --images 50000 --workers 2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # s3server: moto in its own process


def staged(storage, array_bytes: bytes, client) -> float:
    from augzarr.builder.worker import fetch_staged_source, map_source, staged_source_key

    start = time.perf_counter()
    storage.write(staged_source_key("train"), array_bytes)

    def fetch(location: str) -> int:
        from augzarr.builder import worker
        from augzarr.storage import open_storage

        worker._fetched.clear()  # every round reads it afresh
        return int(map_source(fetch_staged_source(open_storage(location), "train"), "train", "r").shape[0])

    client.run(fetch, storage.location)
    return time.perf_counter() - start


def scattered(array: np.ndarray, client) -> float:
    start = time.perf_counter()
    future = client.scatter(array, broadcast=True)
    client.run(lambda: None)  # every worker has answered after holding it
    seconds = time.perf_counter() - start
    client.cancel(future)
    return seconds


def main() -> None:
    from distributed import Client, LocalCluster
    from s3server import MotoServer

    from augzarr.storage import open_storage

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    array = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    buffer = __import__("io").BytesIO()
    np.save(buffer, array)
    array_bytes = buffer.getvalue()
    with MotoServer() as moto, tempfile.TemporaryDirectory() as folder:
        moto.make_bucket("augzarr-bench")
        os.environ.update(moto.env)
        local, remote = open_storage(Path(folder) / "s.zarr"), open_storage("s3://augzarr-bench/s.zarr")
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            times = {"staged in a local store": [], "staged in S3 (moto)": [], "scattered from the client": []}
            for _ in range(args.rounds):
                times["staged in a local store"].append(staged(local, array_bytes, client))
                times["staged in S3 (moto)"].append(staged(remote, array_bytes, client))
                times["scattered from the client"].append(scattered(array, client))
    print(f"{args.images:,} images of 32x32x3 ({len(array_bytes) / 2**20:,.0f} MiB) to {args.workers} worker processes, "
          f"median of {args.rounds} rounds")
    print("| hand-over | seconds (median) | all rounds |\n| --- | ---: | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
