"""StoreStream's batches as a TensorFlow-native tf.data pipeline (issue #10).

Keras feeds a PyDataset to TensorFlow through from_generator: a Python call per batch, which
caps a cheap model at ~0.8x the rate of in-memory input (BENCHMARKS.md). This reader yields the
very batches StoreStream yields, in the same order, but moves the bytes in TensorFlow's C++:

  per window, one numpy call (tf.numpy_function) computes its chunks from StoreStream's own
  epoch_plan() and its rows' order with the same permutation (np.random.default_rng([seed, epoch,
  window])); tf.io.read_file + decode_raw read its raw chunk files, and one tf.gather puts the rows
  in the window's order; Dataset.rebatch cuts the windows into batches (straddling windows, the
  last batch of an epoch partial), exactly as StoreStream.__getitem__ slices them.

Only stores whose image chunks are raw files of a local store can be read so; store_dataset
returns None otherwise and the caller keeps the StoreStream.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from augzarr.store_format import OpenStore, chunk_key, is_raw_layout

from .options import DEFAULT_BUFFER_CHUNKS
from .stream import epoch_plan

# windows read ahead of the one being batched: StoreStream holds two windows; this holds about
# as many (one being read, one being cut into batches) plus the batches prefetched
PARALLEL_WINDOWS = 2


def store_dataset(
    store: OpenStore,
    split: str,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    start_epoch: int = 0,
    buffer_chunks: int = DEFAULT_BUFFER_CHUNKS,
) -> tf.data.Dataset | None:
    """Batches (images uint8 [b, H, W, C], labels int32 [b]) equal to StoreStream(store, split, ...)[i]
    for i = 0, 1, ...: endless when shuffle (epoch start_epoch, then the next, ...), one pass when not.
    None when the split's image chunks are not raw files of a local store."""
    images = store.images(split)
    root = store.storage.local_path()
    if root is None or not is_raw_layout(images) or tuple(images.chunks[1:]) != tuple(images.shape[1:]):
        return None
    if images.shape[0] == 0:
        raise ValueError(f"split {split} of the store is empty")
    reader = WindowReader(store, split, root, max(1, buffer_chunks), seed if shuffle else None)
    rows, n_windows = reader.rows, reader.n_windows
    batch_sizes = [batch_size] * (rows // batch_size) + ([rows % batch_size] if rows % batch_size else [])
    # windows epoch after epoch in one sequence, so the next epoch's first window is read ahead too;
    # rebatch cycles through one epoch's batch sizes, so the last batch of each epoch is partial and
    # none straddles two epochs, as in StoreStream
    end = np.iinfo(np.int64).max // n_windows if shuffle else start_epoch + 1
    windows = tf.data.Dataset.range(start_epoch * n_windows, end * n_windows)
    windows = windows.map(reader.read_window, num_parallel_calls=PARALLEL_WINDOWS, deterministic=True)
    return windows.rebatch(tf.constant(batch_sizes, tf.int64)).prefetch(tf.data.AUTOTUNE)


class WindowReader:
    """One split's windows (StoreStream's: buffer_chunks chunks, their rows permuted) read from its raw chunk files:
    read_window(epoch * n_windows + w) gives window w of that epoch, its rows in StoreStream's order, and their labels.
    seed None: unshuffled, the chunks and rows in order."""

    def __init__(self, store: OpenStore, split: str, root, buffer_chunks: int, seed: int | None):
        images = store.images(split)
        self.rows, self.chunk_rows, self.shape = images.shape[0], images.chunks[0], tuple(images.shape[1:])
        self.buffer_chunks, self.seed = buffer_chunks, seed
        n_chunks = -(-self.rows // self.chunk_rows)
        self.n_windows = -(-n_chunks // buffer_chunks)
        self.paths = tf.constant([str(root / chunk_key(images, c)) for c in range(n_chunks)])
        self.labels = tf.constant(store.labels(split).astype(np.int32))
        self.chunk_bytes = int(np.prod(images.chunks))

    def window_plan(self, epoch: np.int64, w: np.int64) -> tuple[np.ndarray, np.ndarray]:
        """A window's chunks, and for each of its rows in StoreStream's order the row to take from
        the window's chunk files stacked [k * chunk_rows] (the last chunk's padding left out)."""
        epoch, w = int(epoch), int(w)
        order, _ = epoch_plan(self.rows, self.chunk_rows, self.buffer_chunks, self.seed, epoch)
        chunks = order[w * self.buffer_chunks : (w + 1) * self.buffer_chunks]
        sizes = np.minimum(self.chunk_rows, self.rows - chunks * self.chunk_rows)
        stacked = np.concatenate([j * self.chunk_rows + np.arange(n) for j, n in enumerate(sizes.tolist())])
        if self.seed is not None:  # StoreStream.load_window's permutation
            stacked = stacked[np.random.default_rng([self.seed, epoch, w]).permutation(len(stacked))]
        return chunks.astype(np.int64), stacked.astype(np.int64)

    def read_chunk(self, path: tf.Tensor) -> tf.Tensor:
        data = tf.io.decode_raw(tf.io.read_file(path), tf.uint8)
        # open_store checked every size; a file cut short since then is named, not mistaken for a shape bug
        check = tf.debugging.Assert(
            tf.equal(tf.size(data), self.chunk_bytes),
            [
                "chunk file",
                path,
                f"does not hold {self.chunk_bytes:,} bytes: the store was damaged after it was opened; "
                "check it with inspect-aug --verify",
            ],
        )
        with tf.control_dependencies([check]):
            return tf.identity(data)

    def read_window(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        chunks, picked = tf.numpy_function(
            self.window_plan, [index // self.n_windows, index % self.n_windows], [tf.int64, tf.int64], stateful=False
        )
        chunks.set_shape([None]), picked.set_shape([None])
        files = tf.map_fn(
            self.read_chunk,
            tf.gather(self.paths, chunks),
            fn_output_signature=tf.TensorSpec([self.chunk_bytes], tf.uint8),
        )
        window = tf.gather(tf.reshape(files, (-1, *self.shape)), picked)
        # a picked row's chunk and offset give its row in the split, for its label
        global_rows = tf.gather(chunks, picked // self.chunk_rows) * self.chunk_rows + picked % self.chunk_rows
        return window, tf.gather(self.labels, global_rows)
