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
        raise OptionError("--scheduler needs Dask's distributed scheduler: pip install 'augzarr[cluster]'") from None
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


def check_workers(client, config: tuple, task: tuple) -> None:
    """Before any task: every worker runs the same packages as this client (Dask's own, then those that
    decide the store's bytes) and computes one canary chunk to this client's exact bytes; a cluster
    that would build another store is refused, naming the package or the worker."""
    from augzarr.store_format import crc32_hex

    from .worker import WorkerState, canary_on_cluster, compute_block, deciding_versions

    try:
        client.get_versions(check=True)
    except ValueError as exc:  # Dask's mismatch table: its first lines name the packages
        raise UserError(f"the Dask cluster's workers run other versions than this client: {' '.join(str(exc).split())[:300]}") from None
    expected_crc = crc32_hex(compute_block(WorkerState(*config), task))
    expected_versions = deciding_versions()
    for worker, found in client.run(canary_on_cluster, config, task).items():
        for package, version in found["versions"].items():
            if version != expected_versions[package]:
                raise UserError(f"Dask worker {worker} has {package} {version}, this client {expected_versions[package]}: the store's "
                                "bytes depend on it; install the same versions on every worker")
        if found["crc32"] != expected_crc:
            raise UserError(f"Dask worker {worker} computes other bytes for a chunk than this client (CRC-32 {found['crc32']}, "
                            f"expected {expected_crc}): its machine differs in a way that changes the store; leave it out of the cluster")


def run_chunks(client, config: tuple, tasks: list[tuple]) -> Iterator[tuple[str, int, int]]:
    """Submit every chunk task; yield each result as its future completes (a task's error is raised here)."""
    from distributed import as_completed

    from .policy_check import BadSample
    from .worker import compute_chunk_on_cluster

    build = uuid.uuid4().hex[:8]  # keys unique to this run: a rerun never meets an old run's results
    futures = [client.submit(compute_chunk_on_cluster, config, task, key=f"augzarr-{build}-{task[0]}-{task[1]}", pure=False)
               for task in tasks]
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except BadSample:
                raise  # build names the source file
            except UserError as exc:  # the worker's own one line (its credentials, its disk), said to come from there
                raise UserError(f"on a Dask worker: {exc}") from None
            yield result
    finally:
        client.cancel(futures)


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
