"""train --tensorboard: Keras' TensorBoard logs in the run folder, read back with TensorBoard's own reader. A run
interrupted (kill -9, Ctrl-C) and resumed logs on from its next epoch: test_train's
test_interrupted_run_resumes_to_the_requested_epochs, which trains with --tensorboard."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

SCALARS = {
    "train": {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"},
    "validation": {"epoch_loss", "epoch_accuracy"},
}


def read_logs(folder: Path) -> dict[str, tuple[str, list[tuple[int, np.ndarray]]]]:
    """tag -> (plugin, [(step, value)]): the event files as TensorBoard itself reads them (TF2 summaries are tensors)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    logs = EventAccumulator(str(folder), size_guidance={"tensors": 0})  # 0: keep every event
    logs.Reload()
    return {
        tag: (
            logs.SummaryMetadata(tag).plugin_data.plugin_name,
            [(e.step, make_ndarray(e.tensor_proto)) for e in logs.Tensors(tag)],
        )
        for tag in logs.Tags()["tensors"]
    }


def test_tensorboard_logs_scalars_and_the_streamed_images(small_store, tmp_path):
    from augzarr.store_format import open_store
    from augzarr.trainer.stream import StoreStream
    from augzarr.trainer.tensorboard_logs import IMAGE_TAG, IMAGES_PER_EPOCH
    from augzarr.trainer.training import train_run

    run_dir = (
        tmp_path / "run"
    )  # in this process (Keras loads once); the JAX test below and test_train's resume run the command
    online = ("flip", "shift", "erase")
    train_run(
        {
            "store": str(small_store),
            "model": "shallow",
            "epochs": 2,
            "batch_size": 16,
            "online": ",".join(online),
            "tensorboard": True,
        },
        out=run_dir,
        verbose=0,
        say=lambda _: None,
    )
    assert json.loads((run_dir / "run.json").read_text())["options"]["tensorboard"] is True
    logs = {split: read_logs(run_dir / "tensorboard" / split) for split in SCALARS}
    for split, tags in SCALARS.items():
        for tag in tags:
            plugin, events = logs[split][tag]
            assert plugin == "scalars" and [step for step, _ in events] == [0, 1], (split, tag)  # one value per epoch
    rates = [float(value) for _, value in logs["train"]["epoch_learning_rate"][1]]
    assert np.allclose(
        rates, [0.0005, 0.0], atol=1e-7
    )  # RMSprop's 1e-3, cosine-decayed: halfway after epoch 1, 0 at the end
    history = [line.split(",") for line in (run_dir / "history.csv").read_text().splitlines()]
    loss = [float(row[history[0].index("loss")]) for row in history[1:]]
    assert np.allclose([float(value) for _, value in logs["train"]["epoch_loss"][1]], loss, rtol=1e-5)

    plugin, images = logs["train"][IMAGE_TAG]
    assert plugin == "images" and [step for step, _ in images] == [0, 1]
    # the very pixels the model was fed in each epoch: a stream made as train makes it, --online applied (PNG keeps them exactly)
    stream = StoreStream(open_store(str(small_store)), "train", 16, shuffle=True, seed=0, online=online)
    stored = StoreStream(open_store(str(small_store)), "train", 16, shuffle=True, seed=0)
    try:
        for epoch, (_, value) in enumerate(images):
            width, height, *pngs = value  # tf.summary.image's tensor: width, height, then one PNG per image
            assert (int(width), int(height), len(pngs)) == (16, 16, IMAGES_PER_EPOCH)
            shown = np.stack([np.asarray(Image.open(io.BytesIO(png))) for png in pngs])
            index = epoch * stream.batches_per_epoch
            assert np.array_equal(shown, stream[index][0][:IMAGES_PER_EPOCH])
            assert not np.array_equal(shown, stored[index][0][:IMAGES_PER_EPOCH])  # --online changed them
    finally:
        stream.close()
        stored.close()


@pytest.mark.parametrize("backend", ["jax"])
def test_tensorboard_works_on_the_jax_backend(backend, small_store, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        "train",
        "--store",
        str(small_store),
        "--model",
        "shallow",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--tensorboard",
        "--out",
        str(run_dir),
        "--quiet",
        env={"KERAS_BACKEND": backend},
        check=True,
    )
    run = json.loads((run_dir / "run.json").read_text())
    assert run["backend"] == backend
    for split, tags in SCALARS.items():
        logs = read_logs(run_dir / "tensorboard" / split)
        assert all(logs[tag][0] == "scalars" and len(logs[tag][1]) == 1 for tag in tags), (split, sorted(logs))
    assert read_logs(run_dir / "tensorboard" / "train")["training_images"][0] == "images"
