"""train --tensorboard: Keras' TensorBoard callback writing into <run>/tensorboard, and a few training
images per epoch as the stream served them (after --online and --mix) as image summaries.

Open them with: tensorboard --logdir runs/<run>/tensorboard
Keras' callback writes through TensorFlow's summary writer on every backend (TensorFlow is installed
with augzarr), and tf.summary needs the tensorboard package for its scalar and image summaries.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras

from augzarr.errors import UserError

LOG_DIR = "tensorboard"  # inside the run folder
IMAGES_PER_EPOCH = 8  # the first images of each epoch's first batch
IMAGE_TAG = "training_images"


def check_available() -> None:
    """Before a run folder is claimed: without the tensorboard package tf.summary cannot write a scalar."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "--tensorboard needs the tensorboard package, which is missing here: pip install tensorboard "
            "(augzarr's dependencies include it), or train without --tensorboard"
        )


class StreamedImages(keras.callbacks.Callback):
    """At the start of each epoch, the first IMAGES_PER_EPOCH images of its first batch, read from `stream`:
    a second stream made like the training one (same seed, --online, --mix), so these are the very pixels
    the model is fed (batches are a pure function of seed, epoch and index) without disturbing its reads."""

    def __init__(self, log_dir: Path, stream, first_epoch: int):
        super().__init__()
        self.log_dir = log_dir
        self.stream = stream
        self.first_epoch = first_epoch  # the stream's start_epoch: its batch 0
        self.writer = None

    def on_epoch_begin(self, epoch, logs=None):
        import tensorflow as tf

        if self.writer is None:
            self.writer = tf.summary.create_file_writer(str(self.log_dir / "train"))
        images = self.stream[(epoch - self.first_epoch) * self.stream.batches_per_epoch][0][:IMAGES_PER_EPOCH]
        with self.writer.as_default():
            tf.summary.image(
                IMAGE_TAG,
                images,
                step=epoch,
                max_outputs=IMAGES_PER_EPOCH,
                description="the first images of the epoch's first training batch, as streamed (after --online and --mix)",
            )
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.stream.close()


def tensorboard_callbacks(run_dir: Path, image_stream, first_epoch: int) -> list:
    """Loss and accuracy (train and validation) and the learning rate per epoch, by Keras' own callback;
    then the streamed images. No graph or profile: neither exists on every backend, and both cost time."""
    log_dir = run_dir / LOG_DIR
    return [
        keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, update_freq="epoch", profile_batch=0),
        StreamedImages(log_dir, image_stream, first_epoch),
    ]
