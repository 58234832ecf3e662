"""What each build worker process does: decode source images, compute whole chunks.

A chunk is the unit of work and of commit: the worker computes all its rows,
writes them as one object through the store's storage (an atomic file, or one
PUT), then its marker holding the chunk's CRC-32 (store_format.write_chunk).
A chunk without a marker is recomputed on resume, and recomputing it gives the
same bytes because each row's random state derives from (seed, source index,
copy index) alone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import uuid
from pathlib import Path

import numcodecs
import numpy as np
import zarr

from augzarr.codecs import parse_spec
from augzarr.errors import UserError
from augzarr.images import (
    FIT_BEFORE_RECORDED,
    MAX_IMAGE_PIXELS,
    SKIP_HINT,
    ImageItem,
    file_digest,
    fit_to,
    native_stderr_silenced,
    read_image_file,
    shown,
)
from augzarr.storage import open_storage
from augzarr.store_format import IMAGES, crc32_hex, open_group, stored_chunk, write_chunk

from .applier import image_applier
from .policies import Policy
from .policy_check import UINT8, BadSample, explain_sample, row_fits
from .records import current_build_id
from .seeding import SampleSeeder
from .staging import (
    StagedImages,
    encode_staged,
    fetch_staged_source,
    map_source,
    open_staged,
    release_staged_source,
    source_file,
    stage_block,
)
from .tasks import ChunkResult, ChunkTask, DecodeResult, DecodeTask, WorkerConfig

_worker: WorkerState | None = None


class WorkerState:
    def __init__(self, config: WorkerConfig, check_build: bool = False):
        self.storage = open_storage(config.location)
        self.build_id = config.build_id
        self.check_build = check_build  # a cluster task: is its build still the store's before each commit?
        self.scratch = Path(config.scratch)  # where the parent staged the decoded source
        self.policy_attrs, self.seed, self.stage_scale = config.policy, config.seed, config.stage_scale
        self.pipeline = Policy.from_attrs(config.policy).pipeline
        self.seeder = SampleSeeder(self.pipeline, config.seed)
        self.augment = image_applier(self.pipeline)
        self.sources: dict[str, np.ndarray] = {}
        self.staged: dict[str, StagedImages | None] = {}
        self.arrays: dict[str, zarr.Array] = {}

    def source(self, split: str) -> np.ndarray:
        if split not in self.sources:
            # a cluster worker (no staging folder): each split fetched from the store's build area
            folder = self.scratch if self.scratch.name else fetch_staged_source(self.storage, self.build_id, split)
            self.sources[split] = map_source(folder, split, "r")
        return self.sources[split]

    def copy_source(self, split: str, index: int) -> np.ndarray:
        """The image a copy of source image `index` is cut from: as staged above the stored size where it was
        (--stage-scale), else its fitted original."""
        if self.stage_scale > 1:
            if split not in self.staged:
                self.staged[split] = open_staged(self.scratch, split, self.source(split).shape[-1])
            staged = self.staged[split]
            if staged is not None and (image := staged.image(index)) is not None:
                return image
        return self.source(split)[index]

    def bad_sample(self, split: str, index: int, copy_index: int) -> BadSample:
        """The row of (index, copy_index) broke the rule: replay it to name the transform."""
        problem = explain_sample(
            lambda: Policy.from_attrs(self.policy_attrs).pipeline,
            self.seed,
            np.array(self.copy_source(split, index)),
            index,
            copy_index,
        )
        return BadSample(self.policy_attrs["name"], problem, split, index, copy_index)

    def array(self, split: str) -> zarr.Array:
        if split not in self.arrays:  # its metadata: the chunk shape and key encoding
            self.arrays[split] = open_group(self.storage)[f"{split}/{IMAGES}"]
        return self.arrays[split]


class SourceRows:
    """Some rows of a source split, by index, standing in for the whole split: what a client needs to
    compute a canary chunk without fetching the staged source."""

    def __init__(self, rows: dict[int, np.ndarray], length: int):
        self.rows = rows
        self.shape = (length, *next(iter(rows.values())).shape)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.rows[index]


_states: dict[tuple[int, str], WorkerState] = {}
_states_lock = threading.Lock()


def state_for(config: WorkerConfig) -> WorkerState:
    """The WorkerState of a cluster worker's thread for one build: a pipeline holds its random state, so each
    thread of a multi-threaded worker needs its own."""
    key = (threading.get_ident(), repr(config))
    with _states_lock:
        state = _states.get(key)
    if state is None:
        state = WorkerState(config, check_build=True)
        with _states_lock:
            for other in [k for k in _states if k[0] == key[0]]:  # one build at a time per thread
                del _states[other]
            _states[key] = state
    return state


def release_build(location: str, build_id: str) -> None:
    """Run on every worker when a cluster build's tasks are done: drop its states (and their mappings of
    the fetched source), then the machine's copy of the source if no other process uses it."""
    with _states_lock:
        for key in [
            k for k, state in _states.items() if (state.storage.location, state.build_id) == (location, build_id)
        ]:
            del _states[key]
    release_staged_source(location, build_id)


