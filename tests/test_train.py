"""train and evaluate on small stores the tests build themselves, with the real TensorFlow on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import BIN, REPO, restore_ctrl_c, run_cli, write_image_folder

from augzarr.builder.build import BuildOptions, build_store
from augzarr.errors import UserError
from augzarr.store_format import open_store

CLASSES = {"cat": 12, "dog": 12, "emu": 12}
FAST = ["--epochs", "2", "--batch-size", "16"]


def make_store(root: Path, size: int = 16, copies: int = 2, test: bool = True, **options) -> Path:
    images = root / f"images-{size}"
    if not images.exists():
        write_image_folder(images / "train", CLASSES, size=size)
        if test:
            write_image_folder(images / "test", {name: 4 for name in CLASSES}, size=size, seed=1)
    out = root / f"store-{size}-{copies}-{'test' if test else 'notest'}.zarr"
    build_store(
        BuildOptions(source=str(images), out=out, copies=copies, chunk_size=8, val_fraction=0.25, workers=1, **options)
    )
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """3 classes; train 27 sources x 3 rows = 81 rows in 11 chunks; val 9; test 12; 16x16."""
    return make_store(tmp_path_factory.mktemp("train-store"))


@pytest.fixture(scope="module")
def finished_run(store, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    result = run_cli("train", "--store", str(store), *FAST, "--out", str(run_dir), check=True)
    return run_dir, result


# -- the stream ---------------------------------------------------------------------------------------


def test_stream_visits_every_row_once_per_epoch_in_a_new_seeded_order(store):
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    group = opened.group
    images = group["train/images"][:]
    stream = StoreStream(
        opened, "train", batch_size=10, shuffle=True, seed=3, buffer_chunks=3
    )  # batches straddle windows
    assert stream.batches_per_epoch == 9  # 81 rows
    orders = []
    for epoch in range(2):
        batches = [stream[epoch * stream.batches_per_epoch + i] for i in range(stream.batches_per_epoch)]
        x = np.concatenate([b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        assert x.dtype == np.uint8 and x.shape == images.shape
        assert [len(b[0]) for b in batches] == [10] * 8 + [1]
        # each stored row exactly once, with its own label (a copy may equal its original: match each once)
        rows, used = [], set()
        for image in x:
            rows.append(
                next(int(r) for r in np.flatnonzero((images == image).all(axis=(1, 2, 3))) if int(r) not in used)
            )
            used.add(rows[-1])
        assert sorted(rows) == list(range(len(images)))
        assert np.array_equal(y, group["train/labels"][:][rows])
        assert len(stream._windows) <= 2  # memory: the current window and the one being read ahead
        orders.append(rows)
    assert orders[0] != orders[1]
    stream.close()

    again = StoreStream(opened, "train", batch_size=10, shuffle=True, seed=3, buffer_chunks=3, start_epoch=1)
    assert all(
        np.array_equal(again[i][0], stream[stream.batches_per_epoch + i][0]) for i in range(stream.batches_per_epoch)
    )
    other_seed = StoreStream(opened, "train", batch_size=10, shuffle=True, seed=4, buffer_chunks=3)
    assert not np.array_equal(other_seed[0][0], stream[0][0])
    again.close(), other_seed.close()


def test_unshuffled_stream_is_one_pass_in_stored_order(store):
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    group = opened.group
    stream = StoreStream(opened, "val", batch_size=4, shuffle=False)
    assert stream.num_batches == 3
    x = np.concatenate([stream[i][0] for i in range(stream.num_batches)])
    assert np.array_equal(x, group["val/images"][:])
    with pytest.raises(IndexError):
        stream[stream.num_batches]
    stream.close()


def test_stream_feeds_fit_on_tensorflow(store):
    import keras

    from augzarr.trainer.models import build_model
    from augzarr.trainer.stream import StoreStream

    assert keras.backend.backend() == "tensorflow"
    stream = StoreStream(open_store(store), "train", batch_size=16, shuffle=True)
    model = build_model("shallow", (16, 16, 3), 3)
    assert stream[0][0].dtype == np.uint8 and type(model.layers[0]).__name__ == "Rescaling"  # uint8 until the model
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(stream, steps_per_epoch=stream.batches_per_epoch, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    stream.close()


JAX_FIT = """
import sys, numpy as np, keras
from augzarr.store_format import open_store
from augzarr.trainer.stream import StoreStream
from augzarr.trainer.models import build_model
assert keras.backend.backend() == "jax", keras.backend.backend()
group = open_store(sys.argv[1])
stream = StoreStream(group, "train", batch_size=16, shuffle=True)
model = build_model("shallow", (16, 16, 3), 3)
model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(stream, steps_per_epoch=stream.batches_per_epoch, epochs=1, shuffle=False, verbose=0,
                    validation_data=StoreStream(group, "val", batch_size=16, shuffle=False))
