"""What crosses a process boundary in a build: the workers' configuration, the decode and chunk tasks, their results.

Each is pickled to a pool worker or a Dask worker (on another machine), so it holds only what means the same there:
absolute paths, URLs, ImageItems (augzarr/images.py) and arrays; never an open file, storage client or source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorkerConfig:
    """One build, as every worker process sees it."""

    location: str  # the store, as a worker names it: an absolute path or a URL (build.worker_location)
    scratch: str  # the folder of the staged source (source-<split>.npy); "" on a cluster: fetched from the store
    policy: dict  # Policy.to_attrs()
    seed: int
    build_id: str = ""  # the build's id in .build/build.json; "" for a store claimed before build ids existed
    codec: str = (
        "raw"  # the images' codec spec (the store's arrays say it too; the canary, run before they exist, needs it)
    )
    stage_scale: float = 1.0  # above 1: copies are cut from the images staged above the stored size (staging.py)

    def on_cluster(self) -> WorkerConfig:
        """The configuration a Dask worker gets: no staging folder of this machine."""
        return WorkerConfig(self.location, "", self.policy, self.seed, self.build_id, self.codec, self.stage_scale)


@dataclass(frozen=True)
class DecodeTask:
    """Rows [start, start + len(items)) of a source split to decode into the staged source."""

    split: str  # the source's split: train, test or val
    start: int
    items: list  # one ImageItem per row (an absolute Path, a row of a file), read by the worker itself
    resize: str | None  # fit each image to the stored shape this way (--image-size, --fit), else refuse another size
    skip_bad: bool
    stage_scale: float = 1.0  # above 1: also stage each image for its copies at up to this many times the stored size


@dataclass(frozen=True)
class DecodeResult:
    split: str
    start: int
    digests: list[str]  # the sha256 of each row's encoded bytes
    bad: list[tuple[int, str]]  # --skip-bad: (row, message) of each item left out (its row is black)
    staged: list[tuple[bytes, int, int]] | None = None  # with stage_scale: each row as staged (staging.encode_staged)


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of a store's split to compute and commit: rows [start, start + len(source_index))."""

    split: str  # the store's split
    chunk: int
    start: int
    from_split: str  # the source split its rows come from (val rows held out of the source's train come from train)
    source_index: np.ndarray  # each row's image in that split
    copy_index: np.ndarray  # each row's copy: 0 the original, k the k-th augmented copy

    @property
    def key(self) -> str:
        return f"{self.split}-{self.chunk}"


@dataclass(frozen=True)
class ChunkResult:
    split: str
    chunk: int
    rows: int