def compute_chunk_on_cluster(config: WorkerConfig, task: ChunkTask) -> ChunkResult:
    """compute_chunk for a Dask worker's thread."""
    return compute_chunk_with(state_for(config), task)


def compute_canary(config: WorkerConfig, task: ChunkTask, source_rows: SourceRows) -> np.ndarray:
    """One chunk computed from the source rows given, nothing read from the store or written."""
    state = WorkerState(config)
    state.sources[task.from_split] = source_rows
    return compute_block(state, task)


def canary_crc(config: WorkerConfig, task: ChunkTask, source_rows: SourceRows) -> str:
    """The CRC-32 of the object this process would store for one chunk computed from the source rows given: its
    pixels encoded with the build's codec, so a worker whose encoder writes other bytes is caught too."""
    block = compute_canary(config, task, source_rows)
    return stored_chunk(parse_spec(config.codec), block, len(block))[1]


def canary_on_cluster(config: WorkerConfig, task: ChunkTask, source_rows: SourceRows) -> str:
    """canary_crc on a cluster worker."""
    return canary_crc(config, task, source_rows)


def answer_probe(location: str, folder: str) -> tuple[str | None, str | None]:
    """Run on every worker before a cluster build claims its store: whether this worker shares the store
    with the client. (the key of the reply it wrote beside the client's file, None) when it finds that file;
    (None, None) when it does not; (None, why) when it cannot read or write the store."""
    try:
        storage = open_storage(location)
        if not storage.has(f"{folder}/client"):
            return None, None
        reply = f"{folder}/{uuid.uuid4().hex}"
        storage.write(reply, b"")
        return reply, None
    except UserError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, exc.strerror or str(exc)


def image_pixel_limit() -> int:
    """The most pixels this process decodes in one image: CV_IO_MAX_IMAGE_PIXELS, from its own environment."""
    return MAX_IMAGE_PIXELS


# simplejpeg and pillow (its libwebp): the image codecs' encoders (augzarr/codecs.py encoder_versions)
DECIDING_PACKAGES = ("augzarr", "numpy", "opencv-python-headless", "albumentations", "zarr", "simplejpeg", "pillow")


def deciding_versions() -> dict[str, str | None]:
    import importlib.metadata

    found = {}
    for package in DECIDING_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def end_with_parent() -> None:
    """On Linux, the kernel kills this worker when the process that started it ends: build-aug killed alone
    (kill -9, an OOM killer) leaves no worker finishing its chunk for nobody and printing a BrokenPipeError
    traceback when it hands it over. Elsewhere a worker ends on that error, as multiprocessing's do."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the request was made
        os._exit(0)


def init_worker(config: WorkerConfig, environment: dict[str, str] | None = None) -> None:
    """A pool worker's start. environment: the object store client's variables of the build's process now (a worker
    started by a forkserver has the forkserver's, which may predate credentials set since)."""
    end_with_parent()
    os.environ.update(environment or {})
    # Ctrl-C reaches the whole process group; the parent alone reports it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    numcodecs.blosc.use_threads = False  # one process per core already
    global _worker
    _worker = WorkerState(config)


def decode_block(
    files: list[ImageItem],
    shape: tuple[int, ...],
    start: int,
    resize: str | None,
    skip_bad: bool,
    staged: list | None = None,
    stage_scale: float = 1.0,
) -> tuple[np.ndarray, list[str], list[tuple[int, str]]]:
    """Decode images (files, or rows of files) into rows [start, start + len(files)) of a source split of image shape `shape`.

    Returns (block, digests, bad): with skip_bad, an image that cannot be used leaves its row black and
    is listed in bad as (row, message); without, its message stops the build. With a list `staged`, each image is
    also appended to it as staged for its copies at up to stage_scale times the stored size (encode_staged).
    """
    height, width = shape[:2]
    block = np.zeros((len(files), *shape), np.uint8)
    digests, bad = [], []
    with native_stderr_silenced():
        for offset, file in enumerate(files):
            try:
                image, digest = read_image_file(file)
            except UserError as exc:
                if not skip_bad:
                    raise UserError(f"{exc}, {SKIP_HINT}") from None
                bad.append((start + offset, str(exc)))
                digests.append(file_digest(file))
                if staged is not None:
                    staged.append((b"", height, width))
                continue
            if staged is not None:
                staged.append(encode_staged(image, height, width, resize or FIT_BEFORE_RECORDED, stage_scale))
            if image.shape[:2] != (height, width):
                if not resize:
                    raise UserError(
                        f"images differ in size: {shown(file)} is {image.shape[1]}x{image.shape[0]}, the first is "
                        f"{width}x{height}; pass --image-size N to resize them all to NxN"
                    )
                image = fit_to(image, height, width, resize)
            block[offset] = image
            digests.append(digest)
    return block, digests, bad