print("loss", history.history["loss"][0], "val_accuracy", history.history["val_accuracy"][0])
"""


def test_stream_feeds_fit_on_jax(store):
    pytest.importorskip("jax")
    result = subprocess.run(
        [sys.executable, "-c", JAX_FIT, str(store)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val_accuracy" in result.stdout


# -- models -------------------------------------------------------------------------------------------


def test_models_follow_the_notebook_and_size_from_the_store():
    from keras import layers

    from augzarr.trainer.models import build_model

    deep = build_model("deep", (32, 32, 3), 10)
    convs = [layer for layer in deep.layers if isinstance(layer, layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3) and c.strides == (1, 1) for c in convs)  # the Conv2D(64, 3, 3) bug fixed
    assert [type(layer).__name__ for layer in deep.layers][:1] == ["Rescaling"]
    assert [layer.rate for layer in deep.layers if isinstance(layer, layers.Dropout)] == [0.25, 0.25, 0.5]
    assert deep.output_shape == (None, 10)
    shallow = build_model("shallow", (24, 20, 3), 7)
    assert len([layer for layer in shallow.layers if isinstance(layer, layers.Conv2D)]) == 1
    assert shallow.input_shape == (None, 24, 20, 3) and shallow.output_shape == (None, 7)


# -- train end to end ---------------------------------------------------------------------------------


def test_train_writes_a_complete_run_folder(finished_run, store):
    run_dir, result = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"Test score: {metrics['loss']:.4f}" in result.stdout
    assert f"Test accuracy: {metrics['accuracy']:.4f}" in result.stdout
    assert metrics["evaluated_on"] == "test" and metrics["count"] == 12
    assert np.array(metrics["confusion_matrix"]).sum() == 12
    assert set(metrics["per_class"]) == set(CLASSES)
    for name in (
        "model.keras",
        "model.json",
        "model.weights.h5",
        "history.csv",
        "curves.png",
        "confusion.png",
        "model_card.md",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["options"]["epochs"] == 2
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy") and len(history) == 3
    card = (run_dir / "model_card.md").read_text()
    attrs = zarr.open_group(str(store), mode="r").attrs
    assert (
        attrs["source"]["content_hash"] in card
        and f"`{attrs['policy']['name']}`" in card
        and "gap" in card
        and "Known limits" in card
    )

    import keras

    model = keras.models.load_model(run_dir / "model.keras")
    architecture = keras.models.model_from_json((run_dir / "model.json").read_text())
    architecture.load_weights(run_dir / "model.weights.h5")
    x = zarr.open_group(str(store), mode="r")["test/images"][:]
    assert np.allclose(model.predict(x, verbose=0), architecture.predict(x, verbose=0), atol=1e-6)


def test_evaluate_on_the_store_matches_train_and_writes_json(finished_run, store, tmp_path):
    run_dir, _ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = run_cli(
        "evaluate", "--model", str(run_dir), "--store", str(store), "--json", str(tmp_path / "eval.json"), check=True
    )
    assert f"Test accuracy: {metrics['accuracy']:.4f}" in result.stdout
    for name in CLASSES:
        assert name in result.stdout
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["confusion_matrix"] == metrics["confusion_matrix"]
    assert written["loss"] == pytest.approx(metrics["loss"], abs=1e-5)


def test_evaluate_on_an_image_folder_resizes_to_the_model(finished_run, tmp_path):
    run_dir, _ = finished_run
    folder = write_image_folder(
        tmp_path / "photos", {"dog": 3, "emu": 2}, size=24
    )  # a subset of the classes, bigger images
    result = run_cli(
        "evaluate", "--model", str(run_dir), "--source", str(folder), "--json", str(tmp_path / "e.json"), check=True
    )
    written = json.loads((tmp_path / "e.json").read_text())
    assert written["count"] == 5
    assert written["per_class"]["dog"]["count"] == 3 and written["per_class"]["emu"]["count"] == 2
    assert written["per_class"]["cat"]["accuracy"] is None
    assert "Test accuracy" in result.stdout

    unknown = write_image_folder(tmp_path / "zoo", {"yak": 2}, size=16)
    refused = run_cli("evaluate", "--model", str(run_dir), "--source", str(unknown))
    assert refused.returncode == 1 and "yak" in refused.stderr and "Traceback" not in refused.stderr


def test_same_seed_and_store_give_the_same_run(store, tmp_path):
    import keras

    from augzarr.trainer.training import train_run

    weights = []
    for name in ("one", "two"):
        train_run(
            {"store": str(store), "epochs": 1, "batch_size": 16, "model": "shallow", "seed": 5},
            out=tmp_path / name,
            verbose=0,
            say=lambda _: None,
        )
        weights.append(keras.models.load_model(tmp_path / name / "model.keras").get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
    train_run(
        {"store": str(store), "epochs": 1, "batch_size": 16, "model": "shallow", "seed": 6},
        out=tmp_path / "three",
        verbose=0,
        say=lambda _: None,
    )
    other = keras.models.load_model(tmp_path / "three" / "model.keras").get_weights()
    assert not np.array_equal(other[0], weights[0][0])


def test_store_without_test_split_is_evaluated_on_val_and_says_so(tmp_path):
    from augzarr.trainer.training import train_run

    store = make_store(tmp_path, test=False, copies=1)
    said = []  # what train prints, from its library call in this process (Keras loads once)
    train_run(
        {"store": str(store), "epochs": 1, "batch_size": 16, "model": "shallow"},
        out=tmp_path / "r",
        verbose=0,
        say=said.append,
    )
    assert "no test split" in "\n".join(said)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["evaluated_on"] == "val"
    assert "validation split" in (tmp_path / "r" / "model_card.md").read_text()


# -- resume -------------------------------------------------------------------------------------------


def wait_for_epochs(run_dir: Path, at_least: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        progress = run_dir / "state" / "progress.json"
        if progress.exists() and json.loads(progress.read_text())["epochs_done"] >= at_least:
            return
        assert process.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no epoch finished in time")


@pytest.mark.parametrize("how", ["kill -9", "ctrl-c"])
def test_interrupted_run_resumes_to_the_requested_epochs(how, store, tmp_path):
    run_dir = tmp_path / "run"
    epochs = 5
    process = subprocess.Popen(
        [
            str(BIN / "train"),
            "--store",
            str(store),
            "--epochs",
            str(epochs),
            "--batch-size",
            "8",
            "--model",
            "shallow",
            "--tensorboard",
            "--out",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=restore_ctrl_c,
    )
    wait_for_epochs(run_dir, 1, process)
    if how == "kill -9":
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    else:
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130
        assert "run the same command again (or train --resume" in stderr and "Traceback" not in stderr
    progress = json.loads((run_dir / "state" / "progress.json").read_text())
    assert 1 <= progress["epochs_done"] < epochs
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    assert not (run_dir / "metrics.json").exists()

    resumed = run_cli("train", "--resume", "--out", str(run_dir), check=True)
    assert f"after epoch {progress['epochs_done']} of {epochs}" in resumed.stdout
    rows = (run_dir / "history.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, epochs + 1))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert (run_dir / "model.keras").exists() and (run_dir / "metrics.json").exists()
    assert len(list((run_dir / "state").glob("epoch-*.keras"))) == 1
    # --tensorboard logs on from the next epoch: every epoch once; the one killed between its log and its checkpoint
    # may be logged twice, never missing
    from test_tensorboard import read_logs

    logs = read_logs(run_dir / "tensorboard" / "train")
    for tag in ("epoch_loss", "training_images"):
        steps = [step for step, _ in logs[tag][1]]
        assert sorted(set(steps)) == list(range(epochs)) and len(steps) <= epochs + 1, (tag, steps)


def test_resume_refuses_other_options_and_finished_runs(finished_run, store, tmp_path):
    run_dir, _ = finished_run
    done = run_cli("train", "--resume", "--out", str(run_dir))
    assert done.returncode == 1 and "already complete" in done.stderr

    from augzarr.trainer.training import train_run

    progress_dir = tmp_path / "partial"
    train_run(
        {"store": str(store), "epochs": 1, "batch_size": 16, "model": "shallow"},
        out=progress_dir,
        verbose=0,
        say=lambda _: None,
    )
    run = json.loads((progress_dir / "run.json").read_text())
    (progress_dir / "run.json").write_text(json.dumps({**run, "status": "running"}))  # as if stopped before its reports
    with pytest.raises(UserError, match="--batch-size 16 -> 32"):
        train_run({"batch_size": 32}, out=progress_dir, resume=True)
    with pytest.raises(UserError, match="already holds a run: continue it with --resume"):
        train_run({"store": str(store)}, out=progress_dir)
    said = []
    result = train_run(  # --decode-threads changes no batch: a resume may give another
        {"store": str(store), "epochs": 1, "batch_size": 16, "model": "shallow", "decode_threads": 1},
        out=progress_dir,
        verbose=0,
        say=said.append,
    )
    assert result.resumed_from == 1 and any("resuming" in line for line in said)  # the same command again continues it
    assert json.loads((progress_dir / "run.json").read_text())["status"] == "complete"


def last_checkpoint(run_dir: Path) -> dict:
    progress = run_dir / "state" / "progress.json"
    return json.loads(progress.read_text()) if progress.exists() else {}


def killed_mid_epoch(run_dir: Path, process: subprocess.Popen, timeout: float = 300) -> dict:
    """kill -9 the run's process group once its last checkpoint lies inside an epoch after the first; the process is
    frozen (SIGSTOP) before the checkpoint is read, so what is returned is the last checkpoint it wrote."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "training ended before a checkpoint inside its second or third epoch"
        if last_checkpoint(run_dir).get("batches_done") and last_checkpoint(run_dir).get("epochs_done"):
            os.killpg(process.pid, signal.SIGSTOP)
            progress = last_checkpoint(run_dir)
            if progress.get("batches_done"):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return progress
            os.killpg(process.pid, signal.SIGCONT)  # an epoch had just ended: wait for the next checkpoint inside one
        time.sleep(0.02)
    raise AssertionError("no checkpoint inside an epoch in time")


