"""The TensorFlow-native reader (trainer/tf_reader.py) yields StoreStream's batches, in its order."""

from __future__ import annotations

import numpy as np
import pytest

from augzarr.store_format import chunk_key, open_store

BATCH = 7  # divides neither the 66 training rows nor the 8-row chunks


@pytest.fixture
def store(straddling_store):
    return straddling_store


@pytest.mark.parametrize("shuffle, start_epoch", [(True, 0), (True, 1), (False, 0)])
def test_reader_yields_the_streams_batches_in_its_order(store, shuffle, start_epoch):
    from augzarr.trainer.stream import StoreStream
    from augzarr.trainer.tf_reader import store_dataset

    opened = open_store(store)
    group = opened.group
    assert group["train/images"].shape[0] == 66 and group["train/images"].chunks[0] == 8
    stream = StoreStream(opened, "train", BATCH, shuffle, seed=3, start_epoch=start_epoch, buffer_chunks=2)
    dataset = store_dataset(opened, "train", BATCH, shuffle, seed=3, start_epoch=start_epoch, buffer_chunks=2)
    batches = 3 * stream.batches_per_epoch if shuffle else stream.batches_per_epoch
    got = list(dataset.take(batches + 1).as_numpy_iterator())
    assert len(got) == batches + shuffle  # endless when shuffled, one pass when not
    for i in range(batches):
        images, labels = stream[i]
        assert got[i][0].dtype == np.uint8 and got[i][1].dtype == np.int32
        assert np.array_equal(got[i][0], images) and np.array_equal(got[i][1], labels), f"batch {i}"
    assert len(got[stream.batches_per_epoch - 1][1]) == 66 % BATCH  # the last batch of an epoch is partial
    stream.close()


def test_fit_from_the_reader_gives_the_weights_of_fit_from_the_stream(store):
    """Keras keeps one iterator over the endless dataset across epochs (steps_per_epoch), as it does
    for the stream: two epochs from either input end at the same weights."""
    import keras

    from augzarr.trainer.stream import StoreStream
    from augzarr.trainer.tf_reader import store_dataset
    from augzarr.trainer.training import seed_everything

    opened = open_store(store)
    weights = []
    for reader in (StoreStream, store_dataset):
        seed_everything(1)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3), dtype="uint8"),
                keras.layers.Rescaling(1 / 255),
                keras.layers.Flatten(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        data = reader(opened, "train", BATCH, True, seed=3, start_epoch=1, buffer_chunks=2)
        model.fit(data, steps_per_epoch=-(-66 // BATCH), epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_a_chunk_file_cut_short_after_opening_is_named(store, tmp_path):
    import shutil

    import tensorflow as tf

    from augzarr.trainer.tf_reader import store_dataset

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    opened = open_store(damaged)
    dataset = store_dataset(opened, "train", BATCH, False, buffer_chunks=2)
    file = damaged / chunk_key(opened.images("train"), 0)
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(tf.errors.InvalidArgumentError, match="damaged after it was opened") as caught:
        list(dataset.as_numpy_iterator())
    assert str(file) in str(caught.value)
