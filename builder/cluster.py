"""build-aug --scheduler: the build's chunk tasks on a Dask cluster.

The client (build-aug itself) plans the rows, claims and locks the store, stages the decoded source,
writes the skeleton, drives the progress bar from the completed futures, and finishes the store; each
task computes one chunk and commits it into the store (store_format.write_chunk), so a task that Dask
reruns after losing its worker writes the same bytes again. The task function lives in the installed
package (worker.compute_chunk_on_cluster), and each worker thread keeps its own pipeline state.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

from augzarr.errors import OptionError, UserError

SCHEDULER_VARIABLES = ("AUGZARR_SCHEDULER", "DASK_SCHEDULER_ADDRESS")  # read in this order when --scheduler is not given
LOCAL = "local"  # --scheduler local: a LocalCluster on this machine
CONNECT_SECONDS = 10


def scheduler_address(option: str | None) -> str | None:
    return option or next((os.environ[v] for v in SCHEDULER_VARIABLES if os.environ.get(v)), None)


@contextmanager
def cluster_client(address: str, workers: int, say) -> Iterator:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise OptionError("--scheduler needs Dask's distributed scheduler: pip install 'augzarr[dask]'") from None
    cluster = None
    if address == LOCAL:
        # processes, one thread each: the chunks' work holds the GIL
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        say(f"started a local Dask cluster of {workers} workers; dashboard: {cluster.dashboard_link}")
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UserError(f"--scheduler {address}: cannot reach the Dask scheduler ({first_line(exc)}): check the address "
                            "(tcp://HOST:8786), or start one with `dask scheduler` and `dask worker`") from None
        if not client.scheduler_info().get("workers"):
            client.close()
            raise UserError(f"--scheduler {address}: the scheduler has no workers: start some with `dask worker {address}`")
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_chunks(client, config: tuple, tasks: list[tuple]) -> Iterator[tuple[str, int, int]]:
    """Submit every chunk task; yield each result as its future completes (a task's error is raised here)."""
    from distributed import as_completed

    from .worker import compute_chunk_on_cluster

    build = uuid.uuid4().hex[:8]  # keys unique to this run: a rerun never meets an old run's results
    futures = [client.submit(compute_chunk_on_cluster, config, task, key=f"augzarr-{build}-{task[0]}-{task[1]}", pure=False)
               for task in tasks]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.cancel(futures)


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