def decode_files(task: DecodeTask) -> DecodeResult:
    """A pool worker's decode task: the rows go into the split's staged file."""
    split, start = task.split, task.start
    mapped = np.load(source_file(_worker.scratch, split), mmap_mode="r")
    staged = [] if task.stage_scale > 1 else None
    block, digests, bad = decode_block(
        task.items, mapped.shape[1:], start, task.resize, task.skip_bad, staged, task.stage_scale
    )
    # One write into the shared file, not row by row through the mapping: first touches of a
    # fresh file's pages cost a page fault each (~40 us a CIFAR row). Other processes see the
    # rows through their mappings at once; no fsync, which would only wait for the disk.
    with open(source_file(_worker.scratch, split), "r+b") as target:
        os.pwrite(target.fileno(), block, mapped.offset + start * block[0].nbytes)
    return DecodeResult(split, start, digests, bad, staged)


def decode_on_cluster(location: str, shape: tuple[int, ...], task: DecodeTask) -> DecodeResult:
    """decode_files for a Dask worker: the rows are staged in the store's build area."""
    block, digests, bad = decode_block(task.items, shape, task.start, task.resize, task.skip_bad)
    stage_block(storage_at(location), task.split, task.start, block)
    return DecodeResult(task.split, task.start, digests, bad)


def decode_canary(shape: tuple[int, ...], task: DecodeTask) -> tuple[str, list[tuple[int, str]]]:
    """One decode task as this process decodes it, nothing written: the CRC-32 of its rows, and the
    rows of the images it cannot use (skipped, so that an unreadable file is named, not raised)."""
    block, _, bad = decode_block(task.items, shape, task.start, task.resize, skip_bad=True)
    return crc32_hex(block), bad


def sees(item: ImageItem) -> bool:
    """Whether this worker finds the file holding a source image (a cluster's workers decode the source only if all do)."""
    return item.is_file()


_storages: dict[str, object] = {}


def storage_at(location: str):
    """One storage object per location and worker process (an object store's client is worth keeping)."""
    if location not in _storages:
        _storages[location] = open_storage(location)
    return _storages[location]


def compute_chunk(task: ChunkTask) -> ChunkResult:
    """Compute and write one chunk of a split's images (a pool worker)."""
    return compute_chunk_with(_worker, task)


def compute_chunk_with(state: WorkerState, task: ChunkTask) -> ChunkResult:
    split, chunk = task.split, task.chunk
    block = compute_block(state, task)
    if state.check_build and current_build_id(state.storage) != state.build_id:
        raise StaleBuild(
            f"{state.storage.location} is now another build's: chunk {split} {chunk} of build {state.build_id} not written"
        )
    write_chunk(state.storage, state.array(split), chunk, block, state.build_id)
    return ChunkResult(split, chunk, len(block))


class StaleBuild(Exception):
    """A cluster task of a build that was stopped and replaced (--overwrite): it must not write."""


def compute_block(state: WorkerState, task: ChunkTask) -> np.ndarray:
    """The rows of one chunk, computed, not written."""
    from_split, source_index, copy_index = task.from_split, task.source_index, task.copy_index
    source = state.source(from_split)
    shape = source.shape[1:]
    block = np.empty((len(source_index), *shape), np.uint8)
    for row, (s, k) in enumerate(zip(source_index.tolist(), copy_index.tolist())):
        if k == 0:
            block[row] = source[s]
        else:
            state.seeder.reseed(s, k)
            image = state.copy_source(from_split, s)
            # Every row is checked before it is stored: assigning would silently cast a float
            # image to uint8 or broadcast another shape. A tuple compare and a dtype identity test
            # cost well under 1 us; row_fits decides the rare case where the identity test fails.
            try:
                out = state.augment(image)
                fits = out.shape == shape and out.dtype is UINT8
            except Exception:
                raise state.bad_sample(from_split, s, k) from None
            if not fits and not row_fits(out, shape):
                raise state.bad_sample(from_split, s, k)
            block[row] = out
    return block
