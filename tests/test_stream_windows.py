"""StoreStream.fit_input(): on TensorFlow, the stream's own batches in its order, handed to Keras a window
at a time (issue #10: a Python call per batch held a cheap model to ~0.8x of in-memory input)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from augzarr.store_format import chunk_key, open_store

BATCH = 7  # divides neither the 66 training rows nor the 8-row chunks: batches straddle windows


@pytest.fixture
def store(straddling_store):
    return straddling_store


@pytest.mark.parametrize("shuffle, start_epoch", [(True, 0), (True, 1), (False, 0)])
def test_fit_input_yields_the_streams_batches_in_its_order(store, shuffle, start_epoch):
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    assert opened.group["train/images"].shape[0] == 66 and opened.group["train/images"].chunks[0] == 8
    fed = StoreStream(opened, "train", BATCH, shuffle, seed=3, start_epoch=start_epoch, buffer_chunks=2)
    batches = 3 * fed.batches_per_epoch if shuffle else fed.batches_per_epoch
    got = list(fed.fit_input().take(batches + 1).as_numpy_iterator())
    fed.close()
    assert len(got) == batches + shuffle  # endless when shuffled, one pass when not
    stream = StoreStream(opened, "train", BATCH, shuffle, seed=3, start_epoch=start_epoch, buffer_chunks=2)
    for i in range(batches):
        images, labels = stream[i]
        assert got[i][0].dtype == np.uint8 and got[i][1].dtype == np.int32
        assert np.array_equal(got[i][0], images) and np.array_equal(got[i][1], labels), f"batch {i}"
    assert len(got[stream.batches_per_epoch - 1][1]) == 66 % BATCH  # the last batch of an epoch is partial
    stream.close()


def test_fit_from_fit_input_gives_the_weights_of_fit_from_the_stream(store):
    """Keras keeps one iterator across epochs (steps_per_epoch) for either input: two epochs, same weights."""
    import keras

    from augzarr.trainer.stream import StoreStream
    from augzarr.trainer.training import seed_everything

    opened = open_store(store)
    weights = []
    for windows in (False, True):
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
        stream = StoreStream(opened, "train", BATCH, True, seed=3, start_epoch=1, buffer_chunks=2)
        model.fit(
            stream.fit_input() if windows else stream,
            steps_per_epoch=stream.batches_per_epoch,
            epochs=2,
            shuffle=False,
            verbose=0,
        )
        stream.close()
        weights.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_a_chunk_cut_short_while_fitting_is_named(store, tmp_path):
    import tensorflow as tf

    from augzarr.trainer.stream import StoreStream

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    opened = open_store(damaged)
    stream = StoreStream(opened, "train", BATCH, False, buffer_chunks=2)
    file = damaged / chunk_key(opened.images("train"), 0)
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(tf.errors.OpError, match="damaged after it was opened") as caught:
        list(stream.fit_input().as_numpy_iterator())
    assert str(file) in str(caught.value)
    stream.close()


def test_per_batch_work_keeps_the_stream_itself(store):
    """--online, --mix and soft labels are applied in __getitem__, batch by batch: fit must get the stream."""
    from augzarr.trainer.mixing import BatchMix
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    for options in ({"online": ("flip",)}, {"mix": BatchMix("mixup", 1.0, 3, seed=2)}, {"soft_labels": True}):
        stream = StoreStream(opened, "train", BATCH, True, seed=3, **options)
        assert stream.fit_input() is stream, options
    assert not isinstance(StoreStream(opened, "train", BATCH, True, seed=3).fit_input(), StoreStream)  # the windows


JAX_FIT_INPUT = """
import sys, keras
from augzarr.store_format import open_store
from augzarr.trainer.stream import StoreStream
assert keras.backend.backend() == "jax", keras.backend.backend()
stream = StoreStream(open_store(sys.argv[1]), "train", 7, shuffle=True)
assert stream.fit_input() is stream
assert "tensorflow" not in sys.modules, "fit_input imported TensorFlow on JAX"
print("ok")
"""


def test_fit_input_is_the_stream_itself_on_jax(store):
    pytest.importorskip("jax")
    result = subprocess.run(
        [sys.executable, "-c", JAX_FIT_INPUT, str(store)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_train_reports_a_chunk_damaged_mid_run_in_the_streams_one_line(store, tmp_path):
    """TensorFlow wraps an exception of its input pipeline in its own error; fit under stream_errors gives
    the user the stream's line instead, naming the file and what to do."""
    import keras

    from augzarr.errors import UserError
    from augzarr.trainer.stream import StoreStream
    from augzarr.trainer.training import stream_errors

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    opened = open_store(damaged)
    stream = StoreStream(opened, "train", BATCH, True, seed=3, buffer_chunks=2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3), dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    file = damaged / chunk_key(opened.images("train"), int(stream.plan(0)[0][0]))  # the first chunk read
    file.write_bytes(file.read_bytes()[:100])
    try:
        with pytest.raises(UserError) as caught, stream_errors(stream):
            model.fit(stream.fit_input(), steps_per_epoch=stream.batches_per_epoch, epochs=1, verbose=0)
    finally:
        stream.close()
    assert str(caught.value).startswith(f"chunk file {file} has 100 bytes where ")
    assert str(caught.value).endswith("check it with inspect-aug --verify")
