"""train --distribute: data-parallel training over this machine's devices, with Keras' own mechanisms.

TensorFlow backend: tf.distribute.MirroredStrategy over every GPU (or, with none, every logical CPU
device); the model is built and compiled in its scope, and Keras splits each global batch between the
replicas and all-reduces the gradients. JAX backend: keras.distribution.DataParallel over
keras.distribution.list_devices() (every accelerator, else every CPU device). --batch-size is the global
batch either way. Several JAX processes (jax.distributed) each read a disjoint share of every epoch's
chunks (StoreStream's shard): Keras splits only tf.data input between processes, not a PyDataset.
"""

from __future__ import annotations

import contextlib

import keras

from augzarr.errors import OptionError


def data_parallel(devices: list[str] | None = None) -> tuple[contextlib.AbstractContextManager, list[str], tuple[int, int]]:
    """(the scope to build and compile the model in, the devices used, this process's (index, count) shard)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        chosen = devices or [d.name for d in tf.config.list_logical_devices("GPU")] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(chosen)
        return strategy.scope(), chosen, (0, 1)
    if backend == "jax":
        import jax

        chosen_devices = keras.distribution.list_devices()
        if devices:
            unknown = sorted(set(devices) - set(chosen_devices))
            if unknown:
                raise OptionError(f"--devices: {', '.join(unknown)} not among this machine's ({', '.join(chosen_devices)})")
            chosen_devices = devices
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=chosen_devices))
        return contextlib.nullcontext(), list(chosen_devices), (jax.process_index(), jax.process_count())
    raise OptionError(f"--distribute works on the tensorflow and jax backends, not {backend}")
