"""A store's split for PyTorch: datasets for torch.utils.data.DataLoader (the torch extra: pip install 'augzarr[torch]').

    from augzarr.torch import StoreDataset
    train = StoreDataset("data/aug.zarr", "train", batch_size=128, layout="CHW")
    loader = train.loader(num_workers=2)            # a DataLoader (batch_size=None: the dataset yields batches)
    for epoch in range(train.epoch, epochs):
        train.set_epoch(epoch)
        for images, labels in loader:               # uint8 [b, 3, H, W], int64 [b]
            ...
            torch.save({"model": ..., "data": train.state_dict()}, "checkpoint.pt")   # resumable mid-epoch

StoreDataset (an IterableDataset) yields whole batches. Its epoch is augzarr/plan.py's, the one every consumer
of a store reads (the Keras stream's too): chunks in a seeded order, windows of buffer_chunks chunks, rows
shuffled within a window; cut into one contiguous share per rank (torch.distributed when initialised, else
RANK and WORLD_SIZE), every rank the same number of batches, and each rank's batches into one contiguous run
per DataLoader worker (get_worker_info), so a worker reads only its own windows. Across ranks and workers every
row is served exactly once an epoch (RankPlan says when a few are left out). The batches are a function of
(seed, epoch, ranks, batch size); with workers, the DataLoader takes one from each worker in turn, so the
order they arrive in depends on num_workers as well, and on nothing else. set_epoch(e) as DistributedSampler
has; state_dict() / load_state_dict() resume mid-epoch with exactly the batches the uninterrupted loop would
have seen next (counted by the loader from dataset.loader(), or by the dataset itself without workers).

StoreRows (a map-style Dataset) gives single rows for a sampler of the user's own.

How a batch is made: a thread reads a window's chunks whole and puts its rows in the epoch's order and the
asked layout (a gather that leaves the GIL free) while the previous window is served; a batch is a view of its
window (two windows' parts joined when it straddles them). Without workers that is all: no copy in the training
loop, the Keras stream's rate. In a DataLoader worker the windows are built in shared memory, so a batch
crosses to the training process as a file descriptor, never pickled; each worker opens the store itself (the
datasets pickle its location, never an open store). Workers pay for the pages of every window twice (written
there, mapped here): on 2 shared cores they served a raw store at about half the rate of no workers
(bench/bench_torch.py), so keep num_workers=0 unless per-row transforms need the processes. An object store's
client does not survive a fork: its workers start with forkserver (dataset.loader() does so; a plain DataLoader
is told in one line). Importing this module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from augzarr.errors import OptionError, UserError

try:
    import torch
    import torch.utils.data as torch_data
except ImportError:

    class MissingExtra(UserError, ModuleNotFoundError):
        """The torch extra is not installed."""

    raise MissingExtra("augzarr.torch needs PyTorch: pip install 'augzarr[torch]'") from None

from augzarr.options import check_arguments
from augzarr.plan import RankPlan, chunk_sizes, resumed_runs
from augzarr.storage import open_storage
from augzarr.storage.objectstore import client_environment
from augzarr.store_format import (
    IMAGES,
    OpenStore,
    chunk_key,
    is_raw_layout,
    open_group,
    open_store,
    read_chunks,
    rows_per_chunk,
)
from augzarr.trainer.options import DEFAULT_BUFFER_CHUNKS, TrainOptions

LAYOUTS = {
    "HWC": "images [b, H, W, C], as stored",
    "CHW": "images [b, C, H, W], as torchvision and torch.nn.Conv2d take them",
}
# the dataset's slots in shared memory, read by DataLoader workers (persistent ones too) when an epoch's pass starts
EPOCH, START, START_WORKERS, COUNTED, UNCOUNTED = range(5)
STATE_VERSION = 1


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the number of ranks: given, else torch.distributed's when initialised, else RANK
    and WORLD_SIZE from the environment (torchrun sets them), else (0, 1)."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        else:
            found = environment_int("RANK", 0), environment_int("WORLD_SIZE", 1)
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    for name, value in (("rank", rank), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise OptionError(f"{name} must be a whole number, not {value!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise OptionError(
            f"rank {rank} of world_size {world_size}: a rank must be in [0, world_size) and world_size at least 1"
        )
    return rank, world_size


def environment_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise OptionError(
            f"environment variable {name}={text!r} is not a whole number: set it as torchrun does, or pass "
            f"{name.lower()} to the dataset"
        ) from None


def opened(store: Any) -> OpenStore:
    """An OpenStore from a location (folder or URL), an augzarr.Store or an OpenStore; a location is opened and checked here."""
    if isinstance(store, OpenStore):
        return store
    inner = getattr(store, "_store", None)  # augzarr.Store
    if isinstance(inner, OpenStore):
        return inner
    if isinstance(store, (str, os.PathLike)):
        return open_store(os.fspath(store))
    raise OptionError(
        f"store must be a store's folder or URL, an augzarr.Store or an opened store, not {type(store).__name__}"
    )


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        meanings = "; ".join(f"{name}: {meaning}" for name, meaning in LAYOUTS.items())
        raise OptionError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}: {meanings}")
    return layout


def check_transform(transform: Any) -> Callable | None:
    if transform is not None and not callable(transform):
        raise OptionError(
            "transform must be a callable (a torchvision v2 transform, or a function of one image), "
            f"not {type(transform).__name__}"
        )
    return transform


def check_split(store: OpenStore, split: str) -> None:
    if not store.has(split):
        having = [s for s in store.attrs.splits if store.has(s)]
        raise OptionError(
            f"store {store.location} has no {split} rows: choose one of {', '.join(having) or 'no split'}"
        )


def empty_batch(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; in shared memory when built in a DataLoader worker, so that handing it to the
    training process moves a file descriptor, not its bytes (torch's default_collate does the same)."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty((0,), dtype=dtype).set_(storage).view(shape)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of torch's generator for one row's transform: the same for that row of that epoch wherever it is served."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)[0])


def stack_transformed(images: torch.Tensor, transform: Callable, seeds: list[int] | None, shared: bool) -> torch.Tensor:
    """transform applied to each image (with torch's generator seeded per row when seeds are given, the caller's own
    generator state left as it was), stacked into a batch."""
    with torch.random.fork_rng(devices=[], enabled=seeds is not None):
        results = []
        for i, image in enumerate(images):
            if seeds is not None:
                torch.manual_seed(seeds[i])
            result = transform(image)
            results.append(result if isinstance(result, torch.Tensor) else torch.as_tensor(np.asarray(result)))
    out = empty_batch((len(results), *results[0].shape), results[0].dtype, shared)
    return torch.stack(results, out=out)


class _SplitSource:
    """What a dataset needs of a split, picklable: where the store is, its shape and labels. The store itself
    is opened in each process that reads (storage()), never pickled open."""

    def __init__(self, store: OpenStore, split: str):
        check_split(store, split)
        images = store.images(split)
        self.location, self.split = store.location, split
        self.rows, self.chunk_rows = int(images.shape[0]), rows_per_chunk(images)
        height, width, channels = (int(n) for n in images.shape[1:])
        self.image_shape = (height, width, channels)
        self.labels = store.labels(split)  # a byte a row (int32 past 256 classes), read whole once
        self.fork_safe = store.storage.fork_safe
        self.class_names = list(store.attrs.class_names)
        self._created_in = os.getpid()
        self._unpickled = False
        self._environment: dict[str, str] | None = None  # set when pickled for a worker of an object store
        self._opened: tuple[int, Any, Any] | None = (os.getpid(), store.storage, images)

    def __getstate__(self) -> dict:
        # a worker of an object store starts from a forkserver: it gets the client's variables of now, not the
        # forkserver's (credentials set after it started)
        environment = None if self.fork_safe else client_environment()
        return {**self.__dict__, "_opened": None, "_environment": environment}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _unpickled=True)

    def storage_and_images(self):
        """(Storage, the split's zarr images array), opened once in this process."""
        pid = os.getpid()
        if self._opened is None or self._opened[0] != pid:
            if pid != self._created_in and not self._unpickled and not self.fork_safe:
                raise UserError(
                    f"{self.location}: a DataLoader worker was forked from a process that has used this object store, "
                    "whose client does not survive a fork: make the loader with dataset.loader(...), or pass "
                    "multiprocessing_context='forkserver' to the DataLoader"
                )
            if self._environment:
                os.environ.update(self._environment)
            storage = open_storage(self.location)
            self._opened = (pid, storage, open_group(storage)[f"{self.split}/{IMAGES}"])
        return self._opened[1], self._opened[2]


@dataclass(frozen=True)
class Position:
    """Where a rank is in its epochs: `batches` of epoch `epoch` served, in the order a DataLoader of `workers` workers gives them."""

    epoch: int
    batches: int
    workers: int


class StoreDataset(torch_data.IterableDataset):
    """Batches (images uint8, labels int64 [b]) of one split of a store, for DataLoader(dataset, batch_size=None).

    store: a store's folder or URL (s3://, gs://, az://), an augzarr.Store, or an opened store.
    split: the training split is shuffled by default (shuffle=None), others come in stored order.
    batch_size, seed, buffer_chunks: train's options of those names, with its defaults.
    epoch: the epoch served until set_epoch says otherwise.
    layout: "HWC" (as stored) or "CHW" (torchvision's, torch.nn.Conv2d's).
    transform: a callable applied to each image (a tensor in `layout`) in the worker that reads it; a torchvision v2
        transform, or any function returning a tensor or an array (picklable where workers are not forked: macOS,
        Windows, object stores). torch's generator is seeded for each row by (seed, epoch, the row's place in the
        epoch), so random transforms are reproducible however the epoch is split over ranks and workers; the batch
        stacks what it returns.
    drop_last: leave out each rank's partial last batch (every batch full).
    rank, world_size: this process's share; by default torch.distributed's when initialised, else RANK and
        WORLD_SIZE from the environment, else the whole split.

    len(dataset) is the batches each rank serves an epoch: the same for every rank. A batch is a view of a window
    a thread has read and ordered (in shared memory in a DataLoader worker); no other batch shares its rows.
    """

    def __init__(
        self,
        store: Any,
        split: str = "train",
        batch_size: int = TrainOptions.batch_size,
        *,
        shuffle: bool | None = None,
        seed: int = TrainOptions.seed,
        epoch: int = 0,
        layout: str = "HWC",
        transform: Callable | None = None,
        buffer_chunks: int = DEFAULT_BUFFER_CHUNKS,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        checked = check_arguments(TrainOptions, batch_size=batch_size, seed=seed, buffer_chunks=buffer_chunks)
        for name, value in (("shuffle", shuffle), ("drop_last", drop_last)):
            if value is not None and not isinstance(value, bool):
                raise OptionError(f"{name} must be True or False, not {value!r}")
        self.source = _SplitSource(opened(store), split)
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.seed = checked["seed"]
        self.batch_size = checked["batch_size"]
        self.layout = check_layout(layout)
        self.transform = check_transform(transform)
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.plan = RankPlan(
            self.source.rows,
            self.source.chunk_rows,
            self.batch_size,
            checked["buffer_chunks"],
            self.seed if self.shuffle else None,
            self.world_size,
            drop_last,
        )
        if self.plan.batches == 0:
            raise OptionError(
                f"split {split} of {self.source.location} has {self.source.rows} rows: too few for a batch on each of "
                f"{self.world_size} ranks" + (f" with drop_last (batches of {self.batch_size})" if drop_last else "")
            )
        self._shared = torch.zeros(5, dtype=torch.int64).share_memory_()
        self._pending: Position | None = None  # a position loaded, for the next pass over its epoch
        self._pass: list[int] | None = (
            None  # [epoch, batches served, workers whose order it follows] of the pass under way
        )
        self.set_epoch(check_epoch(epoch))
        self._reader: _WindowReader | None = None

    def __len__(self) -> int:
        return self.plan.batches

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the stored images."""
        return self.source.image_shape

    # -- epochs and positions -----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch `epoch` from the next pass on (every rank must set the same); a position loaded for another epoch is dropped."""
        self.epoch = check_epoch(epoch)
        if self._pending is not None and self._pending.epoch != self.epoch:
            self._pending = None
        start = (self._pending.batches, self._pending.workers) if self._pending else (0, 1)
        self._publish(self.epoch, *start, counted=False)

    def state_dict(self) -> dict:
        """This rank's position: the epoch under way and the batches of it served (the next epoch and none when it
        was served to the end), with what the position depends on. The same on every rank at the same step."""
        if self._shared[UNCOUNTED]:
            raise UserError(
                "the dataset was read by a DataLoader's workers that augzarr cannot count: make the DataLoader with "
                "dataset.loader(...) (augzarr.torch.StoreLoader), which counts the batches it hands over"
            )
        if self._pending is not None:
            position = self._pending
        elif self._pass is not None and self._pass[0] == self.epoch:
            position = Position(*self._pass)
        else:
            position = Position(self.epoch, 0, 1)
        if position.batches >= self.plan.batches:
            position = Position(position.epoch + 1, 0, 1)
        return {
            "version": STATE_VERSION,
            "epoch": position.epoch,
            "batches": position.batches,
            "workers": position.workers,
            "plan": self.plan_fields(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position state_dict() gave: the next pass over its epoch serves exactly the batches the
        uninterrupted loop would have seen next (with any number of workers), then epochs go on as set_epoch says."""
        if (
            not isinstance(state, dict)
            or state.get("version") != STATE_VERSION
            or not isinstance(state.get("plan"), dict)
        ):
            raise UserError(
                "load_state_dict: not a position saved by augzarr.torch's state_dict() (version "
                f"{STATE_VERSION}): pass what state_dict() returned"
            )
        mine = self.plan_fields()
        saved = state["plan"]
        differing = [
            f"{name} {saved.get(name)!r} (now {value!r})" for name, value in mine.items() if saved.get(name) != value
        ]
        if differing:
            raise UserError(
                f"load_state_dict: the position was saved with {', '.join(differing)}: resume with the same store "
                "split, batch size, seed, shuffle, buffer_chunks, drop_last and number of ranks"
            )
        position = Position(check_epoch(state["epoch"]), int(state["batches"]), max(1, int(state["workers"])))
        if not 0 <= position.batches <= self.plan.batches:
            raise UserError(
                f"load_state_dict: {position.batches} batches served is outside an epoch of {self.plan.batches}"
            )
        self._pending, self._pass = position, None
        self.set_epoch(position.epoch)

    def plan_fields(self) -> dict:
        plan = self.plan
        return {
            "split": self.source.split,
            "rows": plan.rows,
            "chunk_rows": plan.chunk_rows,
            "batch_size": plan.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "buffer_chunks": plan.buffer_chunks,
            "drop_last": plan.drop_last,
            "world_size": plan.ranks,
        }

    def _publish(self, epoch: int, start: int, start_workers: int, counted: bool) -> None:
        shared = self._shared
        shared[EPOCH], shared[START], shared[START_WORKERS], shared[COUNTED] = epoch, start, start_workers, int(counted)

    def _begin_pass(self, workers: int) -> Position:
        """In the training process, as a pass over the epoch starts: where it starts (a loaded position of this
        epoch, once), told to the workers through shared memory before they start; counting starts there."""
        pending, self._pending = self._pending, None
        start = (
            pending if pending is not None and pending.epoch == self.epoch else Position(self.epoch, 0, max(1, workers))
        )
        self._publish(start.epoch, start.batches, start.workers, counted=True)
        self._shared[UNCOUNTED] = 0
        self._pass = [start.epoch, start.batches, start.workers if start.batches else max(1, workers)]
        return start

    def _end_pass(self) -> None:
        self._publish(self.epoch, 0, 1, counted=False)

    # -- batches ------------------------------------------------------------------------------------

    def __iter__(self):
        info = torch_data.get_worker_info()
        if info is None:  # in the training process: this loop hands the batches over, and counts them
            return self._counted_pass()
        epoch, start, start_workers, counted = (int(v) for v in self._shared[:UNCOUNTED].tolist())
        if not counted:
            self._shared[UNCOUNTED] = 1
        runs = resumed_runs(self.plan.batches, start, start_workers, info.num_workers)
        return self._serve(epoch, runs[info.id], shared=True)

    def _counted_pass(self):
        start = self._begin_pass(workers=1)
        runs = resumed_runs(self.plan.batches, start.batches, start.workers, 1)
        try:
            for batch in self._serve(start.epoch, runs[0], shared=False):
                self._pass[1] += 1
                yield batch
        finally:
            self._end_pass()

    def _serve(self, epoch: int, batches: list[int], shared: bool):
        """The batches, each a view of a window the reader thread has put in order and layout (in shared memory in a
        worker): no copy of a batch that lies in one window, one for a batch that straddles two."""
        reader = self._window_reader(shared)
        spans = [self.plan.batch_span(self.rank, b) for b in batches]
        reader.expect(epoch, spans)
        for start, stop in spans:
            images, labels = reader.rows(epoch, start, stop)
            if self.transform is not None:
                seeds = [sample_seed(self.seed, epoch, p) for p in range(start, stop)]
                images = stack_transformed(images, self.transform, seeds, shared)
            yield images, labels

    def _window_reader(self, shared: bool) -> _WindowReader:
        if self._reader is None or self._reader.pid != os.getpid():
            self._reader = _WindowReader(self.source, self.plan, self.layout, shared)
        return self._reader

    # -- loaders ------------------------------------------------------------------------------------

    def loader(self, num_workers: int = 0, **kwargs) -> StoreLoader:
        """A DataLoader of these batches that counts what it hands over (for state_dict()); kwargs are DataLoader's."""
        return StoreLoader(self, num_workers=num_workers, **kwargs)


def check_epoch(epoch: Any) -> int:
    if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
        raise OptionError(f"epoch must be a whole number of at least 0, not {epoch!r}")
    return int(epoch)


class _WindowReader:
    """One process's reader of a dataset's windows: the store opened here; each window's chunks read whole, then its
    rows put in the epoch's order and the asked layout, by a thread that does the next window while this one is
    served (the reads and the gathers leave the GIL to the rest). In a DataLoader worker the windows are built in
    shared memory, so a batch (a view of one) crosses to the training process as a file descriptor, not its bytes."""

    KEEP = 3  # windows held: the one served, the one read ahead, and one a batch may still straddle

    def __init__(self, source: _SplitSource, plan: RankPlan, layout: str, shared: bool):
        self.pid = os.getpid()
        self.source, self.plan, self.layout, self.shared = source, plan, layout, shared
        self.windows: OrderedDict[tuple[int, int], Future] = OrderedDict()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="augzarr-window")
        self.lock = threading.Lock()
        self.upcoming: list[tuple[int, int]] = []  # the windows a pass asks for, in order
        self.cursor = 0  # the one asked for last

    def expect(self, epoch: int, spans: list[tuple[int, int]]) -> None:
        """The windows these batches will need, in the order rows() will ask for them, to read ahead."""
        _, bounds = self.plan.windows(epoch)
        needed: list[tuple[int, int]] = []
        for start, stop in spans:
            for w in range(
                int(np.searchsorted(bounds, start, "right")) - 1, int(np.searchsorted(bounds, stop - 1, "right"))
            ):
                if not needed or needed[-1] != (epoch, w):
                    needed.append((epoch, w))
        self.upcoming, self.cursor = needed, 0

    def window(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A window's (images, labels) in the epoch's order; starts reading the next one."""
        with self.lock:
            ahead = self.upcoming[self.cursor : self.cursor + 2]
            if key in ahead:
                self.cursor += ahead.index(key)
            following = (
                self.upcoming[self.cursor + 1] if key in ahead and self.cursor + 1 < len(self.upcoming) else None
            )
            for wanted in (key, following):
                if wanted is not None:
                    if wanted not in self.windows:
                        self.windows[wanted] = self.thread.submit(self.load, *wanted)
                    self.windows.move_to_end(wanted)
            while len(self.windows) > self.KEEP:  # the least recently wanted go
                self.windows.popitem(last=False)
            future = self.windows[key]
        return future.result()

    def load(self, epoch: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        storage, array = self.source.storage_and_images()
        chunks = self.plan.window_chunks(epoch, window)
        sizes = chunk_sizes(self.source.rows, self.source.chunk_rows, chunks)
        data = np.empty((int(sizes.sum()), *self.source.image_shape), np.uint8)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        read_chunks(
            storage,
            array,
            chunks.tolist(),
            [data[at : at + n] for at, n in zip(starts, sizes.tolist())],
            decode_threads(),
        )
        every, chunk_rows = self.source.labels, self.source.chunk_rows
        labels = np.concatenate(
            [every[c * chunk_rows : c * chunk_rows + n] for c, n in zip(chunks.tolist(), sizes.tolist())]
        )
        order = self.plan.window_rows(epoch, window)
        height, width, channels = self.source.image_shape
        if self.layout == "HWC":
            images = empty_batch(data.shape, torch.uint8, self.shared)
            np.take(data, order, axis=0, out=images.numpy(), mode="clip")  # clip: no buffer, the rows are all in range
        else:  # one strided gather straight into CHW
            images = empty_batch((len(data), channels, height, width), torch.uint8, self.shared)
            torch.index_select(torch.from_numpy(data).permute(0, 3, 1, 2), 0, torch.from_numpy(order), out=images)
        ordered_labels = empty_batch((len(data),), torch.int64, self.shared)
        ordered_labels.numpy()[:] = labels[order]
        return images, ordered_labels

    def rows(self, epoch: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [start, stop) of the epoch's sequence: views of one window, or the parts of two joined."""
        _, bounds = self.plan.windows(epoch)
        w = int(np.searchsorted(bounds, start, "right")) - 1
        parts = []
        while start < stop:
            images, labels = self.window((epoch, w))
            lo, hi = start - int(bounds[w]), min(stop, int(bounds[w + 1])) - int(bounds[w])
            parts.append((images[lo:hi], labels[lo:hi]))
            start = int(bounds[w]) + hi
            w += 1
        if len(parts) == 1:
            return parts[0]
        joined = []
        for tensors in zip(*parts):
            out = empty_batch((sum(len(t) for t in tensors), *tensors[0].shape[1:]), tensors[0].dtype, self.shared)
            joined.append(torch.cat(tensors, out=out))
        return joined[0], joined[1]


class StoreLoader(torch_data.DataLoader):
    """A DataLoader of a StoreDataset's batches (batch_size=None: the dataset yields whole batches) that counts the
    batches it hands over, so dataset.state_dict() knows the position with workers too. An object store's workers
    start with forkserver (its client does not survive a fork) unless multiprocessing_context says otherwise."""

    def __init__(self, dataset: StoreDataset, num_workers: int = 0, **kwargs):
        if not isinstance(dataset, StoreDataset):
            raise OptionError(f"StoreLoader takes a StoreDataset, not {type(dataset).__name__}")
        if (
            kwargs.get("batch_size") is not None
            or kwargs.get("sampler") is not None
            or kwargs.get("batch_sampler") is not None
        ):
            raise OptionError(
                "StoreLoader: the dataset yields whole batches: give batch_size to the StoreDataset, not the loader"
            )
        if kwargs.get("in_order") is False:
            raise OptionError(
                "StoreLoader: in_order=False would hand batches over in the order workers finish them, not the epoch's"
            )
        kwargs.pop("batch_size", None)
        if num_workers and not dataset.source.fork_safe and kwargs.get("multiprocessing_context") is None:
            kwargs["multiprocessing_context"] = forkserver()
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)

    def __iter__(self):
        if self.num_workers == 0:  # the dataset's own loop counts
            return super().__iter__()
        self.dataset._begin_pass(workers=self.num_workers)  # before any worker starts the pass
        return self._counted(super().__iter__())

    def _counted(self, batches):
        dataset: StoreDataset = self.dataset
        try:
            for batch in batches:
                dataset._pass[1] += 1
                yield batch
        finally:
            dataset._end_pass()


def forkserver():
    """The forkserver context, its server importing this module first: each worker it forks starts with torch and
    augzarr imported (a worker that imports them itself takes seconds, every epoch unless persistent_workers)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class StoreRows(torch_data.Dataset):
    """Rows (image uint8 tensor in `layout`, label int) of one split of a store, by index: for a sampler of the
    user's own (DataLoader(StoreRows(...), batch_size=64, sampler=...) collates labels as int64).

    A row of a local store is read alone (its bytes in its chunk file); a batch's rows of one chunk are read
    together. From object storage each chunk a batch touches is read whole: prefer StoreDataset there.
    transform: as StoreDataset's, applied to each row as it is read (torch's generator left to the DataLoader)."""

    def __init__(self, store: Any, split: str = "train", *, layout: str = "HWC", transform: Callable | None = None):
        self.source = _SplitSource(opened(store), split)
        self.layout = check_layout(layout)
        self.transform = check_transform(transform)

    def __len__(self) -> int:
        return self.source.rows

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """The rows asked for, in that order (DataLoader's batched fetch)."""
        rows = self.source.rows
        wanted = []
        for index in indices:
            if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
                raise TypeError(f"a row index must be a whole number, not {index!r}")
            if not -rows <= index < rows:
                raise IndexError(f"row {index} is outside split {self.source.split} of {rows} rows")
            wanted.append(int(index) % rows)
        images = self.read_rows(wanted)
        out = []
        for image, index in zip(images, wanted):
            tensor = torch.from_numpy(image)
            if self.layout == "CHW":
                tensor = tensor.permute(2, 0, 1).contiguous()
            if self.transform is not None:
                tensor = self.transform(tensor)
            out.append((tensor, int(self.source.labels[index])))
        return out

    def read_rows(self, rows: list[int]) -> np.ndarray:
        storage, images = self.source.storage_and_images()
        shape, chunk_rows = self.source.image_shape, self.source.chunk_rows
        out = np.empty((len(rows), *shape), np.uint8)
        root = storage.local_path() if is_raw_layout(images) else None  # a coded chunk is decoded whole
        if root is not None:
            by_chunk: dict[int, list[int]] = {}
            for i, row in enumerate(rows):
                by_chunk.setdefault(row // chunk_rows, []).append(i)
            row_bytes = int(np.prod(shape))
            for chunk, places in by_chunk.items():
                read_rows_of_chunk(
                    root / chunk_key(images, chunk),
                    [(rows[i] % chunk_rows) * row_bytes for i in places],
                    [out[i] for i in places],
                )
            return out
        chunks = sorted({row // chunk_rows for row in rows})
        sizes = chunk_sizes(self.source.rows, chunk_rows, np.array(chunks))
        blocks = [np.empty((n, *shape), np.uint8) for n in sizes.tolist()]
        read_chunks(storage, images, chunks, blocks, decode_threads())
        where = dict(zip(chunks, blocks))
        for i, row in enumerate(rows):
            out[i] = where[row // chunk_rows][row % chunk_rows]
        return out


def decode_threads() -> int | None:
    """Threads decoding a coded store's images: the cores in the main process, one in a DataLoader worker (the
    workers, one a core, decode side by side)."""
    return None if torch_data.get_worker_info() is None else 1


def read_rows_of_chunk(path, offsets: list[int], outs: list[np.ndarray]) -> None:
    """Rows' bytes from a raw chunk file, each at its offset, into its out (the GIL released while it reads)."""
    try:
        file = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise UserError(
            f"chunk file {path} is missing: the store was damaged after it was opened; "
            "check it with inspect-aug --verify"
        ) from None
    with file:
        for offset, out in zip(offsets, outs):
            file.seek(offset)
            if file.readinto(out.data.cast("B")) != out.nbytes:
                raise UserError(
                    f"chunk file {path} is shorter than its rows: the store was damaged after it was opened; "
                    "check it with inspect-aug --verify"
                )
