"""The decoded source, staged in the store's build area for a Dask cluster's workers.

A cluster's workers need not share the client's disk, so a cluster build stages the decoded source
where all of them can read it: in the store's own .build/ area (a shared folder or an object store),
as blocks of rows plus a small JSON giving each split's shape. The workers decode the blocks there
themselves when they can read the source's files; otherwise the client decodes and stages them. Each
worker process then reads a split once into a local file that its threads map (fetch_staged_source);
bench/bench_cluster_source.py measures this against scattering the array from the client.
"""

from __future__ import annotations

import atexit
import io
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from augzarr.errors import UserError
from augzarr.store_format import BUILD_DIR

STAGED = f"{BUILD_DIR}/staged"
STAGE_ROWS = 512  # files per decode task, and rows per staged block on a cluster


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


def fetch_staged_source(storage, build_id: str, split: str) -> Path:
    """The staged split assembled into a local <folder>/source-<split>.npy, read from the store once per
    worker process and build (its threads share it); an earlier build's copy is deleted."""
    from .worker import source_file

    key = (storage.location, build_id, split)
    with _fetch_lock:
        if key not in _fetched:
            for other in [k for k in _fetched if k[:2] != key[:2]]:  # one build at a time per worker
                shutil.rmtree(_fetched.pop(other), ignore_errors=True)
            shape = tuple(storage.read_json(shape_key(split))["shape"])
            folder = Path(tempfile.mkdtemp(prefix="augzarr-worker-source-"))
            atexit.register(shutil.rmtree, folder, True)  # a worker that stops leaves no copy of the source behind
            target = np.lib.format.open_memmap(source_file(folder, split), mode="w+", dtype=np.uint8, shape=shape)
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
                shutil.rmtree(folder, ignore_errors=True)
                raise UserError(f"{storage.location}: the staged source of split {split} has {filled} of its {shape[0]} rows: "
                                "run the same build-aug command again to stage it afresh")
            _fetched[key] = folder
        return _fetched[key]