def stored_weights(run_dir: Path) -> dict[str, np.ndarray]:
    import h5py

    weights = {}
    with h5py.File(run_dir / "model.weights.h5", "r") as file:
        file.visititems(lambda name, item: weights.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return weights


def backend_env(backend: str) -> dict[str, str]:
    """The environment that selects backend: none for this process's own, so run_cli can fork its commands from the
    test's server (tests/cli_server.py) instead of starting them afresh; run.json's "backend" is checked either way."""
    return {} if os.environ.get("KERAS_BACKEND", "tensorflow") == backend else {"KERAS_BACKEND": backend}


@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_a_run_killed_inside_an_epoch_resumes_to_the_uninterrupted_weights(backend, store, tmp_path):
    """Issue #25 point 3: train --checkpoint-every STEPS saves the model, the optimizer, the stream's position inside
    the epoch and the random state (dropout) every STEPS steps. Killed with kill -9 inside its second or third epoch
    and run again, the run trains exactly the batches the uninterrupted run trained next and ends at its weights, bit
    for bit, on each backend (JAX keeps its state outside the model's variables until synced); the interrupted epoch's
    history row is the whole epoch's. On the torch backend --distribute finds one
    device (the CPU), trains on it and records it (issue #25 point 2)."""
    if backend != "tensorflow":
        pytest.importorskip(backend)
    env = backend_env(backend)
    args = [
        *("--store", str(store), "--epochs", "3", "--batch-size", "8", "--model", "shallow"),
        "--checkpoint-every",
        "4",
    ]
    if backend == "torch":
        args.append("--distribute")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_cli("train", *args, "--out", str(whole), env=env, check=True)
    process = subprocess.Popen(
        [str(BIN / "train"), *args, "--out", str(cut)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
        start_new_session=True,
    )
    position = killed_mid_epoch(cut, process)
    batches_per_epoch = 11  # 81 rows in batches of 8
    assert 1 <= position["epochs_done"] < 3 and 0 < position["batches_done"] < batches_per_epoch
    assert (position["epochs_done"] * batches_per_epoch + position["batches_done"]) % 4 == 0
    assert (cut / "state" / position["checkpoint"]).exists() and not (cut / "metrics.json").exists()

    if backend == "tensorflow":  # a checkpoint inside epoch N+1: --epochs N would end with part of it trained
        shorter = run_cli("train", "--resume", "--out", str(cut), "--epochs", str(position["epochs_done"]), env=env)
        assert shorter.returncode == 1 and shorter.stderr.strip().endswith(
            f"has already trained part of epoch {position['epochs_done'] + 1} (its last checkpoint is inside it); "
            f"give --epochs {position['epochs_done'] + 1} or more"
        )
    resumed = run_cli("train", *args, "--out", str(cut), env=env, check=True)  # the same command again continues it
    assert (
        f"resuming {cut} in epoch {position['epochs_done'] + 1} of 3, after batch {position['batches_done']} "
        f"of its {batches_per_epoch}" in resumed.stdout
    )
    a, b = stored_weights(whole), stored_weights(cut)
    assert a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)
    history = [(whole / "history.csv").read_text(), (cut / "history.csv").read_text()]
    rows = [[line.split(",") for line in text.splitlines()] for text in history]
    assert rows[0][0] == rows[1][0] and [r[0] for r in rows[1][1:]] == ["1", "2", "3"]
    header = rows[0][0]
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        i = header.index(column)
        np.testing.assert_allclose([float(r[i]) for r in rows[1][1:]], [float(r[i]) for r in rows[0][1:]], rtol=1e-5)
    run = json.loads((cut / "run.json").read_text())
    assert run["status"] == "complete" and run["backend"] == backend and run["options"]["checkpoint_every"] == 4
    if backend == "torch":
        assert run["devices"] == ["cpu"] and run["distributed"] is False
    assert [p.name for p in (cut / "state").glob("epoch-*.keras")] == ["epoch-0003.keras"]


# -- errors -------------------------------------------------------------------------------------------


def test_bad_stores_and_options_give_one_line(store, tmp_path):
    import shutil

    from augzarr.trainer.training import train_run

    def refused(given: dict, match: str, out: Path | None = None) -> None:
        with pytest.raises(UserError, match=match):
            train_run(given, out=out or tmp_path / "never", verbose=0)
        assert not (tmp_path / "never").exists()  # nothing written for a refused run

    refused({"store": str(tmp_path / "missing.zarr")}, "does not exist")
    (tmp_path / "folder").mkdir()
    refused({"store": str(tmp_path / "folder")}, "not an augzarr store")
    for name, edit, match in [
        ("newer", {"format_version": 3}, "newer than this augzarr reads"),
        ("incomplete", {"complete": False}, "is incomplete"),
    ]:
        copy = tmp_path / f"{name}.zarr"
        shutil.copytree(store, copy)
        meta = json.loads((copy / "zarr.json").read_text())
        meta["attributes"].update(edit)
        (copy / "zarr.json").write_text(json.dumps(meta))
        refused({"store": str(copy)}, match)
    refused({"store": str(store), "epochs": 0}, r"--epochs must be in \[1, 100000\]")
    refused({"store": str(store), "optimizer": "adagrad"}, "--optimizer must be one of")
    (tmp_path / "afile").write_text("x")
    refused({"store": str(store)}, "is a file", out=tmp_path / "afile")

    cli = run_cli("train", "--store", str(store), "--epochs", "0", "--out", str(tmp_path / "never"))
    assert cli.returncode == 2 and cli.stderr.strip() == "train: error: --epochs must be in [1, 100000]"
    unwritable = run_cli("train", "--store", str(store), "--epochs", "1", "--out", "/proc/augzarr-run")
    assert (
        unwritable.returncode == 1
        and "/proc/augzarr-run" in unwritable.stderr
        and len(unwritable.stderr.strip().splitlines()) == 1
    )


def test_model_and_store_that_disagree_are_refused(finished_run, tmp_path):
    run_dir, _ = finished_run
    bigger = make_store(tmp_path, size=32, copies=1)
    result = run_cli("evaluate", "--model", str(run_dir), "--store", str(bigger))
    assert (
        result.returncode == 1
        and "takes 16x16x3 images into 3 classes, the store holds 32x32x3 images" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_default_run_folders_do_not_collide(tmp_path, monkeypatch):
    from augzarr.trainer import training

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training.time, "strftime", lambda *_: "20261127-120000")  # runs started in the same second
    first = training.default_run_dir()
    first.mkdir(parents=True)
    second = training.default_run_dir()
    second.mkdir()
    assert (first.name, second.name, training.default_run_dir().name) == (
        "20261127-120000",
        "20261127-120000-2",
        "20261127-120000-3",
    )


def test_cosine_schedule_decays_the_rate_to_zero_over_the_run(store, tmp_path):
    import keras

    from augzarr.trainer.training import train_run

    train_run(
        {"store": str(store), "epochs": 2, "batch_size": 16, "model": "shallow", "lr_schedule": "cosine"},
        out=tmp_path / "run",
        verbose=0,
        say=lambda _: None,
    )
    optimizer = keras.models.load_model(tmp_path / "run" / "model.keras").optimizer
    assert int(optimizer.iterations.numpy()) == 2 * 6  # 81 rows in batches of 16
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.0, abs=1e-9)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["learning_rate"] == pytest.approx(1e-3)
