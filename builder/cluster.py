"""build-aug --scheduler: the build's decode and chunk tasks on a Dask cluster.

The client (build-aug itself) locks the store, checks the workers (before it claims the store: a cluster
refused leaves the store as it was), claims the store, plans the rows, writes the skeleton, drives the
progress bar from the completed futures, and finishes the store. What it sends the workers means the same
there: absolute paths (a worker's working folder is its own) and, for what the client's environment
decides (the image pixel limit), a check that the workers' environment decides the same. The workers decode
the source into the store's build area (ClusterStaging), then each chunk task computes one chunk and
commits it into the store (store_format.write_chunk), so a task that Dask reruns after losing its worker
writes the same bytes again. The task functions live in the installed package (worker.py), and each
worker thread keeps its own pipeline state.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from augzarr.errors import OptionError, UserError
from augzarr.wording import count, shown

from .tasks import ChunkResult, ChunkTask, DecodeResult, DecodeTask, WorkerConfig

if TYPE_CHECKING:
    from augzarr.images import ImageItem

    from .staging import LocalStaging

SCHEDULER_VARIABLES = (
    "AUGZARR_SCHEDULER",
    "DASK_SCHEDULER_ADDRESS",
)  # read in this order when --scheduler is not given
LOCAL = "local"  # --scheduler local: a LocalCluster on this machine
CONNECT_SECONDS = 10


def scheduler_address(option: str | None) -> str | None:
    return option or next((os.environ[v] for v in SCHEDULER_VARIABLES if os.environ.get(v)), None)


def scheduler_named(address: str) -> str:
    """The address as a message names it: by the variable it came from when the environment gives this
    address (a --scheduler of the same address reads the same), else as --scheduler."""
    variable = next((v for v in SCHEDULER_VARIABLES if os.environ.get(v)), None)
    return f"{variable}={address}" if variable and os.environ[variable] == address else f"--scheduler {address}"


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
        say(f"started a local Dask cluster of {count(workers, 'worker')}; dashboard: {cluster.dashboard_link}")
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UserError(
                f"{scheduler_named(address)}: cannot reach the Dask scheduler ({first_line(exc)}): check the address "
                "(tcp://HOST:8786), or start one with `dask scheduler` and `dask worker`"
            ) from None
        if not client.scheduler_info().get("workers"):
            client.close()
            raise UserError(
                f"{scheduler_named(address)}: the scheduler has no workers: start some with `dask worker {address}`"
            )
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def check_versions(client) -> None:
    """Before any task: every worker runs the same packages as this client, Dask's own and then those
    that decide the store's bytes, and decodes under the same image pixel limit (an environment variable:
    build-aug's is not the workers'); a worker that differs is refused, naming the package or variable."""
    from .worker import deciding_versions, image_pixel_limit

    try:
        client.get_versions(check=True)
    except ValueError as exc:  # Dask's mismatch table: its first lines name the packages
        raise UserError(
            f"the Dask cluster's workers run other versions than this client: {' '.join(str(exc).split())[:300]}"
        ) from None
    expected = deciding_versions()
    for worker, found in client.run(deciding_versions).items():
        for package, version in found.items():
            if version != expected[package]:
                raise UserError(
                    f"Dask worker {worker} has {package} {version}, this client {expected[package]}: the store's "
                    "bytes depend on it; install the same versions on every worker"
                )
    limit = image_pixel_limit()
    for worker, found in client.run(image_pixel_limit).items():
        if found != limit:
            raise UserError(
                f"Dask worker {worker} decodes images of at most {found:,} pixels, this client {limit:,}: set the same "
                "CV_IO_MAX_IMAGE_PIXELS for build-aug and every worker"
            )


def check_store_shared(client, storage, location: str) -> None:
    """Before the claim: every worker finds a file this client writes into the store, and writes one there that
    this client finds; a worker that does not share the store would stage the source and commit chunks into a
    store of its own. location: the store as the workers name it (worker_location)."""
    from augzarr.store_format import BUILD_DIR

    from .worker import answer_probe

    local = storage.local_path()
    made = local is not None and not (local / BUILD_DIR).exists()
    folder = f"{BUILD_DIR}/probe-{uuid.uuid4().hex}"
    storage.write(f"{folder}/client", b"")
    try:
        answers = client.run(answer_probe, location, folder)
        # a reply this client cannot find: the worker wrote into a store of its own
        unseen = [
            worker for worker, (reply, error) in answers.items() if not error and not (reply and storage.has(reply))
        ]
    finally:
        storage.remove(
            BUILD_DIR if made else folder
        )  # under the writer lock: a .build/ the probe made holds nothing else
    failed = {worker: error for worker, (_, error) in answers.items() if error}
    if unseen:
        if local is not None:
            raise UserError(
                f"{some_workers(unseen)} cannot see --out {location}: use a path on storage the workers share "
                "(mounted at the same path), or object storage"
            )
        failed = {worker: "it finds no object this client wrote" for worker in unseen}
    if failed:
        error = next(iter(failed.values()))
        raise UserError(
            f"{some_workers(list(failed))} cannot {'reach' if local is None else 'write in'} --out {location} ({error}): "
            + (
                "give every worker the store's credentials and endpoint in its own environment"
                if local is None
                else "use a path on storage the workers share and may write, or object storage"
            )
        )


def some_workers(workers: list[str]) -> str:
    return f"Dask worker {workers[0]}{f' and {len(workers) - 1} more' if len(workers) > 1 else ''}"


def check_canary(client, config: WorkerConfig, task: ChunkTask, source_rows) -> None:
    """Every worker computes one chunk (nothing written) to this client's exact bytes, or the cluster
    is refused naming the worker: same versions can still differ in a machine's native libraries.
    source_rows: the chunk's source rows as this client decoded them (worker.SourceRows), sent along, so
    that it runs before the store is claimed and its source staged."""
    from .worker import canary_crc, canary_on_cluster

    expected = canary_crc(config, task, source_rows)
    for worker, found in client.run(canary_on_cluster, config, task, source_rows).items():
        if found != expected:
            raise UserError(
                f"Dask worker {worker} computes other bytes for a chunk than this client (CRC-32 {found}, "
                f"expected {expected}): its machine differs in a way that changes the store; leave it out of the cluster"
            )


class ClusterStaging:
    """The decoded source staged in the store's build area (staging.py) for the cluster's workers.
    They decode the source's files themselves when every one of them can read them (a folder mounted
    at the same path everywhere); otherwise this client decodes them (`here`) and stages the result.
    Made before the store is claimed: it checks that the workers decode the first task's files to this
    client's pixels. location: the store as the workers name it (worker_location)."""

    def __init__(
        self,
        client,
        storage,
        location: str,
        here: LocalStaging,
        first_task: DecodeTask | None,
        image_shape: tuple[int, ...],
        say,
    ):
        from .worker import sees

        self.client, self.storage, self.location, self.here = client, storage, location, here
        self.shapes: dict[str, tuple[int, ...]] = {}
        probe = first_task.items[0] if first_task is not None and first_task.items else None
        blind = [w for w, found in client.run(sees, probe).items() if not found] if probe is not None else []
        self.workers_decode = probe is not None and not blind
        if blind:
            say(
                f"{some_workers(blind)} cannot read {shown(probe)}: decoding "
                "the source here and staging it in the store (mount it at the same path on every worker to decode it there)"
            )
        if self.workers_decode:
            check_decoder(client, image_shape, first_task)

    def save(self, split: str, images) -> None:
        from .staging import stage_array

        stage_array(self.storage, split, images)

    def allocate(self, split: str, shape: tuple[int, ...]) -> None:
        from .staging import announce_split

        self.shapes[split] = shape
        if self.workers_decode:
            announce_split(self.storage, split, shape)
        else:
            self.here.allocate(split, shape)

    def stage_above(self, split: str, rows: int):
        raise UserError("--stage-scale above 1 stages on the build machine only: build without --scheduler")

    def decode(self, tasks: list[DecodeTask]) -> Iterator[DecodeResult]:
        if not self.workers_decode:
            yield from self.here.decode(tasks)
            for split in self.shapes:
                self.save(split, self.here.array(split))
            return
        from distributed import as_completed

        from .worker import decode_on_cluster

        build = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(
                decode_on_cluster,
                self.location,
                self.shapes[t.split][1:],
                t,
                pure=False,
                key=f"augzarr-decode-{build}-{t.split}-{t.start}",
            )
            for t in tasks
        ]
        items = {(t.split, t.start + i): item for t in tasks for i, item in enumerate(t.items)}
        try:
            for future in as_completed(futures):
                result = future.result()
                for (
                    row,
                    message,
                ) in result.bad:  # --skip-bad: an image a worker cannot read must be one this client cannot read either
                    if readable(items[(result.split, row)]):
                        raise partial_view("a Dask worker", items[(result.split, row)], message)
                yield result
        finally:
            self.client.cancel(futures)


