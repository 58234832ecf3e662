"""Where the decoded source waits for the workers that compute the chunks: the Staging interface, and its two forms.

LocalStaging: one file per split, <scratch>/source-<split>.npy, that this machine's worker processes map (the
store's own .build/ on a local disk, else a temporary folder). ClusterStaging (cluster.py): the store's build area.

A cluster's workers need not share the client's disk, so a cluster build stages the decoded source
where all of them can read it: in the store's own .build/ area (a shared folder or an object store),
as blocks of rows plus a small JSON giving each split's shape. The workers decode the blocks there
themselves when they can read the source's files; otherwise the client decodes and stages them. Each
machine then reads a split once into a local file that its worker processes map (fetch_staged_source);
bench/bench_cluster_source.py measures this against scattering the array from the client.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from augzarr.errors import UserError
from augzarr.store_format import BUILD_DIR

from .tasks import DecodeResult, DecodeTask

STAGED = f"{BUILD_DIR}/staged"
STAGE_ROWS = 512  # images per decode task, and rows per staged block on a cluster


class Staging(Protocol):
    """How a build stages its decoded source for the workers (build.stage_source drives it)."""

    def save(self, split: str, images: np.ndarray) -> None:
        """A split that arrived decoded, whole."""

    def allocate(self, split: str, shape: tuple[int, ...]) -> None:
        """Room for a split that the decode tasks fill."""

    def decode(self, tasks: list[DecodeTask]) -> Iterator[DecodeResult]:
        """Run the decode tasks (in any order), yielding each one's result as it is done."""


def source_file(scratch: Path, split: str) -> Path:
    return scratch / f"source-{split}.npy"


def map_source(scratch: Path, split: str, mode: str) -> np.ndarray:
    """The decoded source split, shared through a file mapping, as a plain ndarray view:
    indexing the np.memmap subclass itself costs ~15 us a row."""
    return np.asarray(np.load(source_file(scratch, split), mmap_mode=mode))


class LocalStaging:
    """The decoded source in <scratch>/source-<split>.npy, decoded by this machine's worker pool (decode_in_pool:
    the pool's decode of the tasks, build.Workers.decode)."""

    def __init__(self, scratch: Path, decode_in_pool: Callable[[list[DecodeTask]], Iterator[DecodeResult]]):
        self.scratch, self.decode_in_pool = scratch, decode_in_pool

    def save(self, split: str, images: np.ndarray) -> None:
        np.save(source_file(self.scratch, split), images)  # a plain write: no page fault per page of a mapping

    def allocate(self, split: str, shape: tuple[int, ...]) -> None:
        np.lib.format.open_memmap(source_file(self.scratch, split), mode="w+", dtype=np.uint8, shape=shape)

    def decode(self, tasks: list[DecodeTask]) -> Iterator[DecodeResult]:
        return self.decode_in_pool(tasks)

    def array(self, split: str) -> np.ndarray:
        return map_source(self.scratch, split, "r")


def shape_key(split: str) -> str:
    return f"{STAGED}/{split}.json"


def block_key(split: str, start: int) -> str:
    return f"{STAGED}/{split}/{start:012d}.npy"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def announce_split(storage, split: str, shape: tuple[int, ...]) -> None:
    """Before its blocks: the split's whole shape, so a worker can lay out the file it fetches into."""
    storage.write_json(shape_key(split), {"shape": list(shape)})


def stage_block(storage, split: str, start: int, block: np.ndarray) -> None:
    storage.write(block_key(split, start), npy_bytes(block))  # atomic: a file renamed into place, or one PUT


def stage_array(storage, split: str, images: np.ndarray) -> None:
    """A split the client holds decoded, staged block by block."""
    announce_split(storage, split, images.shape)
    for start in range(0, len(images), STAGE_ROWS):
        stage_block(storage, split, start, np.asarray(images[start : start + STAGE_ROWS]))


_fetch_lock = threading.Lock()
_fetched: dict[tuple, Path] = {}
_users: dict[Path, object] = {}  # folder -> this process's open .users file, share-locked while it uses the folder


