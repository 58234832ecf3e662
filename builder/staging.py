"""Where the decoded source waits for the workers that compute the chunks: the Staging interface, and its two forms.

LocalStaging: one file per split, <scratch>/source-<split>.npy, that this machine's worker processes map (the
store's own .build/ on a local disk, else a temporary folder). ClusterStaging (cluster.py): the store's build area.

Copies cut above the stored size (build-aug --stage-scale, on for the photo presets): beside its fitted original, each
image is staged once at up to --stage-scale times the stored size (images.staged_size: never above the image's own
size), as a JPEG of STAGE_CODEC in <scratch>/staged-<split>.jpg, one after the other, with an index of (offset,
length, height, width) a row (StagedWriter, StagedImages). JPEG, not pixels: a 1.28M-image ImageNet build would stage
~540 GB of raw pixels at its photos' own ~375 px, ~45 GB as q95 JPEG (docs/reference/build-aug.md, --stage-scale);
a worker pays one decode (~1-2 ms) a copy for it. Local builds only: a cluster build refuses it up front.

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

from augzarr.codecs import decode_image_into, encode_image, parse_spec
from augzarr.errors import UserError
from augzarr.images import fit_to, staged_size
from augzarr.store_format import BUILD_DIR

from .tasks import DecodeResult, DecodeTask

STAGED = f"{BUILD_DIR}/staged"
STAGE_ROWS = 512  # images per decode task, and rows per staged block on a cluster


STAGE_CODEC = "jpeg:95"  # q95 4:2:0: ~36 dB and 1/6 of the pixels' bytes at 224 (BENCHMARKS "Image codecs")
STAGE_SPEC = parse_spec(STAGE_CODEC)


class Staging(Protocol):
    """How a build stages its decoded source for the workers (build.stage_source drives it)."""

    def save(self, split: str, images: np.ndarray) -> None:
        """A split that arrived decoded, whole."""

    def allocate(self, split: str, shape: tuple[int, ...]) -> None:
        """Room for a split that the decode tasks fill."""

    def decode(self, tasks: list[DecodeTask]) -> Iterator[DecodeResult]:
        """Run the decode tasks (in any order), yielding each one's result as it is done."""

    def stage_above(self, split: str, rows: int) -> StagedWriter:
        """Room for a split's images staged above the stored size (--stage-scale): local staging only (a cluster
        build refuses --stage-scale before it connects)."""


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

    def stage_above(self, split: str, rows: int) -> StagedWriter:
        """Room for a split's images staged above the stored size (--stage-scale)."""
        return StagedWriter(self.scratch, split, rows)


def staged_files(scratch: Path, split: str) -> tuple[Path, Path]:
    """A split's images staged above the stored size: their JPEGs, and the index of them."""
    return scratch / f"staged-{split}.jpg", scratch / f"staged-{split}.index.npy"


def encode_staged(image: np.ndarray, height: int, width: int, fit: str, scale: float) -> tuple[bytes, int, int]:
    """A decoded source image as staged for its copies: (JPEG, height, width); no bytes when it would be staged at
    the stored size (its copies are then cut from its fitted original)."""
    size = staged_size(image.shape, height, width, fit, scale)
    if size == (height, width):
        return b"", height, width
    staged = fit_to(image, *size, fit).reshape(*size, -1)
    return encode_image(STAGE_SPEC, staged), *size


class StagedWriter:
    """Writes a split's staged images as the decode tasks finish, in any order: each JPEG appended to the data file,
    its (offset, length, height, width) in the index, saved last (a reader never finds an index without its data)."""

    def __init__(self, scratch: Path, split: str, rows: int):
        data, self.index_path = staged_files(scratch, split)
        self.index_path.unlink(missing_ok=True)
        self.file = open(data, "wb")
        self.index = np.zeros((rows, 4), np.int64)

    def add(self, start: int, staged: list[tuple[bytes, int, int]]) -> None:
        for row, (data, height, width) in enumerate(staged, start):
            self.index[row] = (self.file.tell(), len(data), height, width)
            self.file.write(data)

    def close(self) -> None:
        self.file.close()
        np.save(self.index_path, self.index)


class StagedImages:
    """A split's staged images, read one at a time by a build worker (one pread and one decode a copy)."""

    def __init__(self, scratch: Path, split: str, channels: int):
        data, index = staged_files(scratch, split)
        self.index, self.channels = np.load(index), channels
        self.fd = os.open(data, os.O_RDONLY)

    def image(self, row: int) -> np.ndarray | None:
        """Row `row` as staged; None when it was not staged above the stored size."""
        offset, length, height, width = self.index[row].tolist()
        if not length:
            return None
        out = np.empty((height, width, self.channels), np.uint8)
        decode_image_into(STAGE_SPEC, os.pread(self.fd, length, offset), out)
        return out


def open_staged(scratch: Path, split: str, channels: int) -> StagedImages | None:
    """The split's staged images; None where none were staged (a source that arrived decoded at its stored size)."""
    return StagedImages(scratch, split, channels) if staged_files(scratch, split)[1].is_file() else None


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
