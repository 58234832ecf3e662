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


def staged(storage, array: np.ndarray, client, build: str) -> float:
    """What build-aug --scheduler does when the client holds the decoded source (staging.py)."""
    from augzarr.builder.staging import stage_array

    start = time.perf_counter()
    stage_array(storage, "train", array)

    def fetch(location: str) -> int:
        from augzarr.builder.staging import fetch_staged_source
        from augzarr.builder.worker import map_source
        from augzarr.storage import open_storage

        return int(map_source(fetch_staged_source(open_storage(location), build, "train"), "train", "r").shape[0])

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
    with MotoServer() as moto, tempfile.TemporaryDirectory() as folder:
        moto.make_bucket("augzarr-bench")
        os.environ.update(moto.env)
        local, remote = open_storage(Path(folder) / "s.zarr"), open_storage("s3://augzarr-bench/s.zarr")
        with (
            LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            times = {"staged in a local store": [], "staged in S3 (moto)": [], "scattered from the client": []}
            for round_ in range(args.rounds):  # a build id per round: every round fetches afresh
                times["staged in a local store"].append(staged(local, array, client, f"local-{round_}"))
                times["staged in S3 (moto)"].append(staged(remote, array, client, f"s3-{round_}"))
                times["scattered from the client"].append(scattered(array, client))
    print(
        f"{args.images:,} images of 32x32x3 ({array.nbytes / 2**20:,.0f} MiB) to {args.workers} worker processes, "
        f"median of {args.rounds} rounds"
    )
    print("| hand-over | seconds (median) | all rounds |\n| --- | ---: | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
