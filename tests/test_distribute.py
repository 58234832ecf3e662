"""Issue #13 point 5: train --distribute, data-parallel with Keras' own mechanisms, on two logical CPU
devices (each backend fixes its devices at start-up, so each case runs in its own process), and the
stream's per-process shards for several hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_train import backend_env

from augzarr.store_format import open_store


@pytest.fixture
def store(small_store):
    return small_store


@pytest.mark.parametrize("count", [2, 3])
def test_simulated_processes_together_read_every_row_exactly_once_an_epoch(store, count):
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    everything = sorted(bytes(row) for row in opened.images("train")[:])
    for epoch in (0, 1):
        seen, per_process = [], []
        for index in range(count):
            stream = StoreStream(
                opened,
                "train",
                batch_size=5,
                shuffle=True,
                seed=4,
                buffer_chunks=2,
                shard=(index, count),
                start_epoch=epoch,
            )
            try:
                rows = np.concatenate([stream[i][0] for i in range(stream.batches_per_epoch)])
            finally:
                stream.close()
            per_process.append(len(rows))
            seen += [bytes(row) for row in rows]
        assert sorted(seen) == everything, epoch  # all rows, none twice
        assert abs(max(per_process) - min(per_process)) <= 8  # shares differ by at most a chunk


SAME_MATH = """
import os, sys, json
import numpy as np
backend = sys.argv[1]
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from augzarr.store_format import open_store
from augzarr.trainer.distribute import data_parallel
from augzarr.trainer.stream import StoreStream
from augzarr.trainer.training import seed_everything
import contextlib
runs = {}
for devices in (1, 2):  # one device first: data_parallel sets JAX's distribution for the rest of the process
    scope, names, _ = data_parallel() if devices > 1 else (contextlib.nullcontext(), [], None)
    seed_everything(0)
    with scope:  # no dropout: the one randomness the replicas would draw apart
        model = keras.Sequential([keras.Input((16, 16, 3), dtype="uint8"), keras.layers.Rescaling(1 / 255),
                                  keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    stream = StoreStream(open_store(sys.argv[2]), "train", batch_size=12, shuffle=True, seed=1)
    model.fit(stream, steps_per_epoch=6, epochs=1, verbose=0)
    stream.close()
    runs[devices] = {"devices": names, "weights": [w.tolist() for w in model.get_weights()]}
print(json.dumps(runs))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_train_to_the_one_device_weights(store, backend):
    """The same global batches split over two devices, the gradients all-reduced: the same maths as one
    device up to the order of float32 additions. After 6 SGD steps the weights agree to 1e-5 (a float32
    sum of 12 terms in another order moves by ~1e-7 relative; the steps carry that, not more). Both runs in one
    process that has two devices (each backend fixes its devices at start-up): the one-device run uses the first."""
    env = {**os.environ, "KERAS_BACKEND": backend, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run(
        [sys.executable, "-c", SAME_MATH, backend, str(store)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    assert runs["1"]["devices"] == [] and len(runs["2"]["devices"]) == 2
    for one, two in zip(runs["1"]["weights"], runs["2"]["weights"]):
        np.testing.assert_allclose(np.array(two), np.array(one), rtol=1e-5, atol=1e-6)


def test_train_distribute_records_its_devices(store, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "train"),
            "--store",
            str(store),
            "--epochs",
            "1",
            "--model",
            "shallow",
            "--batch-size",
            "16",
            "--distribute",
            "--quiet",
            "--out",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["device_count"] == 2 and run["devices"] == ["cpu:0", "cpu:1"] and run["options"]["distribute"] is True
    assert "- devices: data-parallel over 2 (cpu:0, cpu:1), global batch 16" in (run_dir / "model_card.md").read_text()


TWO_TENSORFLOW_CPUS = """
import json, sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from augzarr.errors import OptionError
from augzarr.trainer.training import train_run
store, out = sys.argv[1], Path(sys.argv[2])
given = {"store": store, "epochs": 1, "model": "shallow", "batch_size": 16, "distribute": True}
refusals = []  # each before a run folder is made
for devices in ("gpu:7,cpu:0", "cpu:1"):
    try:
        train_run({**given, "devices": devices}, out=out, verbose=0, say=lambda _: None)
    except OptionError as exc:
        refusals.append(str(exc))
    assert not out.exists(), devices
train_run({**given, "devices": " CPU:1, /device:cpu:0,cpu:1"}, out=out, verbose=0, say=lambda _: None)
print(json.dumps(refusals))
"""


def test_tensorflow_checks_the_devices_it_is_given_and_records_those_it_used(store, tmp_path):
    """Issue #21 point 4: TensorFlow's MirroredStrategy took --devices gpu:7 on a machine without it, trained on the
    CPU and recorded gpu:7. Now every name is matched to this machine's devices (in any spelling TensorFlow reads)
    before a run folder is made, and run.json and the model card name the devices the batches were split over."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", TWO_TENSORFLOW_CPUS, str(store), str(run_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        "--devices: gpu:7 not among this machine's (/device:CPU:0, /device:CPU:1)",
        "--devices names one device (cpu:1), and --distribute splits each batch over two or more: name two or more of this "
        "machine's (/device:CPU:0, /device:CPU:1), or train without --distribute",
    ]
    run = json.loads((run_dir / "run.json").read_text())
    assert (
        run["devices"] == ["/device:CPU:1", "/device:CPU:0"] and run["device_count"] == 2 and run["distributed"] is True
    )
    assert (
        run["options"]["devices"] == "CPU:1,/device:cpu:0,cpu:1"
    )  # the names as given, without blanks; run["devices"]: what they named
    assert (
        "- devices: data-parallel over 2 (/device:CPU:1, /device:CPU:0), global batch 16"
        in (run_dir / "model_card.md").read_text()
    )


def test_distribute_on_one_device_warns_once_and_trains_without_distribution(store, tmp_path):
    """Issue #21 point 13: a one-device strategy trained 7-35x slower than the plain path, with no word. Now
    --distribute that finds one device warns in one line (also under --quiet) and trains on the plain path;
    run.json says one device and that distribution was not used."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "train",
        "--store",
        str(store),
        "--epochs",
        "1",
        "--model",
        "shallow",
        "--batch-size",
        "16",
        "--distribute",
        "--quiet",
        "--out",
        str(run_dir),
        env=backend_env("tensorflow"),  # none when it is this process's own: forked from the test's server
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        "warning: --distribute: this machine has one device (/device:CPU:0); training on it without a "
        "distribution strategy, which would only slow it down"
    )
    run = json.loads((run_dir / "run.json").read_text())
    assert run["device_count"] == 1 and run["distributed"] is False and run["devices"] == ["/device:CPU:0"]
    assert run["options"]["distribute"] is True  # what was asked, beside what ran
    assert (
        "- devices: one (/device:CPU:0); --distribute found no second device, so the run trained without distribution"
        in (run_dir / "model_card.md").read_text()
    )


TORCH_DEVICES = """
import json
from augzarr.errors import OptionError
from augzarr.trainer.distribute import plan_devices, torch_devices
said, refusals = [], []
for requested in (None, ["cuda:3"], ["CPU:0", "cpu"], ["cpu", "cuda:0"]):
    try:
        placement = plan_devices(requested, said.append)
    except OptionError as exc:
        refusals.append(str(exc))
print(json.dumps({"placement": [list(placement.devices), placement.distributed], "said": said,
                  "refusals": refusals, "devices": torch_devices()}))
"""


def test_torch_backend_checks_devices_and_trains_on_the_one_keras_uses():
    """Issue #25 point 2: --distribute on the torch backend. Keras' fit trains on one device there, so a machine with
    one (here the CPU) trains on it and says so, as the other backends do; names it lacks are refused in one line
    listing its own; naming one device twice (in two spellings) is refused as naming one device."""
    pytest.importorskip("torch")
    result = subprocess.run(
        [sys.executable, "-c", TORCH_DEVICES],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["devices"] == [["cpu"], ["cpu"]]
    assert found["placement"] == [["cpu"], False]
    assert found["said"] == [
        "--distribute: this machine has one device (cpu); training on it without a distribution strategy, which "
        "would only slow it down"
    ]
    assert found["refusals"] == [
        "--devices: cuda:3 not among this machine's (cpu)",
        "--devices names one device (CPU:0, cpu), and --distribute splits each batch over two or more: name two or "
        "more of this machine's (cpu), or train without --distribute",
        "--devices: cuda:0 not among this machine's (cpu)",
    ]
