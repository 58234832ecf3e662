"""The epoch plan: which rows of a split each consumer serves, in which order, for which rank and worker.

One plan serves every consumer alike (the Keras StoreStream, TensorFlow's window reader, augzarr.torch), so
each reads an epoch the same way. An epoch's row sequence is a pure function of the split's shape, the seed
and the epoch:
  1. the split's chunks in a seeded random order (np.random.default_rng([seed, epoch])), stored order without a seed,
  2. cut into windows of `buffer_chunks` consecutive chunks,
  3. each window's rows in a seeded random order (np.random.default_rng([seed, epoch, window])),
the windows end to end. Rows were written in a shuffled order, so a window is already a fair sample of
classes; shuffling within a window of several chunks mixes it further. A reader holds a window or two.

Shares of an epoch, for consumers that run in several processes:
  shard_chunks  a process's fixed share of the chunks, every count-th, in its own seeded order (StoreStream
                on several hosts: train --distribute).
  RankPlan      ranks, then each rank's DataLoader workers (augzarr.torch): the epoch's row sequence is cut
                into one contiguous share per rank, as even as the batch size allows, so every rank serves the
                same number of batches; each rank's batches are cut into one contiguous run per worker. A rank
                or worker reads only the windows under its own rows (a window at a boundary is read by both).
A position inside an epoch (mid-epoch resume) is the epoch and the batches a rank has served of it, with the
number of workers that served them (a DataLoader takes its workers' batches in turn: loader_order).

Imports neither Keras nor TensorFlow nor torch: every consumer uses it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@functools.lru_cache(maxsize=4)
def epoch_plan(
    rows: int, chunk_rows: int, buffer_chunks: int, seed: int | None, epoch: int, shard: tuple[int, int] = (0, 1)
) -> tuple[np.ndarray, np.ndarray]:
    """Chunks in visiting order (stored order when seed is None), and the epoch positions where windows start, plus the end.
    With a shard (index, count) of several processes, only that process's chunks, in their own seeded order."""
    chunks = shard_chunks(-(-rows // chunk_rows), shard)
    order = chunks if seed is None else chunks[np.random.default_rng([seed, epoch]).permutation(len(chunks))]
    sizes = chunk_sizes(rows, chunk_rows, order)
    window_sizes = np.add.reduceat(sizes, np.arange(0, len(order), buffer_chunks))
    return order, np.concatenate([[0], np.cumsum(window_sizes)])


def window_order(seed: int, epoch: int, window: int, rows: int) -> np.ndarray:
    """The order of a window's rows (as its chunks' rows lie end to end) in a shuffled epoch."""
    return np.random.default_rng([seed, epoch, window]).permutation(rows)


def shard_chunks(n_chunks: int, shard: tuple[int, int]) -> np.ndarray:
    """A process's fixed share of a split's chunks: every count-th from its index (all of them for (0, 1)),
    so the processes together read each chunk exactly once an epoch, each the same share every epoch."""
    index, count = shard
    return np.arange(index, n_chunks, count)


def chunk_sizes(rows: int, chunk_rows: int, chunks: np.ndarray) -> np.ndarray:
    """Rows in each of these chunks (the split's last chunk may be partial)."""
    return np.minimum(chunk_rows, rows - np.asarray(chunks) * chunk_rows)


@dataclass(frozen=True)
class RankPlan:
    """Every rank's batches of each epoch of a split: the same number for every rank, all of batch_size rows
    but each rank's last. The epoch's rows are shared out as evenly as that allows, so every row is served
    exactly once an epoch, except when the rows past the last full step (a batch on every rank) are fewer than
    the ranks: then those few are left out of that epoch (other rows each epoch, the order being new).
    drop_last: each rank's partial last batch is left out too (every batch full).
    seed None: stored order, no shuffling."""

    rows: int
    chunk_rows: int
    batch_size: int
    buffer_chunks: int
    seed: int | None
    ranks: int = 1
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.rows < 1 or self.chunk_rows < 1 or self.batch_size < 1 or self.buffer_chunks < 1 or self.ranks < 1:
            raise ValueError(
                f"a plan needs rows, chunk rows, batch size, buffer chunks and ranks of at least 1: {self}"
            )

    @functools.cached_property
    def batches(self) -> int:
        """Batches each rank serves an epoch."""
        step = self.ranks * self.batch_size
        full, rest = divmod(self.rows, step)
        return full if self.drop_last or rest < self.ranks else full + 1

    @functools.cached_property
    def share_rows(self) -> np.ndarray:
        """Rows each rank serves an epoch: whole batches, and its part of the last step's rows."""
        if self.batches == 0:
            return np.zeros(self.ranks, np.int64)
        before_last = (self.batches - 1) * self.batch_size
        last_step = min(self.rows - before_last * self.ranks, self.ranks * self.batch_size)
        if self.drop_last:
            last_step = self.ranks * self.batch_size
        return before_last + last_step // self.ranks + (np.arange(self.ranks) < last_step % self.ranks)

    @property
    def served_rows(self) -> int:
        """Rows served an epoch by all ranks together."""
        return int(self.share_rows.sum())

    def rank_span(self, rank: int) -> tuple[int, int]:
        """The rank's share: positions [start, stop) of the epoch's row sequence."""
        start = int(self.share_rows[:rank].sum())
        return start, start + int(self.share_rows[rank])

    def batch_span(self, rank: int, batch: int) -> tuple[int, int]:
        """Positions [start, stop) of the epoch's row sequence in the rank's batch."""
        start, stop = self.rank_span(rank)
        return start + batch * self.batch_size, min(start + (batch + 1) * self.batch_size, stop)

    def windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """epoch_plan for this split: (chunks in visiting order, first position of each window plus the end)."""
        return epoch_plan(self.rows, self.chunk_rows, self.buffer_chunks, self.seed, epoch)

    def window_chunks(self, epoch: int, window: int) -> np.ndarray:
        order, _ = self.windows(epoch)
        return order[window * self.buffer_chunks : (window + 1) * self.buffer_chunks]

    def window_rows(self, epoch: int, window: int) -> np.ndarray:
        """The order of the window's rows, as its chunks' rows lie end to end (stored order without a seed)."""
        _, bounds = self.windows(epoch)
        rows = int(bounds[window + 1] - bounds[window])
        return np.arange(rows) if self.seed is None else window_order(self.seed, epoch, window, rows)


def worker_runs(batches: int, workers: int) -> list[range]:
    """Each DataLoader worker's batches of a rank's epoch: a contiguous run each, so a worker reads its own windows."""
    workers = max(1, workers)
    return [range(batches * w // workers, batches * (w + 1) // workers) for w in range(workers)]


def loader_order(runs: list) -> list[tuple[int, int]]:
    """(worker, batch) in the order a DataLoader yields them: one batch from each worker in turn, starting with
    worker 0, a worker that has run out skipped (torch's DataLoader with in_order=True, the default)."""
    order: list[tuple[int, int]] = []
    taken = [0] * len(runs)
    while len(order) < sum(len(run) for run in runs):
        for worker, run in enumerate(runs):
            if taken[worker] < len(run):
                order.append((worker, run[taken[worker]]))
                taken[worker] += 1
    return order


def resumed_runs(batches: int, served: int, workers_before: int, workers_now: int) -> list[list[int]]:
    """Each worker's batches for the rest of an epoch of which `served` batches were yielded by a DataLoader of
    workers_before workers, such that a DataLoader of workers_now workers yields exactly the batches the
    uninterrupted one would have yielded next. With as many workers as before, each keeps its own run (the
    runs rotated so that the one due next comes first, as a DataLoader starts with worker 0); with another
    number, the rest is dealt out in turn, so each worker reads most windows until the epoch ends."""
    workers_before, workers_now = max(1, workers_before), max(1, workers_now)
    if not 0 <= served <= batches:
        raise ValueError(f"a position of {served} batches is outside an epoch of {batches}")
    if served == 0:
        return [list(run) for run in worker_runs(batches, workers_now)]
    runs = worker_runs(batches, workers_before)
    order = loader_order(runs)
    rest = [batch for _, batch in order[served:]]
    if workers_now != workers_before:
        return [rest[w::workers_now] for w in range(workers_now)]
    if not rest:
        return [[] for _ in range(workers_now)]
    taken = [0] * workers_before
    for worker, _ in order[:served]:
        taken[worker] += 1
    due = order[served][0]
    return [list(runs[(due + w) % workers_before][taken[(due + w) % workers_before] :]) for w in range(workers_now)]
