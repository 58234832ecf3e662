"""Chunk-shuffled uint8 batches from one split of a store, as a Keras PyDataset.

PyDataset is Keras 3's backend-neutral input mechanism: the same stream feeds
model.fit under TensorFlow, JAX or PyTorch. On TensorFlow, train gives fit
fit_input() instead: the same batches, handed over a window at a time.

Order of an epoch (a pure function of seed, epoch and batch index, so any batch
can be recomputed and a resumed run sees the same batches): augzarr/plan.py's,
which every consumer shares: the split's chunks in a seeded random order, cut
into windows of `buffer_chunks` consecutive chunks, the rows of each window in a
seeded random order; batches cut from the windows end to end.

Only a window or two is in memory at once, whatever the store's size, and the
next window is read by a background thread while the current one is served.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import keras
import numpy as np

from augzarr.errors import UserError
from augzarr.plan import chunk_sizes, epoch_plan, shard_chunks, window_order
from augzarr.store_format import OpenStore, read_chunks, rows_per_chunk

from .allocator import restore_malloc_thresholds
from .mixing import BatchMix, one_hot
from .online import OnlineAugment
from .options import DEFAULT_BUFFER_CHUNKS


class StoreStream(keras.utils.PyDataset):
    """Batches (images uint8 [b, H, W, C], labels int32 [b]) from one split of an open store.

    shuffle=True: an endless stream, epoch after epoch in a new order; give fit
    `steps_per_epoch=stream.batches_per_epoch`. Batch i is batch start_batch + i of the stream's epochs from
    start_epoch on (epoch start_epoch + (start_batch + i) // batches_per_epoch), so fit's order does not rely on
    callbacks; start_batch > 0 starts inside an epoch (a run resumed from a checkpoint inside one).
    shuffle=False: one pass in stored order (validation, evaluation).
    online: train --online's operations (online.py), applied to each training batch as it is served.
    mix: train --mix's BatchMix (mixing.py) for training batches; soft_labels: every batch's labels as
    float32 one-hot rows [b, classes] (what a model trained on mixed labels takes, validation included).
    shard (index, count): one of several processes' disjoint shares of every epoch's chunks (train
    --distribute over several hosts); batch_multiple: the devices each batch is split over (below).
    decode_threads: a coded store's images (build-aug --codec) are decoded on this many threads (None: the
    cores), by the background reader a window ahead; the batches are the same whatever the count.
    """

    def __init__(
        self,
        store: OpenStore,
        split: str,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        start_epoch: int = 0,
        start_batch: int = 0,
        buffer_chunks: int = DEFAULT_BUFFER_CHUNKS,
        online: tuple[str, ...] = (),
        mix: BatchMix | None = None,
        soft_labels: bool = False,
        shard: tuple[int, int] = (0, 1),
        batch_multiple: int = 1,
        decode_threads: int | None = None,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.storage = store.storage
        self.images = store.images(split)
        # one byte a row, read whole: slicing zarr per chunk would decompress a 1M-row label chunk each time
        self.labels = store.labels(split).astype(np.int32)
        self.split_rows = self.images.shape[0]
        if self.split_rows == 0:
            raise ValueError(f"split {split} of the store is empty")
        self.chunk_rows = rows_per_chunk(self.images)
        self.n_chunks = -(-self.split_rows // self.chunk_rows)
        self.shard = shard
        self.rows = int(
            chunk_sizes(self.split_rows, self.chunk_rows, shard_chunks(self.n_chunks, shard)).sum()
        )  # this process's share
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.start_epoch = start_epoch
        self.start_batch = start_batch
        self.buffer_chunks = max(1, buffer_chunks)
        self.decode_threads = decode_threads
        # batch_multiple (devices sharing each batch, which must split it evenly): a training stream leaves out
        # the epoch's last rows beyond a multiple of it (fewer than the devices); a one-pass stream pads its last
        # batch with rows of weight 0 instead, so every row is judged and none twice
        self.batch_multiple = batch_multiple
        self.served_rows = self.rows - self.rows % batch_multiple if shuffle else self.rows
        self.batches_per_epoch = -(-self.served_rows // batch_size)
        self._lock = threading.Lock()
        self._windows: dict[tuple[int, int], Future] = {}
        self._reader: ThreadPoolExecutor | None = None  # started on first use, again after close()
        self.failure: UserError | None = None  # the store's fault met while reading, in its own words
        self.online = OnlineAugment(online, seed) if online and shuffle else None
        self.mix = mix if shuffle else None
        self.soft_classes = store.attrs.n_classes if soft_labels or self.mix else None

    # -- the order ----------------------------------------------------------------------------------

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunks in visiting order, first epoch position of each window plus the end)."""
        return epoch_plan(
            self.split_rows, self.chunk_rows, self.buffer_chunks, self.seed if self.shuffle else None, epoch, self.shard
        )

    def load_window(self, epoch: int, window: int) -> tuple[np.ndarray, np.ndarray]:
        order, _ = self.plan(epoch)
        chunks = order[window * self.buffer_chunks : (window + 1) * self.buffer_chunks]
        sizes = chunk_sizes(self.split_rows, self.chunk_rows, chunks)
        images = np.empty((int(sizes.sum()), *self.images.shape[1:]), self.images.dtype)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        # every chunk straight from storage into its place (fetched together from an object store), a coded one
        # decoded there on the decode threads: no copy through zarr's pipeline or a concatenation, and the GIL
        # free while a local file is read or an image decoded
        read_chunks(
            self.storage,
            self.images,
            chunks.tolist(),
            [images[at : at + n] for at, n in zip(starts, sizes.tolist())],
            self.decode_threads,
        )
        labels = np.concatenate(
            [
                self.labels[c * self.chunk_rows : c * self.chunk_rows + n]
                for c, n in zip(chunks.tolist(), sizes.tolist())
            ]
        )
        if self.shuffle:
            rows = window_order(self.seed, epoch, window, len(images))
            # np.take: a gather that leaves the GIL to the training loop (a scatter is twice as slow)
            images, labels = np.take(images, rows, axis=0), labels[rows]
        return images, labels

    def window(self, epoch: int, window: int) -> tuple[np.ndarray, np.ndarray]:
        """A window's rows, reading it now if the background thread has not; then start reading the next."""
        key = (epoch, window)
        last = len(self.plan(epoch)[1]) - 2
        upcoming = (epoch, window + 1) if window < last else ((epoch + 1, 0) if self.shuffle else (epoch, 0))
        with self._lock:
            if self._reader is None:
                self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-reader")
            for wanted in (key, upcoming):
                if wanted not in self._windows:
                    self._windows[wanted] = self._reader.submit(self.load_window, *wanted)
            future = self._windows[key]
            # the caller holds what it needs of older windows: keep memory to these two
            self._windows = {k: v for k, v in self._windows.items() if k in (key, upcoming)}
        try:
            return future.result()
        except UserError as exc:  # kept: the backend may wrap it in its own error (training.stream_errors)
            self.failure = exc
            raise

    def windows(self):
        """Every window of epoch start_epoch in order, then of the next epoch... (one pass when not shuffled):
        the rows of batch 0, 1, ... end to end."""
        epoch = self.start_epoch
        while True:
            for w in range(len(self.plan(epoch)[1]) - 1):
                restore_malloc_thresholds()  # as in __getitem__: this generator runs in TensorFlow's pipeline
                yield self.window(epoch, w)
            if not self.shuffle:
                return
            epoch += 1

    def fit_input(self):
        """What to give model.fit: on TensorFlow, these same batches in the same order as a tf.data pipeline
        fed a window at a time; the stream itself on other backends.

        Keras feeds a PyDataset to TensorFlow through from_generator, a Python call per batch that waits
        for the GIL beside the training loop's own Python: a cheap model then trains from the stream at
        ~0.8x its rate from arrays in memory (BENCHMARKS.md). Here the generator hands over whole windows
        (one call per window) and Dataset.rebatch cuts them into batches in C++, cycling through
        one epoch's batch sizes, so the last batch of each epoch is partial and none straddles two
        epochs, as in __getitem__. A damaged chunk raises from the same generator mechanism as before.
        With per-batch work (--online, --mix, soft labels: __getitem__ does it), or starting inside an epoch (the
        rest of a resumed one), it stays the stream."""
        if (
            keras.backend.backend() != "tensorflow"
            or self.start_batch
            or self.online
            or self.mix
            or self.soft_classes
            or self.served_rows != self.rows
        ):
            return self
        import tensorflow as tf

        full, last = divmod(self.rows, self.batch_size)
        sizes = tf.constant([self.batch_size] * full + ([last] if last else []), tf.int64)
        signature = (
            tf.TensorSpec((None, *self.images.shape[1:]), tf.as_dtype(self.images.dtype)),
            tf.TensorSpec((None,), tf.int32),
        )
        windows = tf.data.Dataset.from_generator(self.windows, output_signature=signature)
        return windows.rebatch(sizes).prefetch(tf.data.AUTOTUNE)

    # -- PyDataset ----------------------------------------------------------------------------------

    @property
    def num_batches(self) -> int | None:
        return None if self.shuffle else self.batches_per_epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        restore_malloc_thresholds()  # after TensorFlow's generator pipeline has slowed every large allocation (allocator.py)
        epoch, batch = divmod(self.start_batch + index, self.batches_per_epoch)
        if not self.shuffle and epoch:
            raise IndexError(index)
        epoch += self.start_epoch
        start, stop = batch * self.batch_size, min((batch + 1) * self.batch_size, self.served_rows)
        _, bounds = self.plan(epoch)
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        parts_x, parts_y = [], []
        w = first
        while start < stop:
            images, labels = self.window(epoch, w)
            lo, hi = start - bounds[w], min(stop, bounds[w + 1]) - bounds[w]
            parts_x.append(images[lo:hi])
            parts_y.append(labels[lo:hi])
            start = bounds[w] + hi
            w += 1
        x, y = (parts_x[0], parts_y[0]) if len(parts_x) == 1 else (np.concatenate(parts_x), np.concatenate(parts_y))
        if self.online:
            x = self.online(x, epoch, batch)
        if self.mix:
            return self.mix(x, y, epoch, batch)
        if self.soft_classes:
            y = one_hot(y, self.soft_classes)
        if self.batch_multiple > 1 and not self.shuffle:
            return padded_with_weights(x, y, self.batch_multiple)
        return x, y

    def close(self) -> None:
        """Stop the reader thread and drop the windows held; a later batch starts them again."""
        with self._lock:
            if self._reader is not None:
                self._reader.shutdown(wait=True, cancel_futures=True)
                self._reader = None
            self._windows = {}


def padded_with_weights(x: np.ndarray, y: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, sample weights): rows of zeros with weight 0 added up to a multiple of `multiple` rows."""
    missing = -len(x) % multiple
    weights = np.concatenate([np.ones(len(x), np.float32), np.zeros(missing, np.float32)])
    if missing:
        x = np.concatenate([x, np.zeros((missing, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros((missing, *y.shape[1:]), y.dtype)])
    return x, y, weights
