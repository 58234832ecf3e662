"""Training from the store must cost the same page faults per step as training from arrays in memory.

Issue 10: TensorFlow's generator pipeline (which Keras uses for a PyDataset such as StoreStream)
sets glibc's mmap threshold to 128 KiB, after which every large allocation is a fresh mmap with
page faults on every page, and training from the stream ran up to 40% slower than from arrays.
trainer/allocator.py undoes it. This guard counts minor page faults (no timing) over the same
training steps from arrays and from the stream, each in a fresh process, and fails if the
stream's median step faults many times more, as it did without the fix (13,377 faults against 1 from
arrays on a 2-core AMD EPYC; 3-50 with it).

Run as a script (python tests/test_stream_speed_guard.py STORE arrays|stream) it prints the count.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, write_image_folder

BATCH = 64  # 32x32 images: a 16-channel activation of a batch is 4 MiB, far above the 128 KiB threshold
FIRST_STEP, LAST_STEP = 5, 24  # counted steps, after tracing and warm-up
MAX_RATIO = 10.0  # stream / arrays, median step
FLOOR = 100  # faults a step from arrays is taken to have at least, so a near-zero count does not make the test fragile


def count_faults(store: str, source: str) -> int:
    """Minor page faults of the median step among steps FIRST_STEP..LAST_STEP of a fit from in-memory arrays (tf.data from
    tensors) or from StoreStream. Each in a fresh process: the setting is process-wide, applied once,
    and it only bites while the heap is still small, as in a `train` run (a fit from arrays earlier in
    the same process leaves enough free heap that large blocks rarely reach mmap)."""
    import resource

    import keras
    import numpy as np
    import tensorflow as tf

    from augzarr.store_format import open_store
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    group = opened.group
    images, labels = group["train/images"][:], group["train/labels"][:].astype(np.int32)

    class Faults(keras.callbacks.Callback):
        """Faults of each step, end to end (so a batch made between steps counts too)."""

        def __init__(self):
            super().__init__()
            self.per_step = []

        def on_train_batch_end(self, batch, logs=None):
            now = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            if FIRST_STEP <= batch <= LAST_STEP:
                self.per_step.append(now - self.last)
            self.last = now

    def fit(data) -> int:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input(images.shape[1:], dtype="uint8"),
                keras.layers.Rescaling(1 / 255),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(int(labels.max()) + 1, activation="softmax"),
            ]
        )
        model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
        faults = Faults()
        model.fit(data, steps_per_epoch=LAST_STEP + 1, epochs=1, shuffle=False, verbose=0, callbacks=[faults])
        return int(np.median(faults.per_step))  # the median step: one-off bursts (a thread starting) do not count

    if source == "arrays":
        return fit(tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(BATCH))
    stream = StoreStream(opened, "train", batch_size=BATCH, shuffle=True)
    try:
        return fit(stream.fit_input() if source == "windows" else stream)  # windows: what train feeds on TensorFlow
    finally:
        stream.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guard")
    folder = write_image_folder(root / "images", {"a": 40, "b": 40}, size=32)
    out = root / "guard.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--copies",
        "1",
        "--out",
        str(out),
        "--preview",
        "0",
        "--quiet",
        check=True,
    )
    return out


def test_stream_steps_fault_no_more_than_array_steps(store):
    # oneDNN off: TensorFlow's own kernels, which allocate their large buffers from malloc every step. That
    # is TensorFlow's default on CPUs without AVX-512 VNNI/BF16 (most AVX2 machines), where the slowdown
    # was measured; with oneDNN's cached buffers the setting costs little, and the guard would see nothing.
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}

    def measured(source: str) -> int:
        result = subprocess.run(
            [sys.executable, __file__, str(store), source],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).parent.parent,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    arrays = measured("arrays")
    bound = MAX_RATIO * max(arrays, FLOOR)
    for source in ("stream", "windows"):
        # a second fresh process where the first faulted: in one whole-suite run on 2 loaded cores (2026-12-03) one
        # process counted the patched setting's faults, never reproduced alone or under CPU load (RELIABILITY.md);
        # the lost fix faults in every process, and still fails here
        counts = [measured(source)]
        if counts[0] > bound:
            counts.append(measured(source))
        assert min(counts) <= bound, (
            f"a training step from StoreStream ({source}) took {min(counts):,} minor page faults (median of steps "
            f"{FIRST_STEP}-{LAST_STEP}; fresh processes: {counts}), from arrays {arrays:,}: the glibc mmap threshold "
            "TensorFlow sets is back in force (trainer/allocator.py)"
        )


def test_train_reports_images_per_second_every_epoch(store, tmp_path):
    """Users see what their hardware does: the rate of every epoch in its line, history.csv and the model card."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "train",
        "--store",
        str(store),
        "--model",
        "shallow",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--out",
        str(run_dir),
        check=True,
    )
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(row["images_per_second"]) > 0 for row in rows)
    epoch_lines = [line for line in result.stdout.splitlines() if "val_loss" in line]
    assert len(epoch_lines) == 2 and all("images_per_second: " in line for line in epoch_lines), result.stdout
    card = (run_dir / "model_card.md").read_text()
    median = statistics.median(float(row["images_per_second"]) for row in rows)
    assert f"- training rate: {median:,.0f} images/s (median of 2 epochs" in card


if __name__ == "__main__":
    print(json.dumps(count_faults(sys.argv[1], sys.argv[2])))