def check_decoder(client, shape: tuple[int, ...], task: DecodeTask) -> None:
    """Every worker reads one task's images and decodes them to this client's exact pixels."""
    from .worker import decode_canary

    expected, expected_bad = decode_canary(shape, task)
    for worker, (found, bad) in client.run(decode_canary, shape, task).items():
        unusable = [(row, message) for row, message in bad if (row, message) not in expected_bad]
        if unusable:
            row, message = unusable[0]
            raise partial_view(f"Dask worker {worker}", task.items[row - task.start], message)
        if found != expected:
            raise UserError(
                f"Dask worker {worker} decodes {shown(task.items[0])} and the files after it to other pixels than this client "
                f"(CRC-32 {found}, expected {expected}): install the same OpenCV build on every worker, or leave it out"
            )


def partial_view(who: str, file: ImageItem, message: str) -> UserError:
    """A source file this client reads and a worker cannot: a cluster fault, never a bad image to skip."""
    return UserError(
        f"{who} cannot use {shown(file)} ({message}) but this client can: "
        "mount the source at the same path, with the same files, on every worker"
    )


def readable(file: ImageItem) -> bool:
    from augzarr.images import read_image_file

    try:
        read_image_file(file)
        return True
    except UserError:
        return False


def run_chunks(client, config: WorkerConfig, tasks: list[ChunkTask]) -> Iterator[ChunkResult]:
    """Submit every chunk task; yield each result as its future completes (a task's error is raised here)."""
    from distributed import as_completed

    from .policy_check import BadSample
    from .worker import compute_chunk_on_cluster, release_build

    build = uuid.uuid4().hex[:8]  # keys unique to this run: a rerun never meets an old run's results
    futures = [
        client.submit(compute_chunk_on_cluster, config, task, key=f"augzarr-{build}-{task.key}", pure=False)
        for task in tasks
    ]
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
        with contextlib.suppress(Exception):  # best effort: a worker's next fetch removes what is left
            client.run(release_build, config.location, config.build_id)  # every worker lets go of the source it fetched


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
