"""train --distribute: data-parallel training over this machine's devices, with Keras' own mechanisms.

TensorFlow backend: tf.distribute.MirroredStrategy over every GPU (or, with none, every logical CPU
device); the model is built and compiled in its scope, and Keras splits each global batch between the
replicas and all-reduces the gradients. JAX backend: keras.distribution.DataParallel over
keras.distribution.list_devices() (every accelerator, else every CPU device). --batch-size is the global
batch either way. torch backend: Keras' fit trains on one device there (keras.distribution has no torch
implementation, and fit does not wrap a model in DistributedDataParallel), the one Keras chose
(KERAS_TORCH_DEVICE, else the accelerator, else the CPU): --distribute that finds that one device trains on it
and says so, as on the other backends, and a machine with several accelerators is refused in one line. Several JAX processes (jax.distributed) each read a disjoint share of every epoch's
chunks (StoreStream's shard): Keras splits only tf.data input between processes, not a PyDataset.

plan_devices settles the devices first and changes nothing, so train can still refuse the run before it
claims a run folder; activate then sets the strategy up. Every name in --devices must be one of this
machine's devices (TensorFlow reads "gpu:0", "GPU:0", "/device:GPU:0" alike; JAX names them "cpu:0",
"gpu:0"): MirroredStrategy would otherwise take an absent "gpu:7" and quietly train on the CPU.
A one-device strategy only slows training down (7-35x on a CPU in issue #21), so --distribute that finds
a single device trains on it without one and says so; --devices naming a single device is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import keras

from augzarr.errors import OptionError


@dataclass(frozen=True)
class Placement:
    """Where a run trains. devices: with distributed, those each global batch is split over; with --distribute on a
    one-device machine, that device, trained on without a strategy; () without --distribute (Keras' default device)."""

    devices: tuple[str, ...] = ()
    distributed: bool = False

    @property
    def batch_multiple(self) -> int:
        """The devices each batch must split evenly over: JAX shards every batch evenly, TensorFlow splits any."""
        return len(self.devices) if self.distributed and keras.backend.backend() == "jax" else 1


PLAIN = Placement()


def plan_devices(requested: list[str] | None, warn: Callable[[str], None]) -> Placement:
    """--distribute's devices: those named in `requested` (each matched to one of this machine's, or an OptionError
    naming the unknown ones and listing the real ones), else every accelerator, else every CPU device.
    Sets nothing up (activate does): a refusal here leaves the process as it was."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus, cpus = ([d.name for d in tf.config.list_logical_devices(kind)] for kind in ("GPU", "CPU"))
        available, default, match = gpus + cpus, gpus or cpus, tensorflow_device
    elif backend == "jax":
        available = default = keras.distribution.list_devices()
        match = jax_device
    elif backend == "torch":
        available, default = torch_devices()
        match = torch_device
    else:
        raise OptionError(f"--distribute works on the tensorflow, jax and torch backends, not {backend}")
    chosen = default
    if requested:
        found = {name: match(name, available) for name in requested}
        unknown = [name for name, device in found.items() if device is None]
        if unknown:
            raise OptionError(f"--devices: {', '.join(unknown)} not among this machine's ({', '.join(available)})")
        chosen = list(dict.fromkeys(found.values()))  # two spellings of one device count once
        if len(chosen) == 1:  # the plain path could not honour a device other than the default one
            raise OptionError(
                f"--devices names one device ({', '.join(requested)}), and --distribute splits each batch over two or more: "
                f"name two or more of this machine's ({', '.join(available)}), or train without --distribute"
            )
    if backend == "torch" and len(chosen) > 1:
        raise OptionError(torch_refusal(chosen))
    if len(chosen) == 1:
        warn(
            f"--distribute: this machine has one device ({chosen[0]}); training on it without a distribution strategy, "
            "which would only slow it down"
        )
        return Placement((chosen[0],), distributed=False)
    return Placement(tuple(chosen), distributed=True)


def tensorflow_device(name: str, available: list[str]) -> str | None:
    """The logical device of `available` that `name` means, in any spelling TensorFlow reads; None for none."""
    import tensorflow as tf

    try:
        wanted = tf.DeviceSpec.from_string(name)
    except (ValueError, TypeError):
        return None
    elsewhere = wanted.job not in (None, "localhost") or wanted.replica not in (None, 0) or wanted.task not in (None, 0)
    if wanted.device_type is None or wanted.device_index is None or elsewhere:
        return None  # "GPU" alone, or another host's device
    for device in available:
        spec = tf.DeviceSpec.from_string(device)
        if (spec.device_type, spec.device_index) == (wanted.device_type.upper(), wanted.device_index):
            return device
    return None


def jax_device(name: str, available: list[str]) -> str | None:
    return name.lower() if name.lower() in available else None


def torch_devices() -> tuple[list[str], list[str]]:
    """(this machine's devices as torch names them: "cuda:0", ... then "cpu"; those --distribute uses by default:
    every accelerator, else the CPU). With KERAS_TORCH_DEVICE set, Keras trains on that one: the default is it."""
    import torch
    from keras.src.backend.torch.core import get_device

    accelerators = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        accelerators.append("mps")
    keras_device = str(get_device())
    if ":" not in keras_device and keras_device != "cpu":
        keras_device += ":0" if keras_device == "cuda" else ""
    available = [*accelerators, "cpu"]
    if keras_device not in available:
        available.insert(0, keras_device)
    chosen = [keras_device] if os.environ.get("KERAS_TORCH_DEVICE") else (accelerators or ["cpu"])
    return available, chosen


def torch_device(name: str, available: list[str]) -> str | None:
    """The device of `available` that `name` means: "cuda:1", "CUDA:1", "gpu:1" alike; "cuda" is "cuda:0", "cpu:0" "cpu"."""
    wanted = name.strip().lower().replace("gpu", "cuda")
    wanted = {"cuda": "cuda:0", "cpu:0": "cpu"}.get(wanted, wanted)
    return wanted if wanted in available else None


def torch_refusal(devices: list[str]) -> str:
    return (
        f"--distribute: the torch backend of Keras trains on one device, and this run would split each batch over "
        f"{len(devices)} ({', '.join(devices)}): train on one (KERAS_TORCH_DEVICE={devices[0]}, without --distribute), "
        "or across them with KERAS_BACKEND=jax or tensorflow"
    )


def activate(placement: Placement) -> tuple[contextlib.AbstractContextManager, tuple[int, int]]:
    """(the scope to build and compile the model in, this process's (index, count) shard of the training stream)."""
    if not placement.distributed:
        return contextlib.nullcontext(), (0, 1)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(list(placement.devices)).scope(), (0, 1)
    import jax

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=list(placement.devices)))
    return contextlib.nullcontext(), (jax.process_index(), jax.process_count())


def data_parallel(
    devices: list[str] | None = None,
) -> tuple[contextlib.AbstractContextManager, list[str], tuple[int, int]]:
    """(the scope, the devices, the shard) of data-parallel training over `devices` (None: every one found)."""
    placement = plan_devices(devices, warn=lambda _: None)
    scope, shard = activate(placement)
    return scope, list(placement.devices), shard