def fetched_folder(location: str, build_id: str) -> Path:
    name = hashlib.sha256(f"{location}\0{build_id}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"{FETCHED_PREFIX}{name}"


FETCHED_PREFIX = "augzarr-staged-"


def fetch_staged_source(storage, build_id: str, split: str) -> Path:
    """The folder holding the staged split assembled into <folder>/source-<split>.npy, read from the store
    once per machine and build: the first worker process on a machine fetches it while the others wait,
    then all of them map the same file (and share its pages). Each process holds a shared lock on the
    folder's .users file while it uses it; the last to let go removes the folder (release_staged_source,
    which the client runs on every worker when the build's tasks are done; a folder a killed build left
    behind is removed by the next fetch on that machine)."""
    key = (storage.location, build_id, split)
    with _fetch_lock:
        if key in _fetched:
            return _fetched[key]
        folder = fetched_folder(storage.location, build_id)
        remove_abandoned(FETCHED_PREFIX, keep=folder)
        folder.mkdir(exist_ok=True)
        if folder not in _users:
            _users[folder] = open(folder / ".users", "a")
            fcntl.flock(_users[folder], fcntl.LOCK_SH)
        with open(folder / ".fetch", "a") as fetching:
            fcntl.flock(fetching, fcntl.LOCK_EX)  # one fetch per machine; the others wait for its file
            if not source_file(folder, split).is_file():
                assemble(storage, split, source_file(folder, split))
        _fetched[key] = folder
        return folder


def release_staged_source(location: str, build_id: str) -> None:
    """This process is done with the build's fetched source: let go of it, and remove it if no other
    process on this machine still uses it."""
    folder = fetched_folder(location, build_id)
    with _fetch_lock:
        for key in [k for k in _fetched if k[:2] == (location, build_id)]:
            del _fetched[key]
        users = _users.pop(folder, None)
        if users is not None:
            users.close()  # drops this process's shared lock
        remove_if_unused(folder)


def remove_abandoned(prefix: str, keep: Path | None = None) -> None:
    """Remove this machine's temporary folders of `prefix` that no live process holds: what a process killed
    while using one left behind (each holder keeps a shared lock on the folder's .users file)."""
    for other in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        if other != keep and other not in _users and (other / ".users").is_file():
            remove_if_unused(other)


@contextmanager
def held_temp_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder of this machine, held while in use and removed after; one a killed process
    left behind with the same prefix is removed first (remove_abandoned)."""
    remove_abandoned(prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    with open(folder / ".users", "a") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def remove_if_unused(folder: Path) -> None:
    try:
        with open(folder / ".users", "a") as users:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # granted only when no process holds it shared
            shutil.rmtree(folder, ignore_errors=True)
    except OSError:  # in use, or already gone
        pass


@atexit.register
def _release_all() -> None:
    for folder in list(_users):
        _users.pop(folder).close()
        remove_if_unused(folder)


def assemble(storage, split: str, target_path: Path) -> None:
    """The staged blocks of a split into one .npy file, renamed into place only when whole."""
    shape = tuple(storage.read_json(shape_key(split))["shape"])
    partial = target_path.with_name(f".{target_path.name}.{os.getpid()}.tmp")
    target = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    filled = 0
    for name in storage.list(f"{STAGED}/{split}"):
        file_name = name.rsplit("/", 1)[-1]
        if file_name.startswith(".") or not file_name.endswith(".npy"):
            continue  # a write cut short
        block = np.load(io.BytesIO(storage.read(name)))
        start = int(file_name.removesuffix(".npy"))
        target[start : start + len(block)] = block
        filled += len(block)
    target.flush()
    del target
    if filled != shape[0]:
        partial.unlink()
        raise UserError(
            f"{storage.location}: the staged source of split {split} has {filled} of its {shape[0]} rows: "
            "run the same build-aug command again to stage it afresh"
        )
    os.replace(partial, target_path)
